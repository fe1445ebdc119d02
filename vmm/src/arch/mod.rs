//! Per-architecture boot code.
//!
//! `x86_64` is what the VMM runs on x86 hosts. `aarch64` builds on aarch64 hosts, and in
//! unit tests everywhere (its layout, FDT and register values are plain data).

#[cfg(any(target_arch = "aarch64", test))]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
