//! Boot phases as the VMM sees them, in microseconds since the process (or the embedding
//! caller) started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

const UNSET: u64 = u64::MAX;

/// The phases we stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// /dev/kvm open, VM, irqchip and memory created.
    KvmReady,
    /// Kernel and boot structures loaded, vCPUs configured.
    GuestLoaded,
    /// First KVM_RUN issued.
    GuestEntry,
    /// First byte the guest wrote to the serial port.
    FirstSerialByte,
    /// Guest wrote the boot-timer port.
    GuestMain,
    /// The VM ended.
    GuestExit,
}

const PHASES: [Phase; 6] = [
    Phase::KvmReady,
    Phase::GuestLoaded,
    Phase::GuestEntry,
    Phase::FirstSerialByte,
    Phase::GuestMain,
    Phase::GuestExit,
];

impl Phase {
    fn index(self) -> usize {
        PHASES.iter().position(|p| *p == self).unwrap_or(0)
    }
    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::KvmReady => "kvm_ready",
            Phase::GuestLoaded => "guest_loaded",
            Phase::GuestEntry => "guest_entry",
            Phase::FirstSerialByte => "first_serial_byte",
            Phase::GuestMain => "guest_main",
            Phase::GuestExit => "guest_exit",
        }
    }
}

/// Lock-free phase stamps; each phase keeps its first stamp.
#[derive(Debug)]
pub struct BootTimings {
    start: Instant,
    stamps: [AtomicU64; 6],
}

impl BootTimings {
    /// Timings relative to `start` (the process start for the CLI).
    pub fn new(start: Instant) -> Self {
        BootTimings {
            start,
            stamps: std::array::from_fn(|_| AtomicU64::new(UNSET)),
        }
    }

    /// Records `phase` now, unless it was already recorded.
    pub fn stamp(&self, phase: Phase) {
        self.stamp_at(phase, Instant::now());
    }

    /// Records `phase` at `at`, unless it was already recorded.
    pub fn stamp_at(&self, phase: Phase, at: Instant) {
        let us = at.saturating_duration_since(self.start).as_micros() as u64;
        let _ = self.stamps[phase.index()].compare_exchange(
            UNSET,
            us,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Microseconds since start for `phase`, if stamped.
    pub fn get(&self, phase: Phase) -> Option<u64> {
        match self.stamps[phase.index()].load(Ordering::Acquire) {
            UNSET => None,
            v => Some(v),
        }
    }

    /// A serializable snapshot.
    pub fn snapshot(&self) -> TimingsReport {
        TimingsReport {
            process_start_us: 0,
            kvm_ready_us: self.get(Phase::KvmReady),
            guest_loaded_us: self.get(Phase::GuestLoaded),
            guest_entry_us: self.get(Phase::GuestEntry),
            first_serial_byte_us: self.get(Phase::FirstSerialByte),
            guest_main_us: self.get(Phase::GuestMain),
            guest_exit_us: self.get(Phase::GuestExit),
        }
    }
}

/// Boot phases in microseconds since start; `None` where the phase never happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimingsReport {
    /// Always 0: the reference point.
    pub process_start_us: u64,
    /// See [`Phase::KvmReady`].
    pub kvm_ready_us: Option<u64>,
    /// See [`Phase::GuestLoaded`].
    pub guest_loaded_us: Option<u64>,
    /// See [`Phase::GuestEntry`].
    pub guest_entry_us: Option<u64>,
    /// See [`Phase::FirstSerialByte`].
    pub first_serial_byte_us: Option<u64>,
    /// See [`Phase::GuestMain`].
    pub guest_main_us: Option<u64>,
    /// See [`Phase::GuestExit`].
    pub guest_exit_us: Option<u64>,
}

impl std::fmt::Display for TimingsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |v: Option<u64>| match v {
            Some(us) => format!("{:.3}", us as f64 / 1000.0),
            None => "-".to_string(),
        };
        write!(
            f,
            "boot timings (ms since start): kvm-ready {}, guest-loaded {}, guest-entry {}, first-serial-byte {}, guest-main {}, guest-exit {}",
            ms(self.kvm_ready_us),
            ms(self.guest_loaded_us),
            ms(self.guest_entry_us),
            ms(self.first_serial_byte_us),
            ms(self.guest_main_us),
            ms(self.guest_exit_us)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_stamp_wins_and_missing_phases_are_none() {
        let start = Instant::now();
        let t = BootTimings::new(start);
        t.stamp_at(Phase::GuestEntry, start + Duration::from_micros(1500));
        t.stamp_at(Phase::GuestEntry, start + Duration::from_micros(9000));
        assert_eq!(t.get(Phase::GuestEntry), Some(1500));
        assert_eq!(t.get(Phase::GuestMain), None);
        let r = t.snapshot();
        assert_eq!(r.guest_entry_us, Some(1500));
        assert!(r.to_string().contains("guest-entry 1.500"));
        assert!(r.to_string().contains("guest-main -"));
    }
}
