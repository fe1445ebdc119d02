//! edgevisor's whole-process benchmarks, run side by side with a peer VMM.
//!
//! `edgevisor-bench boot` boots the firmware probe with edgevisor and with QEMU's
//! microvm machine, interleaved, and reports time to first serial output, time to
//! exit and peak RSS, with the edgevisor/QEMU ratio of the medians. `edgevisor-bench io`
//! compares virtio-blk and virtio-net throughput of the same guest under both.

pub mod boot;
pub mod error;
pub mod io;
pub mod locate;
pub mod measure;
pub mod memory;
pub mod report;
pub mod stats;
pub mod systems;

pub use boot::{run_boot, BootOptions};
pub use error::BenchError;
pub use io::{render_io_table, run_io, IoOptions, IoReport};
pub use memory::{render_memory_table, run_memory, MemoryOptions, MemoryReport};
pub use report::{render_table, BootReport};
pub use systems::{Guest, System};
