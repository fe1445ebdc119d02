//! edgevisor's VMM: one KVM virtual machine per process, booting Unikraft and Linux images
//! through the Linux 64-bit entry, PVH or multiboot.
//!
//! Embedding:
//! ```no_run
//! use std::time::Instant;
//! let config = vmm::VmConfig::default(); // the built-in boot probe
//! let vm = vmm::Vm::new(&config, Box::new(std::io::stdout()), Instant::now()).unwrap();
//! let handle = vm.start().unwrap();
//! let report = handle.wait();
//! println!("{} (exit code {})", report.message, report.exit_code);
//! ```

pub mod api;
pub mod arch;
pub mod config;
pub mod device_config;
pub mod exit;
pub mod jail;
#[cfg(target_arch = "x86_64")]
pub mod passthrough;
pub mod seccomp;
pub mod state;
pub mod timings;
pub mod vcpu;
pub mod virtio;
#[cfg(target_arch = "x86_64")]
pub mod vm;
/// On aarch64 the VM builder lives with the rest of the arm64 code and has the same API.
#[cfg(target_arch = "aarch64")]
pub use arch::aarch64::vm;

pub use config::{KernelSource, VmConfig};
pub use exit::ExitReason;
pub use state::VmState;
pub use timings::TimingsReport;
pub use vm::{BootSummary, ExitReport, Vm, VmControl, VmError, VmHandle, VmStopper};
