//! Per-device counters the VMM reads while the guest runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters one device keeps. Shared through an `Arc` so the VMM can read them without
/// taking the device's lock; every field only ever grows.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    reads: AtomicU64,
    writes: AtomicU64,
    unknown_accesses: AtomicU64,
    exits_requested: AtomicU64,
    bytes_out: AtomicU64,
    bytes_lost: AtomicU64,
    bytes_in: AtomicU64,
    interrupt_errors: AtomicU64,
}

/// A copy of [`DeviceCounters`] at one moment (serializable for the VMM's reports).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CounterSnapshot {
    /// Guest reads that reached the device (served or not).
    pub reads: u64,
    /// Guest writes that reached the device (served or not).
    pub writes: u64,
    /// Accesses the device did not serve: unknown register, unsupported size or command.
    pub unknown_accesses: u64,
    /// Times the device asked the VMM to end the VM.
    pub exits_requested: u64,
    /// Bytes the device sent to its host-side output (serial console).
    pub bytes_out: u64,
    /// Output bytes lost because the host-side writer failed.
    pub bytes_lost: u64,
    /// Host-side input bytes queued for the guest.
    pub bytes_in: u64,
    /// Interrupts that could not be signalled (eventfd write failed).
    pub interrupt_errors: u64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl DeviceCounters {
    /// Reads every counter.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            unknown_accesses: self.unknown_accesses.load(Ordering::Relaxed),
            exits_requested: self.exits_requested.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            bytes_lost: self.bytes_lost.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            interrupt_errors: self.interrupt_errors.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn read(&self) {
        bump(&self.reads, 1);
    }

    pub(crate) fn write(&self) {
        bump(&self.writes, 1);
    }

    pub(crate) fn unknown(&self) {
        bump(&self.unknown_accesses, 1);
    }

    pub(crate) fn exit(&self) {
        bump(&self.exits_requested, 1);
    }

    pub(crate) fn byte_out(&self) {
        bump(&self.bytes_out, 1);
    }

    pub(crate) fn byte_lost(&self) {
        bump(&self.bytes_lost, 1);
    }

    pub(crate) fn bytes_in(&self, n: u64) {
        bump(&self.bytes_in, n);
    }

    pub(crate) fn interrupt_error(&self) {
        bump(&self.interrupt_errors, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_lands_in_its_own_field() {
        let c = DeviceCounters::default();
        c.read();
        c.write();
        c.write();
        c.unknown();
        c.unknown();
        c.unknown();
        c.exit();
        c.byte_out();
        c.byte_out();
        c.byte_lost();
        c.bytes_in(7);
        c.interrupt_error();
        assert_eq!(
            c.snapshot(),
            CounterSnapshot {
                reads: 1,
                writes: 2,
                unknown_accesses: 3,
                exits_requested: 1,
                bytes_out: 2,
                bytes_lost: 1,
                bytes_in: 7,
                interrupt_errors: 1,
            }
        );
    }
}
