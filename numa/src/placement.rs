//! Where vCPU threads run: per-vCPU host CPU sets, and pinning the calling thread.

use std::io;

use crate::cpuset::CpuSet;
use crate::spec::{CpuSpec, SpecError};
use crate::topology::Topology;

/// Errors from placing vCPUs on host CPUs. All are found before any thread is pinned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The vCPU count or `pin=` list is wrong in itself (zero vCPUs, count mismatch, a CPU
    /// listed twice).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A `pin=` CPU is not online on this host.
    #[error("--cpus pin= puts vCPU {vcpu} on host CPU {cpu}, which is not online (online: {online}): pick online CPUs")]
    CpuNotOnline {
        /// The vCPU index.
        vcpu: usize,
        /// The host CPU.
        cpu: u32,
        /// The online CPUs as a list.
        online: String,
    },
    /// The memory's node does not exist.
    #[error("NUMA node {node} does not exist on this host (nodes: {available}): pick one of those, see `edgevisor node`")]
    NoSuchNode {
        /// The node asked for.
        node: u32,
        /// The host's nodes.
        available: String,
    },
    /// No CPU is online (a broken sysfs tree).
    #[error("no host CPU is online according to /sys/devices/system/cpu/online: check that sysfs is mounted")]
    NoOnlineCpus,
}

/// Errors from pinning a thread.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The set is empty.
    #[error("cannot pin a thread to an empty set of host CPUs: give at least one CPU")]
    EmptySet,
    /// A CPU is beyond what `cpu_set_t` holds.
    #[error(
        "host CPU {cpu} is beyond the {max} CPUs a thread affinity mask can hold: pick a lower CPU"
    )]
    CpuTooLarge {
        /// The CPU.
        cpu: u32,
        /// `CPU_SETSIZE`.
        max: usize,
    },
    /// sched_setaffinity or sched_getaffinity failed.
    #[error("could not set or read the thread's CPU affinity ({cpus}): {source}; check that the CPUs are online and allowed by this process's cpuset")]
    Affinity {
        /// The CPUs asked for (empty when reading).
        cpus: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// Host CPUs for work placed near `memory_node` by default: the online CPUs of that node;
/// for a node without CPUs (memory only), the online CPUs of the nearest nodes that have some
/// (by sysfs distance, ties together); with no node, every online CPU.
pub fn default_cpus(
    topology: &Topology,
    memory_node: Option<u32>,
) -> Result<CpuSet, PlacementError> {
    if topology.online_cpus.is_empty() {
        return Err(PlacementError::NoOnlineCpus);
    }
    let Some(node_id) = memory_node else {
        return Ok(topology.online_cpus.clone());
    };
    let node = topology
        .node(node_id)
        .ok_or_else(|| PlacementError::NoSuchNode {
            node: node_id,
            available: topology
                .node_ids()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let own = node.cpus.intersection(&topology.online_cpus);
    if !own.is_empty() {
        return Ok(own);
    }
    // Memory-only node: the closest nodes with online CPUs.
    let candidates: Vec<(u32, CpuSet)> = topology
        .nodes
        .iter()
        .filter(|other| other.id != node_id)
        .map(|other| {
            let distance = node.distance_to(other.id).unwrap_or(u32::MAX);
            (distance, other.cpus.intersection(&topology.online_cpus))
        })
        .filter(|(_, cpus)| !cpus.is_empty())
        .collect();
    let nearest = candidates.iter().map(|(d, _)| *d).min();
    match nearest {
        Some(nearest) => Ok(candidates
            .iter()
            .filter(|(d, _)| *d == nearest)
            .fold(CpuSet::new(), |acc, (_, cpus)| acc.union(cpus))),
        None => Ok(topology.online_cpus.clone()),
    }
}

/// The host CPUs each vCPU thread may run on, in vCPU order.
///
/// The spec is checked first ([`CpuSpec::validate`]). With `pin`, vCPU n gets exactly the
/// n-th listed CPU, which must be online. Without it, every vCPU gets [`default_cpus`] for the memory's node (so the scheduler
/// keeps vCPUs next to their memory without tying each to one CPU).
pub fn place_vcpus(
    topology: &Topology,
    cpus: &CpuSpec,
    memory_node: Option<u32>,
) -> Result<Vec<CpuSet>, PlacementError> {
    cpus.validate()?;
    match &cpus.pin {
        Some(pin) => pin
            .iter()
            .enumerate()
            .map(|(vcpu, &cpu)| {
                if topology.online_cpus.contains(cpu) {
                    Ok(std::iter::once(cpu).collect())
                } else {
                    Err(PlacementError::CpuNotOnline {
                        vcpu,
                        cpu,
                        online: topology.online_cpus.to_string(),
                    })
                }
            })
            .collect(),
        None => {
            let set = default_cpus(topology, memory_node)?;
            Ok(vec![set; cpus.count as usize])
        }
    }
}

/// Restricts the calling thread to `cpus` (sched_setaffinity on thread id 0, i.e. itself).
pub fn pin_current_thread(cpus: &CpuSet) -> Result<(), PinError> {
    if cpus.is_empty() {
        return Err(PinError::EmptySet);
    }
    // SAFETY: cpu_set_t is a plain bitmask; all-zero is the valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in cpus.iter() {
        if cpu as usize >= libc::CPU_SETSIZE as usize {
            return Err(PinError::CpuTooLarge {
                cpu,
                max: libc::CPU_SETSIZE as usize,
            });
        }
        // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so the bit lies inside `set`.
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 names the calling thread.
    let ret = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if ret != 0 {
        return Err(PinError::Affinity {
            cpus: cpus.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The host CPUs the calling thread may run on (sched_getaffinity).
pub fn current_thread_affinity() -> Result<CpuSet, PinError> {
    // SAFETY: cpu_set_t is a plain bitmask; all-zero is the valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed; pid 0 names the calling thread.
    let ret =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if ret != 0 {
        return Err(PinError::Affinity {
            cpus: String::new(),
            source: io::Error::last_os_error(),
        });
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` ranges below CPU_SETSIZE, so the bit read lies inside `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .map(|cpu| cpu as u32)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_set_is_refused() {
        assert!(matches!(
            pin_current_thread(&CpuSet::new()),
            Err(PinError::EmptySet)
        ));
    }

    #[test]
    fn cpu_beyond_mask_is_refused() {
        let set: CpuSet = std::iter::once(5000).collect();
        assert!(matches!(
            pin_current_thread(&set),
            Err(PinError::CpuTooLarge { cpu: 5000, .. })
        ));
    }
}
