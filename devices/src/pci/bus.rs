//! Bus 0: which function answers a configuration access, and which BAR an access in the
//! PCI memory window reaches.

use std::sync::{Arc, Mutex, MutexGuard};

use super::PciFunction;
use crate::bus::BusDevice;

/// Device numbers on a bus.
pub const DEVICES_PER_BUS: usize = 32;

/// Bus 0 with function 0 of up to 32 devices. Built during setup, then shared read-only
/// by the configuration ports and the memory window; each function has its own lock.
#[derive(Default)]
pub struct PciBus {
    devices: Vec<Option<Arc<Mutex<dyn PciFunction>>>>,
}

impl PciBus {
    /// An empty bus.
    pub fn new() -> Self {
        PciBus {
            devices: vec![None; DEVICES_PER_BUS],
        }
    }

    /// Puts `function` in the first free device slot; returns the device number, or `None`
    /// when all 32 are taken.
    pub fn add(&mut self, function: Arc<Mutex<dyn PciFunction>>) -> Option<u8> {
        let slot = self.devices.iter().position(Option::is_none)?;
        self.devices[slot] = Some(function);
        Some(slot as u8)
    }

    /// Function 0 of device `device`.
    pub fn function(&self, device: usize) -> Option<&Arc<Mutex<dyn PciFunction>>> {
        self.devices.get(device)?.as_ref()
    }

    /// The configuration dword `reg` of bus 0, device `device`, function `function`: all
    /// ones where nothing answers (how software finds an empty slot).
    pub fn read_config(&self, bus: u8, device: usize, function: u8, reg: usize) -> u32 {
        match self.target(bus, device, function) {
            Some(f) => lock(f).read_config(reg & 0xfc),
            None => u32::MAX,
        }
    }

    /// Writes `data` at `offset` of the addressed function's configuration space.
    pub fn write_config(&self, bus: u8, device: usize, function: u8, offset: usize, data: &[u8]) {
        if let Some(f) = self.target(bus, device, function) {
            lock(f).write_config(offset, data);
        }
    }

    fn target(&self, bus: u8, device: usize, function: u8) -> Option<&Arc<Mutex<dyn PciFunction>>> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.function(device)
    }

    /// Hands an access at guest-physical `addr` to the function whose enabled memory BAR
    /// holds all of it; false when none does.
    fn access_bar(
        &self,
        addr: u64,
        len: u64,
        op: &mut dyn FnMut(&mut dyn PciFunction, usize, u64),
    ) -> bool {
        for f in self.devices.iter().flatten() {
            let mut f = lock(f);
            if !f.memory_enabled() {
                continue;
            }
            if let Some((bar, offset)) = f.bars().find(addr, len) {
                op(&mut *f, bar, offset);
                return true;
            }
        }
        false
    }
}

fn lock<'a>(f: &'a Mutex<dyn PciFunction + 'static>) -> MutexGuard<'a, dyn PciFunction + 'static> {
    f.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Configuration mechanism #1: CONFIG_ADDRESS at 0xCF8 (a dword: enable bit 31, bus 23:16,
/// device 15:11, function 10:8, register 7:2) and CONFIG_DATA at 0xCFC..0xCFF. Insert it on
/// the port bus at 0xCF8 with length 8.
#[cfg(target_arch = "x86_64")]
pub struct PciConfigIo {
    bus: Arc<PciBus>,
    address: u32,
}

/// The port of CONFIG_ADDRESS.
#[cfg(target_arch = "x86_64")]
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;

#[cfg(target_arch = "x86_64")]
impl PciConfigIo {
    /// The ports for `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        PciConfigIo { bus, address: 0 }
    }

    /// (bus, device, function, register) of the current address, if enabled.
    fn decode(&self) -> Option<(u8, usize, u8, usize)> {
        let a = self.address;
        (a & (1 << 31) != 0).then_some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as usize,
            ((a >> 8) & 7) as u8,
            (a & 0xfc) as usize,
        ))
    }
}

#[cfg(target_arch = "x86_64")]
impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (0, 4) => self.address,
            (4..=7, 1 | 2 | 4) if offset as usize - 4 + data.len() <= 4 => match self.decode() {
                Some((bus, dev, func, reg)) => {
                    self.bus.read_config(bus, dev, func, reg) >> ((offset - 4) * 8)
                }
                None => u32::MAX,
            },
            _ => u32::MAX,
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => self.address = super::le_value(data) as u32 & 0x80ff_fffc,
            (4..=7, 1 | 2 | 4) if offset as usize - 4 + data.len() <= 4 => {
                if let Some((bus, dev, func, reg)) = self.decode() {
                    let at = reg + offset as usize - 4;
                    self.bus.write_config(bus, dev, func, at, data);
                }
            }
            // Byte writes to 0xCF8..0xCFB are not CONFIG_ADDRESS (0xCF9 is a reset
            // register on PC chipsets); they are dropped.
            _ => {}
        }
    }
}

/// The memory window BARs are allocated in; insert it on the MMIO bus over the window.
pub struct PciMmioWindow {
    bus: Arc<PciBus>,
    base: u64,
}

impl PciMmioWindow {
    /// The window at `base` for `bus`.
    pub fn new(bus: Arc<PciBus>, base: u64) -> Self {
        PciMmioWindow { bus, base }
    }
}

impl BusDevice for PciMmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let addr = self.base.wrapping_add(offset);
        let len = data.len() as u64;
        if !self
            .bus
            .access_bar(addr, len, &mut |f, bar, off| f.read_bar(bar, off, data))
        {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let addr = self.base.wrapping_add(offset);
        self.bus
            .access_bar(addr, data.len() as u64, &mut |f, bar, off| {
                f.write_bar(bar, off, data)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{BarKind, BarSet, HostBridge, COMMAND, COMMAND_MEMORY};

    /// A function with one 4 KiB BAR that records BAR accesses.
    struct Recorder {
        bars: BarSet,
        command: u16,
        seen: Vec<(usize, u64, usize)>,
    }

    impl PciFunction for Recorder {
        fn read_config(&mut self, reg: usize) -> u32 {
            match reg {
                0 => 0x11e8_1234,
                4 => u32::from(self.command),
                0x10..=0x24 => self.bars.read((reg - 0x10) / 4),
                _ => 0,
            }
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) {
            let reg = offset & !3;
            let merged = crate::pci::merge_dword(self.read_config(reg), offset & 3, data);
            match reg {
                COMMAND => self.command = merged as u16,
                0x10..=0x24 => self.bars.write((reg - 0x10) / 4, merged),
                _ => {}
            }
        }
        fn bars(&self) -> &BarSet {
            &self.bars
        }
        fn memory_enabled(&self) -> bool {
            self.command & COMMAND_MEMORY != 0
        }
        fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            self.seen.push((bar, offset, data.len()));
            data.fill(0x5a);
        }
        fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.seen.push((bar, offset, data.len()));
        }
    }

    fn bus_with_recorder() -> (Arc<PciBus>, Arc<Mutex<Recorder>>) {
        let mut bars = BarSet::new();
        bars.declare(0, BarKind::Mem32, 0x1000, false).unwrap();
        bars.set_address(0, 0xc000_0000);
        let rec = Arc::new(Mutex::new(Recorder {
            bars,
            command: 0,
            seen: Vec::new(),
        }));
        let mut bus = PciBus::new();
        assert_eq!(bus.add(Arc::new(Mutex::new(HostBridge::new()))), Some(0));
        assert_eq!(bus.add(rec.clone()), Some(1));
        (Arc::new(bus), rec)
    }

    #[cfg(target_arch = "x86_64")]
    fn cfg_read(io: &mut PciConfigIo, dev: u32, reg: u32, size: usize) -> u32 {
        io.write(0, &((1 << 31) | (dev << 11) | (reg & !3)).to_le_bytes());
        let mut data = vec![0u8; size];
        io.read(4 + u64::from(reg & 3), &mut data);
        crate::pci::le_value(&data) as u32
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn config_mechanism_one_finds_the_functions_and_sizes_a_bar() {
        let (bus, _) = bus_with_recorder();
        let mut io = PciConfigIo::new(bus);
        assert_eq!(cfg_read(&mut io, 0, 0, 4) & 0xffff, 0x8086, "host bridge");
        assert_eq!(cfg_read(&mut io, 0, 0xa, 2), 0x0600, "class: host bridge");
        assert_eq!(cfg_read(&mut io, 1, 0, 4), 0x11e8_1234);
        assert_eq!(cfg_read(&mut io, 1, 2, 2), 0x11e8, "word at offset 2");
        assert_eq!(cfg_read(&mut io, 2, 0, 4), u32::MAX, "empty slot");
        // Bus 1 and function 1 do not exist.
        io.write(0, &((1u32 << 31) | (1 << 16)).to_le_bytes());
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), u32::MAX);
        // Without the enable bit, data reads all ones.
        io.write(0, &(1u32 << 11).to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), u32::MAX);
        let mut a = [0u8; 4];
        io.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), 1 << 11, "CONFIG_ADDRESS reads back");
        // Size BAR0 of device 1 through the ports.
        io.write(0, &((1u32 << 31) | (1 << 11) | 0x10).to_le_bytes());
        io.write(4, &u32::MAX.to_le_bytes());
        assert_eq!(cfg_read(&mut io, 1, 0x10, 4), 0xffff_f000);
        io.write(0, &((1u32 << 31) | (1 << 11) | 0x10).to_le_bytes());
        io.write(4, &0xc000_0000u32.to_le_bytes());
        assert_eq!(cfg_read(&mut io, 1, 0x10, 4), 0xc000_0000);
        // A byte write to 0xCF9 does not move CONFIG_ADDRESS.
        io.write(1, &[0x06]);
        io.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), (1 << 31) | (1 << 11) | 0x10);
    }

    #[test]
    fn the_window_reaches_a_bar_only_with_memory_decoding_on() {
        let (bus, rec) = bus_with_recorder();
        let mut window = PciMmioWindow::new(bus.clone(), 0xc000_0000);
        let mut d = [0u8; 4];
        window.read(0x10, &mut d);
        assert_eq!(d, [0xff; 4], "decoding off");
        bus.write_config(0, 1, 0, COMMAND, &[COMMAND_MEMORY as u8]);
        window.read(0x10, &mut d);
        assert_eq!(d, [0x5a; 4]);
        window.write(0xffc, &[1, 2, 3, 4]);
        window.read(0x1000, &mut d);
        assert_eq!(d, [0xff; 4], "past the BAR");
        window.read(0xffe, &mut d);
        assert_eq!(d, [0xff; 4], "straddling the end of the BAR");
        assert_eq!(rec.lock().unwrap().seen, vec![(0, 0x10, 4), (0, 0xffc, 4)]);
        // The guest moves the BAR: accesses follow it.
        bus.write_config(0, 1, 0, 0x10, &0xc000_8000u32.to_le_bytes());
        window.read(0x8004, &mut d);
        assert_eq!(d, [0x5a; 4]);
    }
}
