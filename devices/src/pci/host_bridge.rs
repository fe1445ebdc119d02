//! The host bridge at 00:00.0: an ID, a class and nothing else, so that software scanning
//! the bus finds a bus there (Linux and most firmware look at 00:00.0 first).

use super::{BarSet, PciFunction};

/// Vendor ID the host bridge reports (Intel).
pub const HOST_BRIDGE_VENDOR: u16 = 0x8086;
/// Device ID the host bridge reports: 0x0d57, the ID Firecracker and Cloud Hypervisor give
/// their virtual host bridges, so guests that know those VMMs need nothing new.
pub const HOST_BRIDGE_DEVICE: u16 = 0x0d57;
/// Class code: bridge (0x06), host bridge (0x00), programming interface 0.
pub const HOST_BRIDGE_CLASS: u32 = 0x06_00_00;

/// A host bridge with no BARs, no capabilities and read-only registers.
#[derive(Debug, Default)]
pub struct HostBridge {
    bars: BarSet,
}

impl HostBridge {
    /// The bridge.
    pub fn new() -> Self {
        Self::default()
    }
}

impl PciFunction for HostBridge {
    fn read_config(&mut self, reg: usize) -> u32 {
        match reg {
            0x00 => u32::from(HOST_BRIDGE_DEVICE) << 16 | u32::from(HOST_BRIDGE_VENDOR),
            // Class code and revision 0.
            0x08 => HOST_BRIDGE_CLASS << 8,
            // Header type 0, single function.
            _ => 0,
        }
    }

    fn write_config(&mut self, _offset: usize, _data: &[u8]) {}

    fn bars(&self) -> &BarSet {
        &self.bars
    }

    fn memory_enabled(&self) -> bool {
        false
    }

    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}
