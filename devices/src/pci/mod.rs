//! A PCI bus for the guest: functions on bus 0, their configuration space, their BARs and
//! their MSI/MSI-X capabilities, with no KVM types.
//!
//! * [`PciFunction`]: what a function on the bus answers (configuration space, BAR accesses).
//! * [`PciBus`]: up to 32 devices (function 0 each) on bus 0; [`HostBridge`] sits at 00:00.0.
//! * [`PciConfigIo`] (x86_64): configuration mechanism #1 at ports 0xCF8 (address) and 0xCFC
//!   (data). aarch64 would use ECAM (a memory window per the FDT's `pci-host-ecam-generic`);
//!   that is not written yet.
//! * [`PciMmioWindow`]: the 32-bit memory window the VMM allocates BARs in; an access there
//!   reaches the function whose (enabled) memory BAR holds it, wherever the guest moved it.
//! * [`BarSet`] and [`BarAllocator`]: BAR registers answering the size probe (write all
//!   ones, read the mask) and placing BARs at naturally aligned addresses.
//! * [`caps`]: walking the capability list; MSI and MSI-X parsing and state.

pub mod bars;
pub mod bus;
pub mod caps;
pub mod host_bridge;

pub use bars::{Bar, BarAllocator, BarError, BarKind, BarSet};
#[cfg(target_arch = "x86_64")]
pub use bus::PciConfigIo;
pub use bus::{PciBus, PciMmioWindow};
pub use caps::{Capability, MsiCap, MsiState, MsixCap, MsixState};
pub use host_bridge::HostBridge;

/// Bytes of a conventional (non-extended) configuration space.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Offset of the vendor ID.
pub const VENDOR_ID: usize = 0x00;
/// Offset of the command register.
pub const COMMAND: usize = 0x04;
/// Offset of the status register.
pub const STATUS: usize = 0x06;
/// Offset of the first BAR.
pub const BAR0: usize = 0x10;
/// Offset of the expansion ROM BAR (header type 0).
pub const ROM_BAR: usize = 0x30;
/// Offset of the capability pointer.
pub const CAPABILITY_POINTER: usize = 0x34;
/// Offset of the interrupt line register (the pin is the byte after it).
pub const INTERRUPT_LINE: usize = 0x3c;
/// Command register: the function decodes its memory BARs.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: the function may master the bus (DMA, MSI writes).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Status register: the capability list is valid.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;

/// A function on the guest's PCI bus. Offsets are bytes into its configuration space;
/// every method must cope with any offset and size the guest produces without panicking.
pub trait PciFunction: Send {
    /// The configuration dword at `reg` (a multiple of 4, below 256).
    fn read_config(&mut self, reg: usize) -> u32;
    /// The guest writes `data` (1, 2 or 4 bytes, not crossing a dword) at `offset`.
    fn write_config(&mut self, offset: usize, data: &[u8]);
    /// The BAR registers as the guest has programmed them.
    fn bars(&self) -> &BarSet;
    /// Whether memory decoding is on (command register bit 1).
    fn memory_enabled(&self) -> bool;
    /// The guest reads `data.len()` bytes at `offset` into memory BAR `bar`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` into memory BAR `bar`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// `old` with `data` written at byte `shift` (0..=3) of it; bytes past the dword are dropped.
pub fn merge_dword(old: u32, shift: usize, data: &[u8]) -> u32 {
    let mut bytes = old.to_le_bytes();
    for (i, b) in data.iter().enumerate() {
        if let Some(slot) = bytes.get_mut(shift + i) {
            *slot = *b;
        }
    }
    u32::from_le_bytes(bytes)
}

/// The little-endian value of up to 8 bytes.
pub fn le_value(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_replaces_only_the_written_bytes() {
        assert_eq!(merge_dword(0x1122_3344, 0, &[0xaa]), 0x1122_33aa);
        assert_eq!(merge_dword(0x1122_3344, 2, &[0xaa, 0xbb]), 0xbbaa_3344);
        assert_eq!(merge_dword(0x1122_3344, 3, &[0xaa, 0xbb]), 0xaa22_3344);
        assert_eq!(merge_dword(0, 0, &[1, 2, 3, 4]), 0x0403_0201);
        assert_eq!(le_value(&[0x34, 0x12]), 0x1234);
    }
}
