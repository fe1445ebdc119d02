//! x86_64: memory layout, boot protocols (Linux 64-bit, PVH, multiboot), CPU state, CPUID
//! and MP tables.

pub mod acpi;
pub mod aml;
pub mod boot_info;
pub mod cpu;
pub mod cpuid;
pub mod layout;
pub mod loader;
pub mod mptable;
