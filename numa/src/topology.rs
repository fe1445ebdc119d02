//! Host NUMA topology read from sysfs: nodes, their CPUs and memory, distances, and hugepage
//! pools per node and page size.
//!
//! Everything is read below a configurable root so recorded sysfs trees (the tests' fixtures)
//! parse exactly like the live host. Files read, relative to the root:
//! - `sys/devices/system/node/nodeN/{cpulist,meminfo,distance}` and
//!   `.../nodeN/hugepages/hugepages-<size>kB/{nr,free}_hugepages`;
//! - `sys/devices/system/cpu/online`;
//! - `sys/kernel/mm/hugepages/hugepages-<size>kB/{nr,free,resv}_hugepages` (host-wide pools);
//! - `proc/meminfo`, only when `sys/devices/system/node` is absent (a kernel built without
//!   NUMA): the host is then described as one node 0 holding every online CPU.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::cpuset::{CpuListError, CpuSet};

const NODE_DIR: &str = "sys/devices/system/node";
const CPU_ONLINE: &str = "sys/devices/system/cpu/online";
const HUGEPAGES_DIR: &str = "sys/kernel/mm/hugepages";
const PROC_MEMINFO: &str = "proc/meminfo";

/// Errors from reading the host topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A file or directory could not be read.
    #[error("could not read {}: {source}; check that sysfs and procfs are mounted", path.display())]
    Read {
        /// What was read.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A file did not hold what the kernel writes there.
    #[error("{} is not in the kernel's format: {what}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// A CPU list file could not be parsed.
    #[error("{} holds a bad CPU list: {source}", path.display())]
    CpuList {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: CpuListError,
    },
}

/// One hugepage pool: pages of one size, host-wide or on one node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HugePagePool {
    /// Page size in KiB (2048 for 2 MiB pages, 1048576 for 1 GiB pages).
    pub page_size_kib: u64,
    /// Pages in the pool (`nr_hugepages`).
    pub total: u64,
    /// Pages not yet faulted in by anyone (`free_hugepages`).
    pub free: u64,
    /// Free pages already promised to existing mappings (`resv_hugepages`); only the host-wide
    /// pools report it, so it is `None` for per-node pools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u64>,
}

impl HugePagePool {
    /// Pages a new mapping can still get: free minus reserved.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved.unwrap_or(0))
    }
}

/// Distance from one node to another, as in the node's `distance` file (10 = local).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NodeDistance {
    /// The other node.
    pub node: u32,
    /// Relative access cost; 10 means local.
    pub distance: u32,
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    /// Node number (`nodeN`).
    pub id: u32,
    /// CPUs on this node (may be empty: a memory-only node).
    pub cpus: CpuSet,
    /// Memory on this node in KiB (0 for a memory-less node).
    pub memory_total_kib: u64,
    /// Free memory on this node in KiB.
    pub memory_free_kib: u64,
    /// Distances to every node, in node order.
    pub distances: Vec<NodeDistance>,
    /// Hugepage pools on this node, one per page size, smallest page first.
    pub hugepages: Vec<HugePagePool>,
}

impl Node {
    /// This node's pool of pages of `page_size_kib`, if the kernel has one.
    pub fn pool(&self, page_size_kib: u64) -> Option<&HugePagePool> {
        self.hugepages
            .iter()
            .find(|p| p.page_size_kib == page_size_kib)
    }

    /// Distance from this node to `other`, if known.
    pub fn distance_to(&self, other: u32) -> Option<u32> {
        self.distances
            .iter()
            .find(|d| d.node == other)
            .map(|d| d.distance)
    }
}

/// The host's NUMA topology.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Topology {
    /// True when read from `sys/devices/system/node`; false when that directory is absent and
    /// the host is described as a single node 0 from `proc/meminfo`.
    pub numa: bool,
    /// Online CPUs (`sys/devices/system/cpu/online`).
    pub online_cpus: CpuSet,
    /// Nodes in ascending id order.
    pub nodes: Vec<Node>,
    /// Host-wide hugepage pools, one per page size, smallest page first.
    pub hugepages: Vec<HugePagePool>,
}

impl Topology {
    /// Reads the live host's topology (root "/").
    pub fn from_host() -> Result<Self, TopologyError> {
        Self::from_root("/")
    }

    /// Reads the topology from a tree laid out like the host's `/sys` and `/proc` below `root`.
    pub fn from_root(root: impl AsRef<Path>) -> Result<Self, TopologyError> {
        let root = root.as_ref();
        let online_cpus = read_cpu_list(&root.join(CPU_ONLINE))?;
        let hugepages = read_pools(&root.join(HUGEPAGES_DIR), true)?;
        let node_dir = root.join(NODE_DIR);
        let numa = node_dir.is_dir();
        let nodes = if numa {
            read_nodes(&node_dir)?
        } else {
            vec![fallback_node(root, &online_cpus, &hugepages)?]
        };
        Ok(Topology {
            numa,
            online_cpus,
            nodes,
            hugepages,
        })
    }

    /// The node with this id, if the host has it.
    pub fn node(&self, id: u32) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The host-wide pool of pages of `page_size_kib`, if the kernel has one.
    pub fn pool(&self, page_size_kib: u64) -> Option<&HugePagePool> {
        self.hugepages
            .iter()
            .find(|p| p.page_size_kib == page_size_kib)
    }

    /// Node ids, ascending.
    pub fn node_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.nodes.iter().map(|n| n.id)
    }
}

fn read_nodes(node_dir: &Path) -> Result<Vec<Node>, TopologyError> {
    let mut ids = Vec::new();
    for name in list_dir(node_dir)? {
        if let Some(id) = name
            .strip_prefix("node")
            .and_then(|n| n.parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    let mut nodes = Vec::with_capacity(ids.len());
    for &id in &ids {
        let dir = node_dir.join(format!("node{id}"));
        let (memory_total_kib, memory_free_kib) = read_meminfo(&dir.join("meminfo"))?;
        nodes.push(Node {
            id,
            cpus: read_cpu_list(&dir.join("cpulist"))?,
            memory_total_kib,
            memory_free_kib,
            distances: read_distances(&dir.join("distance"), &ids)?,
            hugepages: read_pools(&dir.join("hugepages"), false)?,
        });
    }
    Ok(nodes)
}

fn fallback_node(
    root: &Path,
    online_cpus: &CpuSet,
    hugepages: &[HugePagePool],
) -> Result<Node, TopologyError> {
    let (memory_total_kib, memory_free_kib) = read_meminfo(&root.join(PROC_MEMINFO))?;
    Ok(Node {
        id: 0,
        cpus: online_cpus.clone(),
        memory_total_kib,
        memory_free_kib,
        distances: vec![NodeDistance {
            node: 0,
            distance: 10,
        }],
        hugepages: hugepages
            .iter()
            .map(|p| HugePagePool {
                reserved: None,
                ..p.clone()
            })
            .collect(),
    })
}

fn read_text(path: &Path) -> Result<String, TopologyError> {
    fs::read_to_string(path).map_err(|source| TopologyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn list_dir(dir: &Path) -> Result<Vec<String>, TopologyError> {
    let read_err = |source| TopologyError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

fn read_cpu_list(path: &Path) -> Result<CpuSet, TopologyError> {
    CpuSet::parse(&read_text(path)?).map_err(|source| TopologyError::CpuList {
        path: path.to_path_buf(),
        source,
    })
}

fn read_u64(path: &Path) -> Result<u64, TopologyError> {
    let text = read_text(path)?;
    text.trim().parse().map_err(|_| TopologyError::Format {
        path: path.to_path_buf(),
        what: format!("expected a number, found {:?}", text.trim()),
    })
}

/// Reads MemTotal and MemFree (KiB) from `/proc/meminfo` ("MemTotal: N kB") or a node's
/// meminfo ("Node 0 MemTotal: N kB").
fn read_meminfo(path: &Path) -> Result<(u64, u64), TopologyError> {
    let text = read_text(path)?;
    let field = |name: &str| -> Result<u64, TopologyError> {
        let missing = || TopologyError::Format {
            path: path.to_path_buf(),
            what: format!("no readable {name} line"),
        };
        let line = text
            .lines()
            .find(|line| {
                line.split_whitespace()
                    .any(|word| word.strip_suffix(':') == Some(name))
            })
            .ok_or_else(missing)?;
        let mut words = line.rsplit(':').next().unwrap_or("").split_whitespace();
        let value = words
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(missing)?;
        match words.next() {
            Some("kB") | None => Ok(value),
            Some(_) => Err(missing()),
        }
    };
    Ok((field("MemTotal")?, field("MemFree")?))
}

fn read_distances(path: &Path, ids: &[u32]) -> Result<Vec<NodeDistance>, TopologyError> {
    let text = read_text(path)?;
    let values: Vec<u32> = text
        .split_whitespace()
        .map(|v| v.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| TopologyError::Format {
            path: path.to_path_buf(),
            what: format!("expected distances as numbers, found {:?}", text.trim()),
        })?;
    if values.len() != ids.len() {
        return Err(TopologyError::Format {
            path: path.to_path_buf(),
            what: format!(
                "{} distances for {} nodes: the node directory and this file disagree",
                values.len(),
                ids.len()
            ),
        });
    }
    Ok(ids
        .iter()
        .zip(values)
        .map(|(&node, distance)| NodeDistance { node, distance })
        .collect())
}

/// Reads every `hugepages-<size>kB` directory below `dir`. A missing `dir` means no pools
/// (a memory-less node has no hugepages directory).
fn read_pools(dir: &Path, host_wide: bool) -> Result<Vec<HugePagePool>, TopologyError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut pools = Vec::new();
    for name in list_dir(dir)? {
        let Some(page_size_kib) = name
            .strip_prefix("hugepages-")
            .and_then(|s| s.strip_suffix("kB"))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let pool_dir = dir.join(&name);
        let reserved = if host_wide {
            Some(read_u64(&pool_dir.join("resv_hugepages"))?)
        } else {
            None
        };
        pools.push(HugePagePool {
            page_size_kib,
            total: read_u64(&pool_dir.join("nr_hugepages"))?,
            free: read_u64(&pool_dir.join("free_hugepages"))?,
            reserved,
        });
    }
    pools.sort_by_key(|p| p.page_size_kib);
    Ok(pools)
}

/// A page size written the way users write it: "2M", "1G", "64K".
pub fn page_size_label(page_size_kib: u64) -> String {
    if page_size_kib >= 1 << 20 && page_size_kib % (1 << 20) == 0 {
        format!("{}G", page_size_kib >> 20)
    } else if page_size_kib >= 1 << 10 && page_size_kib % (1 << 10) == 0 {
        format!("{}M", page_size_kib >> 10)
    } else {
        format!("{page_size_kib}K")
    }
}

fn write_pools(f: &mut fmt::Formatter<'_>, pools: &[HugePagePool]) -> fmt::Result {
    if pools.is_empty() {
        return f.write_str("none");
    }
    for (i, pool) in pools.iter().enumerate() {
        if i > 0 {
            f.write_str("; ")?;
        }
        write!(
            f,
            "{} {} total, {} free",
            page_size_label(pool.page_size_kib),
            pool.total,
            pool.free
        )?;
        if let Some(reserved) = pool.reserved {
            write!(f, ", {reserved} reserved")?;
        }
    }
    Ok(())
}

impl fmt::Display for Topology {
    /// The report `edgevisor node` prints: nodes with CPUs, memory and hugepage pools, the
    /// distance matrix, and host-wide pools.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = if self.numa {
            "from /sys/devices/system/node"
        } else {
            "no NUMA information in sysfs: one node from /proc/meminfo"
        };
        writeln!(f, "NUMA nodes: {} ({source})", self.nodes.len())?;
        writeln!(f, "online CPUs: {}", self.online_cpus)?;
        for node in &self.nodes {
            let cpus = if node.cpus.is_empty() {
                "none".to_string()
            } else {
                node.cpus.to_string()
            };
            writeln!(
                f,
                "node {}: CPUs {cpus}; memory {} MiB, {} MiB free",
                node.id,
                node.memory_total_kib / 1024,
                node.memory_free_kib / 1024
            )?;
            f.write_str("  hugepages: ")?;
            write_pools(f, &node.hugepages)?;
            writeln!(f)?;
        }
        f.write_str("node distances:\n      ")?;
        for node in &self.nodes {
            write!(f, "{:>5}", node.id)?;
        }
        writeln!(f)?;
        for node in &self.nodes {
            write!(f, "{:>5}:", node.id)?;
            for other in &self.nodes {
                match node.distance_to(other.id) {
                    Some(d) => write!(f, "{d:>5}")?,
                    None => write!(f, "{:>5}", "-")?,
                }
            }
            writeln!(f)?;
        }
        f.write_str("host hugepage pools: ")?;
        write_pools(f, &self.hugepages)?;
        writeln!(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_labels() {
        assert_eq!(page_size_label(2048), "2M");
        assert_eq!(page_size_label(1 << 20), "1G");
        assert_eq!(page_size_label(64), "64K");
        assert_eq!(page_size_label(1536), "1536K");
    }

    #[test]
    fn pool_available_subtracts_reserved() {
        let pool = HugePagePool {
            page_size_kib: 2048,
            total: 10,
            free: 6,
            reserved: Some(4),
        };
        assert_eq!(pool.available(), 2);
        let node_pool = HugePagePool {
            reserved: None,
            ..pool
        };
        assert_eq!(node_pool.available(), 6);
    }
}
