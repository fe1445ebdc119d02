//! A bus routes guest accesses (port I/O or MMIO) to the device whose range holds them.
//!
//! The VMM builds one `Bus` for port I/O and one for MMIO during setup, then shares each
//! as an `Arc<Bus>` with every vCPU thread: after setup the bus itself is read-only, and
//! each device sits behind its own mutex, so vCPUs touching different devices never
//! contend.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// A device on a [`Bus`]. `offset` is relative to the base the device was inserted at;
/// `data.len()` is the access size, which is whatever the guest (or KVM) produced: a device
/// must cope with any size and any offset without panicking.
pub trait BusDevice: Send {
    /// Guest reads `data.len()` bytes at `offset`; the device fills `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be placed on the bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The range has no addresses.
    #[error("device range at {base:#x} has length 0; give every device at least one address")]
    ZeroLength {
        /// Requested base address.
        base: u64,
    },
    /// `base + len` does not fit in 64 bits.
    #[error(
        "device range at {base:#x} with length {len:#x} runs past the end of the address space; \
         move it lower or make it shorter"
    )]
    PastEnd {
        /// Requested base address.
        base: u64,
        /// Requested length.
        len: u64,
    },
    /// The range shares addresses with a device already on the bus.
    #[error(
        "device range {base:#x}..={last:#x} overlaps the device already at \
         {other_base:#x}..={other_last:#x}; give each device its own addresses"
    )]
    Overlap {
        /// Requested base address.
        base: u64,
        /// Last address of the requested range.
        last: u64,
        /// Base of the device already there.
        other_base: u64,
        /// Last address of the device already there.
        other_last: u64,
    },
}

struct BusEntry {
    /// Last address of the range (inclusive), so a range may end at `u64::MAX`.
    last: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges mapped to devices; lookups are O(log n).
#[derive(Default)]
pub struct Bus {
    entries: BTreeMap<u64, BusEntry>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.ranges().map(|(base, last)| base..=last))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `dev` at `[base, base + len)`. Fails, leaving the bus unchanged, when the
    /// range is empty, runs past the end of the address space or overlaps another device.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let last = base
            .checked_add(len - 1)
            .ok_or(BusError::PastEnd { base, len })?;
        let overlapping = self
            .entries
            .range(..=base)
            .next_back()
            .filter(|(_, e)| e.last >= base)
            .or_else(|| self.entries.range(base..=last).next());
        if let Some((&other_base, other)) = overlapping {
            return Err(BusError::Overlap {
                base,
                last,
                other_base,
                other_last: other.last,
            });
        }
        self.entries.insert(base, BusEntry { last, device: dev });
        Ok(())
    }

    /// Number of devices on the bus.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the bus has no devices.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `(base, last)` address pairs of every device, lowest first.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.entries.iter().map(|(&base, e)| (base, e.last))
    }

    /// The device holding the whole access `[addr, addr + size)`, with the access's offset
    /// into it. An access that starts in a device but runs past its end belongs to nobody.
    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &BusEntry)> {
        let (&base, entry) = self.entries.range(..=addr).next_back()?;
        let access_last = match size {
            0 => addr,
            n => addr.checked_add(u64::try_from(n - 1).ok()?)?,
        };
        (access_last <= entry.last).then_some((addr - base, entry))
    }

    /// Reads `data.len()` bytes at `addr`. Returns false, leaving `data` untouched, when no
    /// device holds the whole access (the VMM then answers all ones and counts it).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes `data` at `addr`. Returns false when no device holds the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device even if an earlier access panicked while holding it: one broken device
/// must not take every vCPU thread down with it.
fn lock<'a>(device: &'a Mutex<dyn BusDevice + 'static>) -> MutexGuard<'a, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every access and answers reads with `offset + i` per byte.
    #[derive(Default)]
    struct Probe {
        accesses: Vec<(bool, u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
            self.accesses.push((false, offset, data.to_vec()));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.accesses.push((true, offset, data.to_vec()));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    fn accesses(p: &Arc<Mutex<Probe>>) -> Vec<(bool, u64, Vec<u8>)> {
        p.lock().unwrap().accesses.clone()
    }

    #[test]
    fn bus_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Bus>();
        assert_send_sync::<Arc<Bus>>();
    }

    #[test]
    fn zero_length_and_wrapping_ranges_are_refused() {
        let mut bus = Bus::new();
        assert_eq!(
            bus.insert(0x10, 0, probe()),
            Err(BusError::ZeroLength { base: 0x10 })
        );
        assert_eq!(
            bus.insert(u64::MAX, 2, probe()),
            Err(BusError::PastEnd {
                base: u64::MAX,
                len: 2
            })
        );
        assert!(bus.is_empty());
        // A range ending exactly at the top of the address space is fine.
        bus.insert(u64::MAX - 3, 4, probe()).unwrap();
        assert!(bus.read(u64::MAX, &mut [0u8; 1]));
        assert!(!bus.read(u64::MAX, &mut [0u8; 2]));
    }

    #[test]
    fn overlaps_are_refused_from_every_side() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, probe()).unwrap();
        let cases = [
            (0x100, 0x10), // identical
            (0x0f8, 0x09), // tail reaches first byte
            (0x10f, 0x01), // last byte
            (0x104, 0x02), // inside
            (0x0f0, 0x40), // covers it
        ];
        for (base, len) in cases {
            match bus.insert(base, len, probe()) {
                Err(BusError::Overlap {
                    other_base,
                    other_last,
                    ..
                }) => {
                    assert_eq!(
                        (other_base, other_last),
                        (0x100, 0x10f),
                        "{base:#x}+{len:#x}"
                    )
                }
                other => panic!("{base:#x}+{len:#x}: expected overlap, got {other:?}"),
            }
        }
        // Touching neighbours on both sides are fine.
        bus.insert(0x0f0, 0x10, probe()).unwrap();
        bus.insert(0x110, 0x10, probe()).unwrap();
        assert_eq!(
            bus.ranges().collect::<Vec<_>>(),
            vec![(0x0f0, 0x0ff), (0x100, 0x10f), (0x110, 0x11f)]
        );
    }

    #[test]
    fn accesses_reach_the_right_device_with_relative_offsets() {
        let mut bus = Bus::new();
        let low = probe();
        let high = probe();
        bus.insert(0x3f8, 8, low.clone()).unwrap();
        bus.insert(0x400, 4, high.clone()).unwrap();

        let mut two = [0u8; 2];
        assert!(bus.read(0x3fa, &mut two));
        assert_eq!(two, [2, 3]);
        assert!(bus.write(0x3ff, &[0xaa]));
        assert!(bus.write(0x400, &[1, 2, 3, 4]));

        assert_eq!(
            accesses(&low),
            vec![(false, 2, vec![2, 3]), (true, 7, vec![0xaa])]
        );
        assert_eq!(accesses(&high), vec![(true, 0, vec![1, 2, 3, 4])]);
    }

    #[test]
    fn boundaries_and_straddling_accesses_belong_to_nobody() {
        let mut bus = Bus::new();
        let dev = probe();
        bus.insert(0x60, 5, dev.clone()).unwrap();

        let mut byte = [0x5au8; 1];
        assert!(!bus.read(0x5f, &mut byte), "one below the base");
        assert_eq!(byte, [0x5a], "an unclaimed read leaves the buffer alone");
        assert!(!bus.read(0x65, &mut byte), "one past the end");
        assert!(bus.read(0x64, &mut byte), "last port");
        assert!(
            !bus.read(0x64, &mut [0u8; 2]),
            "2-byte read straddling the end"
        );
        assert!(
            !bus.write(0x63, &[0u8; 4]),
            "4-byte write straddling the end"
        );
        assert!(!bus.write(0x5f, &[0u8; 2]), "write starting below the base");
        assert!(
            bus.write(0x61, &[0u8; 4]),
            "4-byte write ending at the last port"
        );
        assert!(!bus.read(u64::MAX, &mut [0u8; 8]), "wrapping access");

        let seen = accesses(&dev);
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].1, seen[1].1), (4, 1));
    }

    #[test]
    fn zero_sized_accesses_go_to_the_device_that_holds_the_address() {
        let mut bus = Bus::new();
        let dev = probe();
        bus.insert(0x80, 1, dev.clone()).unwrap();
        assert!(bus.write(0x80, &[]));
        assert!(!bus.write(0x81, &[]));
        assert_eq!(accesses(&dev), vec![(true, 0, vec![])]);
    }

    #[test]
    fn empty_bus_claims_nothing() {
        let bus = Bus::new();
        assert!(!bus.read(0, &mut [0u8; 1]));
        assert!(!bus.write(0x3f8, &[1]));
    }

    #[test]
    fn a_poisoned_device_still_serves_accesses() {
        let mut bus = Bus::new();
        let dev = probe();
        bus.insert(0x10, 1, dev.clone()).unwrap();
        let poisoner = dev.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison the device lock");
        })
        .join();
        assert!(dev.is_poisoned());
        assert!(bus.write(0x10, &[9]));
        let seen = dev
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .accesses
            .clone();
        assert_eq!(seen, vec![(true, 0, vec![9])]);
    }
}
