//! The three ports through which a guest ends the VM on purpose: isa-debug-exit (0x501),
//! pvpanic (0x505) and the ACPI PM1a control register (0x604).

use std::fmt;
use std::sync::Arc;

use crate::bus::BusDevice;
use crate::counters::DeviceCounters;
use crate::exit::{ExitSink, GuestExitRequest};
use crate::fill_all_ones;

/// QEMU-compatible isa-debug-exit: a byte write of V asks for `DebugExit(V)`.
pub struct DebugExit {
    exit: Arc<dyn ExitSink>,
    counters: Arc<DeviceCounters>,
}

impl DebugExit {
    /// A debug-exit port that reports to `exit`.
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        Self {
            exit,
            counters: Arc::default(),
        }
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }
}

impl fmt::Debug for DebugExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DebugExit")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        self.counters.read();
        self.counters.unknown();
        fill_all_ones(data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.counters.write();
        match (offset, data) {
            (0, &[value]) => {
                self.counters.exit();
                self.exit.request_exit(GuestExitRequest::DebugExit(value));
            }
            _ => self.counters.unknown(),
        }
    }
}

/// pvpanic's PANICKED event bit.
const PVPANIC_PANICKED: u8 = 1 << 0;

/// QEMU-compatible pvpanic ISA port: reads advertise PANICKED support, a write with bit 0
/// set asks for `Panic`. Other event bits (such as CRASH_LOADED) are accepted and ignored.
pub struct PvPanic {
    exit: Arc<dyn ExitSink>,
    counters: Arc<DeviceCounters>,
}

impl PvPanic {
    /// A pvpanic port that reports to `exit`.
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        Self {
            exit,
            counters: Arc::default(),
        }
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }
}

impl fmt::Debug for PvPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PvPanic")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.counters.read();
        match (offset, data) {
            (0, [byte]) => *byte = PVPANIC_PANICKED,
            (_, data) => {
                self.counters.unknown();
                fill_all_ones(data);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.counters.write();
        match (offset, data) {
            (0, &[value]) => {
                if value & PVPANIC_PANICKED != 0 {
                    self.counters.exit();
                    self.exit.request_exit(GuestExitRequest::Panic);
                }
            }
            _ => self.counters.unknown(),
        }
    }
}

/// Size of the ACPI PM register block (PM1a_EVT_BLK, PM1a_CNT_BLK, PM_TMR and spare).
pub const ACPI_PM_LEN: u64 = 0x10;
/// Offset of PM1a_CNT inside the block.
const PM1A_CNT: u64 = 4;
/// SLP_EN: writing it with any SLP_TYP puts the machine to sleep; we treat it as S5.
const SLP_EN: u16 = 1 << 13;

/// A minimal ACPI PM register block: PM1a_CNT stores what the guest writes (SLP_EN reads
/// back as 0, as it is write-only) and a write setting SLP_EN asks for `PowerOff`; every
/// other register reads 0 and ignores writes.
pub struct AcpiPm {
    exit: Arc<dyn ExitSink>,
    pm1a_cnt: u16,
    counters: Arc<DeviceCounters>,
}

impl AcpiPm {
    /// An ACPI PM block that reports to `exit`.
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        Self {
            exit,
            pm1a_cnt: 0,
            counters: Arc::default(),
        }
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }

    /// Whether an access is one the block serves: 1, 2 or 4 bytes, inside the block.
    fn served(offset: u64, size: usize) -> bool {
        matches!(size, 1 | 2 | 4)
            && offset
                .checked_add(size as u64)
                .is_some_and(|end| end <= ACPI_PM_LEN)
    }

    /// The byte of the register block at `offset` as the guest reads it.
    fn register_byte(&self, offset: u64) -> u8 {
        let [low, high] = self.pm1a_cnt.to_le_bytes();
        match offset {
            PM1A_CNT => low,
            o if o == PM1A_CNT + 1 => high,
            _ => 0,
        }
    }
}

impl fmt::Debug for AcpiPm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcpiPm")
            .field("pm1a_cnt", &self.pm1a_cnt)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.counters.read();
        if !Self::served(offset, data.len()) {
            self.counters.unknown();
            fill_all_ones(data);
            return;
        }
        for (at, byte) in (offset..).zip(data.iter_mut()) {
            *byte = self.register_byte(at);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.counters.write();
        if !Self::served(offset, data.len()) {
            self.counters.unknown();
            return;
        }
        let mut cnt = self.pm1a_cnt.to_le_bytes();
        let mut touched_cnt = false;
        for (at, &byte) in (offset..).zip(data) {
            if let Some(slot) = at
                .checked_sub(PM1A_CNT)
                .and_then(|i| cnt.get_mut(i as usize))
            {
                *slot = byte;
                touched_cnt = true;
            }
        }
        if !touched_cnt {
            return;
        }
        let cnt = u16::from_le_bytes(cnt);
        self.pm1a_cnt = cnt & !SLP_EN;
        if cnt & SLP_EN != 0 {
            self.counters.exit();
            self.exit.request_exit(GuestExitRequest::PowerOff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{RecordingSink, ODD_SIZES};

    fn sink() -> Arc<RecordingSink> {
        Arc::new(RecordingSink::default())
    }

    #[test]
    fn debug_exit_reports_the_byte_written() {
        let s = sink();
        let mut dev = DebugExit::new(s.clone());
        dev.write(0, &[0]);
        dev.write(0, &[0x2a]);
        dev.write(0, &[0xff]);
        assert_eq!(
            s.requests(),
            vec![
                GuestExitRequest::DebugExit(0),
                GuestExitRequest::DebugExit(0x2a),
                GuestExitRequest::DebugExit(0xff)
            ]
        );
        assert_eq!(dev.counters().snapshot().exits_requested, 3);
    }

    #[test]
    fn debug_exit_ignores_wide_writes_and_reads_all_ones() {
        let s = sink();
        let mut dev = DebugExit::new(s.clone());
        for size in ODD_SIZES.into_iter().filter(|&n| n != 1) {
            dev.write(0, &vec![1; size]);
        }
        dev.write(1, &[1]);
        let mut byte = [0u8];
        dev.read(0, &mut byte);
        assert_eq!(byte, [0xff]);
        assert!(s.requests().is_empty());
        let c = dev.counters().snapshot();
        assert_eq!(c.unknown_accesses, ODD_SIZES.len() as u64 + 1);
        assert_eq!(c.exits_requested, 0);
    }

    #[test]
    fn pvpanic_advertises_panicked_and_exits_only_on_bit0() {
        let s = sink();
        let mut dev = PvPanic::new(s.clone());
        let mut byte = [0u8];
        dev.read(0, &mut byte);
        assert_eq!(byte, [0x01]);
        dev.write(0, &[0x02]); // CRASH_LOADED only: not a panic
        dev.write(0, &[0x00]);
        assert!(s.requests().is_empty());
        dev.write(0, &[0x03]);
        assert_eq!(s.requests(), vec![GuestExitRequest::Panic]);
        let c = dev.counters().snapshot();
        assert_eq!((c.exits_requested, c.unknown_accesses), (1, 0));
    }

    #[test]
    fn pvpanic_odd_accesses_never_exit() {
        let s = sink();
        let mut dev = PvPanic::new(s.clone());
        for size in ODD_SIZES.into_iter().filter(|&n| n != 1) {
            let mut data = vec![0u8; size];
            dev.read(0, &mut data);
            assert!(data.iter().all(|&b| b == 0xff), "size {size}");
            dev.write(0, &vec![0xff; size]);
        }
        dev.write(5, &[1]);
        assert!(s.requests().is_empty());
    }

    #[test]
    fn acpi_sixteen_bit_slp_en_write_powers_off() {
        let s = sink();
        let mut pm = AcpiPm::new(s.clone());
        // SLP_TYP=5 without SLP_EN: stored, no exit.
        pm.write(4, &(5u16 << 10).to_le_bytes());
        assert!(s.requests().is_empty());
        let mut cnt = [0u8; 2];
        pm.read(4, &mut cnt);
        assert_eq!(u16::from_le_bytes(cnt), 5 << 10);

        pm.write(4, &((5u16 << 10) | SLP_EN).to_le_bytes());
        assert_eq!(s.requests(), vec![GuestExitRequest::PowerOff]);
        pm.read(4, &mut cnt);
        assert_eq!(u16::from_le_bytes(cnt) & SLP_EN, 0, "SLP_EN is write-only");
    }

    #[test]
    fn acpi_slp_en_through_byte_and_dword_writes() {
        let s = sink();
        let mut pm = AcpiPm::new(s.clone());
        pm.write(4, &[0xff]); // low byte: no SLP_EN there
        assert!(s.requests().is_empty());
        pm.write(5, &[0x20]); // high byte bit 5 = bit 13
        pm.write(4, &u32::from(SLP_EN).to_le_bytes());
        assert_eq!(
            s.requests(),
            vec![GuestExitRequest::PowerOff, GuestExitRequest::PowerOff]
        );
    }

    #[test]
    fn acpi_other_registers_read_zero_and_ignore_writes() {
        let s = sink();
        let mut pm = AcpiPm::new(s.clone());
        pm.write(0, &u16::MAX.to_le_bytes()); // PM1a_STS
        pm.write(8, &u32::MAX.to_le_bytes()); // PM_TMR
        pm.write(2, &[0xff, 0xff]); // PM1a_EN
        assert!(s.requests().is_empty());
        for offset in [0u64, 2, 8, 12] {
            let mut data = [0xaau8; 4];
            pm.read(offset, &mut data);
            assert_eq!(data, [0; 4], "offset {offset}");
        }
        assert_eq!(pm.counters().snapshot().unknown_accesses, 0);
    }

    #[test]
    fn acpi_odd_sizes_and_offsets_read_all_ones_and_never_exit() {
        let s = sink();
        let mut pm = AcpiPm::new(s.clone());
        for size in [0usize, 3, 8, 16] {
            let mut data = vec![0u8; size];
            pm.read(4, &mut data);
            assert!(data.iter().all(|&b| b == 0xff));
            pm.write(4, &vec![0xff; size]);
        }
        let mut data = [0u8; 2];
        pm.read(ACPI_PM_LEN - 1, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        pm.write(u64::MAX, &[0xff]);
        pm.write(ACPI_PM_LEN, &[0xff, 0xff]);
        assert!(s.requests().is_empty());
        assert_eq!(pm.counters().snapshot().unknown_accesses, 11);
    }
}
