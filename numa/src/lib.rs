//! Host topology, guest memory backing and vCPU placement for edgevisor.
//!
//! - [`Topology`]: NUMA nodes, CPUs, memory, distances and hugepage pools, read from sysfs
//!   below a configurable root (`edgevisor node` prints its `Display`).
//! - [`MemorySpec`] (`--mem 512M,hugepages=2M,node=0,prefault=on,shared=on`) and
//!   [`GuestMemory::map`]: guest RAM from anonymous memory, MAP_HUGETLB or a memfd, bound to a
//!   node with mbind and optionally prefaulted; checked against the topology before anything
//!   is mapped, and unmapped again if anything fails midway.
//! - [`CpuSpec`] (`--cpus 2,pin=4-5`), [`place_vcpus`] and [`pin_current_thread`]: per-vCPU
//!   host CPU sets and thread pinning.
//!
//! A typical VMM start-up:
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use numa::{CpuSpec, GuestMemory, MemorySpec, Topology};
//! use vm_memory::GuestAddress;
//!
//! let mem: MemorySpec = "512M,hugepages=2M,node=0,prefault=on".parse()?;
//! let cpus: CpuSpec = "2,pin=0-1".parse()?;
//! let topology = Topology::from_host()?;
//! let ranges = [(GuestAddress(0), mem.size_bytes() as usize)];
//! // Check everything before making anything.
//! mem.options().validate(&topology, &ranges)?;
//! let placement = numa::place_vcpus(&topology, &cpus, mem.node)?;
//! let guest_memory = GuestMemory::map(&mem.options(), &topology, &ranges)?;
//! // In vCPU thread n: numa::pin_current_thread(&placement[n])?;
//! # let _ = (placement, guest_memory);
//! # Ok(())
//! # }
//! ```

mod cpuset;
mod memory;
mod placement;
mod spec;
mod topology;

pub use cpuset::{parse_cpu_list_ordered, CpuListError, CpuSet, MAX_CPU};
pub use memory::{host_page_size, GuestMemory, GuestMemoryBacking, MemoryError, MemoryOptions};
pub use placement::{
    current_thread_affinity, default_cpus, pin_current_thread, place_vcpus, PinError,
    PlacementError,
};
pub use spec::{CpuSpec, HugePages, MemorySpec, SpecError, MAX_VCPUS};
pub use topology::{page_size_label, HugePagePool, Node, NodeDistance, Topology, TopologyError};
