//! aarch64 (Raspberry Pi 4/5 and other arm64 boards): memory layout, the FDT, the GIC
//! (v3, or v2 on the Pi 4's GIC-400), PSCI vCPU state and loading an arm64 `Image`.
//!
//! The parts that are plain data ([`layout`], [`fdt`], [`gic`]'s regions, [`regs`]' ids and
//! values) build on every architecture, so their unit tests also run on x86_64 hosts; the
//! parts that talk to KVM are aarch64 only.

pub mod fdt;
#[cfg(test)]
mod fdt_reader;
pub mod gic;
pub mod layout;
pub mod loader;
pub mod regs;
#[cfg(target_arch = "aarch64")]
pub mod vm;
