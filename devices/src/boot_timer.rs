//! The boot-timer port 0x440: the guest's first write marks the moment it reached its
//! main code (phase `guest-main`), so the VMM can report boot time from the guest's view.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::bus::BusDevice;
use crate::counters::DeviceCounters;
use crate::fill_all_ones;

/// The guest's first boot-timer write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootStamp {
    /// When the write happened (host monotonic clock).
    pub at: Instant,
    /// The value written, little-endian over the access's bytes.
    pub value: u64,
}

/// Shared between the [`BootTimer`] device and the VMM, which reads it at exit.
#[derive(Debug, Default)]
pub struct BootTimerStamp {
    first: OnceLock<BootStamp>,
    later_writes: AtomicU64,
}

impl BootTimerStamp {
    /// An empty stamp.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first write, if the guest made one.
    pub fn first(&self) -> Option<BootStamp> {
        self.first.get().copied()
    }

    /// Writes after the first one.
    pub fn later_writes(&self) -> u64 {
        self.later_writes.load(Ordering::Relaxed)
    }

    /// Records a write made at `at`: the first one is kept, later ones are counted.
    pub fn record(&self, at: Instant, value: u64) {
        if self.first.set(BootStamp { at, value }).is_err() {
            self.later_writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The boot-timer port device. Writes of 1 to 8 bytes stamp; reads return all ones.
#[derive(Debug)]
pub struct BootTimer {
    stamp: Arc<BootTimerStamp>,
    counters: Arc<DeviceCounters>,
}

impl BootTimer {
    /// A boot timer that records into `stamp`.
    pub fn new(stamp: Arc<BootTimerStamp>) -> Self {
        Self {
            stamp,
            counters: Arc::default(),
        }
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        self.counters.read();
        self.counters.unknown();
        fill_all_ones(data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let now = Instant::now();
        self.counters.write();
        if offset != 0 || data.is_empty() || data.len() > 8 {
            self.counters.unknown();
            return;
        }
        let mut value = [0u8; 8];
        value[..data.len()].copy_from_slice(data);
        self.stamp.record(now, u64::from_le_bytes(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_write_is_stamped_with_its_value_and_later_ones_counted() {
        let stamp = Arc::new(BootTimerStamp::new());
        let mut dev = BootTimer::new(stamp.clone());
        assert_eq!(stamp.first(), None);
        let before = Instant::now();
        dev.write(0, &[0x34, 0x12]);
        let after = Instant::now();
        dev.write(0, &[0x99]);
        dev.write(0, &[0x98]);

        let first = stamp.first().expect("the first write stamps");
        assert_eq!(first.value, 0x1234);
        assert!(before <= first.at && first.at <= after);
        assert_eq!(stamp.later_writes(), 2);
    }

    #[test]
    fn odd_accesses_neither_stamp_nor_panic() {
        let stamp = Arc::new(BootTimerStamp::new());
        let mut dev = BootTimer::new(stamp.clone());
        dev.write(0, &[]);
        dev.write(0, &[1; 9]);
        dev.write(1, &[1]);
        dev.write(u64::MAX, &[1; 8]);
        let mut data = [0u8; 3];
        dev.read(0, &mut data);
        assert_eq!(data, [0xff; 3]);
        assert_eq!(stamp.first(), None);
        assert_eq!(dev.counters().snapshot().unknown_accesses, 5);

        dev.write(0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(stamp.first().map(|s| s.value), Some(0x0807_0605_0403_0201));
    }
}
