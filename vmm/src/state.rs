//! State shared by the vCPU threads and whoever controls the VM (CLI main thread or an
//! embedding orchestrator through `VmHandle`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use devices::{ExitSink, GuestExitRequest};
use serde::Serialize;

use crate::exit::ExitReason;
use crate::timings::{BootTimings, Phase};
use crate::vcpu::kick_signal;

/// Lifecycle of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// vCPUs are running the guest.
    Running,
    /// vCPUs are parked.
    Paused,
    /// The VM ended.
    Exited(ExitReason),
}

/// What a vCPU thread should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuControl {
    /// Enter the guest.
    Run,
    /// Park until resumed.
    Pause,
    /// Leave the loop.
    Exit,
}

/// Why KVM_RUN returned, as counted per vCPU. The names ([`ExitKind::name`]) are stable:
/// they appear in reports, `GET /state` and the node agent's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// A port read (KVM_EXIT_IO, in).
    IoIn,
    /// A port write (KVM_EXIT_IO, out).
    IoOut,
    /// An MMIO read.
    MmioRead,
    /// An MMIO write.
    MmioWrite,
    /// The guest halted with no interrupt to wake it (userspace HLT exit).
    Hlt,
    /// Triple fault or other shutdown.
    Shutdown,
    /// PSCI / system event (poweroff, reset, crash).
    SystemEvent,
    /// KVM could not emulate something.
    InternalError,
    /// VM entry failed.
    FailEntry,
    /// KVM_RUN came back without a guest exit: a signal (EINTR, such as the kick that
    /// pauses or stops the VM), `immediate_exit` (KVM_EXIT_INTR) or EAGAIN.
    Intr,
    /// Any other exit, or KVM_RUN failing.
    Other,
}

impl ExitKind {
    /// Every kind, in report order.
    pub const ALL: [ExitKind; 11] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::InternalError,
        ExitKind::FailEntry,
        ExitKind::Intr,
        ExitKind::Other,
    ];

    /// The stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io_in",
            ExitKind::IoOut => "io_out",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::Hlt => "hlt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system_event",
            ExitKind::InternalError => "internal_error",
            ExitKind::FailEntry => "fail_entry",
            ExitKind::Intr => "intr",
            ExitKind::Other => "other",
        }
    }
}

/// One vCPU's exit counters, on cache lines of their own so that vCPUs counting at the
/// same time do not bounce a line between host CPUs (128 bytes: adjacent-line prefetch
/// pairs 64-byte lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct VcpuExits([AtomicU64; ExitKind::ALL.len()]);

/// VM-wide counters.
#[derive(Debug, Default)]
pub struct VmCounters {
    unhandled_pio: AtomicU64,
    unhandled_mmio: AtomicU64,
    /// Exits by kind, one row per vCPU; each row is written by its vCPU thread only.
    exits: Box<[VcpuExits]>,
}

impl VmCounters {
    /// Counters for a VM with `vcpu_count` vCPUs.
    pub fn new(vcpu_count: usize) -> Self {
        VmCounters {
            exits: (0..vcpu_count).map(|_| VcpuExits::default()).collect(),
            ..VmCounters::default()
        }
    }
    /// A port access nobody answered.
    pub fn count_unhandled_pio(&self) {
        self.unhandled_pio.fetch_add(1, Ordering::Relaxed);
    }
    /// An MMIO access nobody answered.
    pub fn count_unhandled_mmio(&self) {
        self.unhandled_mmio.fetch_add(1, Ordering::Relaxed);
    }
    /// One KVM_RUN return of `kind` on vCPU `vcpu`. Only that vCPU's thread may call this:
    /// its row has a single writer, so a relaxed load and store (no locked instruction)
    /// count exactly. An index past the vCPU count is ignored.
    #[inline]
    pub fn count_exit(&self, vcpu: usize, kind: ExitKind) {
        if let Some(row) = self.exits.get(vcpu) {
            let slot = &row.0[kind as usize];
            slot.store(
                slot.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
        }
    }
    /// Exits by kind, summed over the vCPUs.
    pub fn exits(&self) -> ExitCounts {
        let mut sum = [0u64; ExitKind::ALL.len()];
        for row in self.exits.iter() {
            for (total, slot) in sum.iter_mut().zip(&row.0) {
                *total = total.wrapping_add(slot.load(Ordering::Relaxed));
            }
        }
        ExitCounts::from_array(sum)
    }
    /// Snapshot.
    pub fn snapshot(&self) -> CountersReport {
        CountersReport {
            unhandled_pio_accesses: self.unhandled_pio.load(Ordering::Relaxed),
            unhandled_mmio_accesses: self.unhandled_mmio.load(Ordering::Relaxed),
            exits: self.exits(),
        }
    }
}

/// vCPU exits by kind (see [`ExitKind`]), summed over the VM's vCPUs. Serialized as an
/// object with one field per kind name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ExitCounts {
    /// Port reads.
    pub io_in: u64,
    /// Port writes.
    pub io_out: u64,
    /// MMIO reads.
    pub mmio_read: u64,
    /// MMIO writes.
    pub mmio_write: u64,
    /// Userspace HLT exits.
    pub hlt: u64,
    /// Shutdowns (triple faults).
    pub shutdown: u64,
    /// System events.
    pub system_event: u64,
    /// Internal errors.
    pub internal_error: u64,
    /// Failed entries.
    pub fail_entry: u64,
    /// Returns without a guest exit (signal, immediate_exit, EAGAIN).
    pub intr: u64,
    /// Anything else, including KVM_RUN failing.
    pub other: u64,
}

impl ExitCounts {
    fn from_array(a: [u64; ExitKind::ALL.len()]) -> Self {
        let [io_in, io_out, mmio_read, mmio_write, hlt, shutdown, system_event, internal_error, fail_entry, intr, other] =
            a;
        ExitCounts {
            io_in,
            io_out,
            mmio_read,
            mmio_write,
            hlt,
            shutdown,
            system_event,
            internal_error,
            fail_entry,
            intr,
            other,
        }
    }

    /// The count of `kind`.
    pub fn get(&self, kind: ExitKind) -> u64 {
        match kind {
            ExitKind::IoIn => self.io_in,
            ExitKind::IoOut => self.io_out,
            ExitKind::MmioRead => self.mmio_read,
            ExitKind::MmioWrite => self.mmio_write,
            ExitKind::Hlt => self.hlt,
            ExitKind::Shutdown => self.shutdown,
            ExitKind::SystemEvent => self.system_event,
            ExitKind::InternalError => self.internal_error,
            ExitKind::FailEntry => self.fail_entry,
            ExitKind::Intr => self.intr,
            ExitKind::Other => self.other,
        }
    }

    /// (name, count) for every kind, in [`ExitKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ExitKind::ALL.iter().map(|k| (k.name(), self.get(*k)))
    }

    /// Every KVM_RUN return counted.
    pub fn total(&self) -> u64 {
        self.iter().fold(0, |sum, (_, n)| sum.wrapping_add(n))
    }
}

/// Counters as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CountersReport {
    /// Port accesses nobody answered (reads got all ones).
    pub unhandled_pio_accesses: u64,
    /// MMIO accesses nobody answered.
    pub unhandled_mmio_accesses: u64,
    /// vCPU exits by kind, summed over the vCPUs.
    pub exits: ExitCounts,
}

struct Inner {
    state: VmState,
    vcpu_threads: Vec<libc::pthread_t>,
    parked: usize,
}

/// Shared VM state.
pub struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
    vcpu_count: usize,
    /// Boot phase stamps.
    pub timings: BootTimings,
    /// VM-wide counters.
    pub counters: VmCounters,
}

impl Shared {
    /// State for a VM with `vcpu_count` vCPUs, timed from `timings`' start.
    pub fn new(vcpu_count: usize, timings: BootTimings) -> Self {
        Shared {
            inner: Mutex::new(Inner {
                state: VmState::Running,
                vcpu_threads: Vec::new(),
                parked: 0,
            }),
            changed: Condvar::new(),
            vcpu_count,
            timings,
            counters: VmCounters::new(vcpu_count),
        }
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpu_count
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking vCPU thread aborts the process (panic = "abort" in release); in debug
        // builds keep going with the data as it was.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by each vCPU thread before its first state check.
    pub fn register_vcpu_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().vcpu_threads.push(me);
    }

    /// What the calling vCPU should do.
    pub fn vcpu_control(&self) -> VcpuControl {
        match self.lock().state {
            VmState::Running => VcpuControl::Run,
            VmState::Paused => VcpuControl::Pause,
            VmState::Exited(_) => VcpuControl::Exit,
        }
    }

    /// Parks the calling vCPU until the VM is no longer paused.
    pub fn park_while_paused(&self) {
        let mut inner = self.lock();
        inner.parked += 1;
        self.changed.notify_all();
        while inner.state == VmState::Paused {
            inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        inner.parked -= 1;
    }

    fn kick_all(inner: &Inner) {
        for t in &inner.vcpu_threads {
            // SAFETY: the ids belong to vCPU threads that are joined only after the VM has
            // exited and this list is no longer used; the signal has a handler installed.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    /// Ends the VM with `reason` (the first reason wins) and kicks every vCPU out.
    pub fn finish(&self, reason: ExitReason) {
        let mut inner = self.lock();
        if matches!(inner.state, VmState::Exited(_)) {
            return;
        }
        self.timings.stamp(Phase::GuestExit);
        inner.state = VmState::Exited(reason);
        Self::kick_all(&inner);
        self.changed.notify_all();
    }

    /// Pauses the VM and waits until every vCPU is parked. Returns false if it had exited.
    pub fn pause(&self) -> bool {
        let mut inner = self.lock();
        match inner.state {
            VmState::Exited(_) => return false,
            VmState::Paused => return true,
            VmState::Running => inner.state = VmState::Paused,
        }
        Self::kick_all(&inner);
        while inner.parked < self.vcpu_count && inner.state == VmState::Paused {
            inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
            if inner.parked < self.vcpu_count {
                // A vCPU may have been between its state check and KVM_RUN: kick again.
                Self::kick_all(&inner);
            }
        }
        true
    }

    /// Resumes a paused VM. Returns false if it had exited.
    pub fn resume(&self) -> bool {
        let mut inner = self.lock();
        match inner.state {
            VmState::Exited(_) => false,
            _ => {
                inner.state = VmState::Running;
                self.changed.notify_all();
                true
            }
        }
    }

    /// Current state.
    pub fn state(&self) -> VmState {
        self.lock().state.clone()
    }

    /// Blocks until the VM has exited; returns why.
    pub fn wait_exit(&self) -> ExitReason {
        let mut inner = self.lock();
        loop {
            if let VmState::Exited(reason) = &inner.state {
                return reason.clone();
            }
            inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl ExitSink for Shared {
    fn request_exit(&self, req: GuestExitRequest) {
        self.finish(match req {
            GuestExitRequest::PowerOff => ExitReason::Poweroff,
            GuestExitRequest::Reset => ExitReason::Reset,
            GuestExitRequest::Panic => ExitReason::Panic,
            GuestExitRequest::DebugExit(value) => ExitReason::DebugExit { value },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_kinds_index_their_own_slot_and_name() {
        for (i, kind) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i, "{kind:?} is out of order in ALL");
        }
        let counters = VmCounters::new(2);
        // Kind i counted i + 1 times on vCPU 0 and once on vCPU 1.
        for (i, kind) in ExitKind::ALL.iter().enumerate() {
            for _ in 0..=i {
                counters.count_exit(0, *kind);
            }
            counters.count_exit(1, *kind);
        }
        counters.count_exit(2, ExitKind::Other); // no such vCPU: ignored
        let exits = counters.snapshot().exits;
        for (i, kind) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(exits.get(*kind), i as u64 + 2, "{kind:?}");
        }
        let json = serde_json::to_value(exits).unwrap();
        let object = json.as_object().unwrap();
        assert_eq!(object.len(), ExitKind::ALL.len());
        for (name, n) in exits.iter() {
            assert_eq!(object[name], n, "{name}");
        }
        let n = ExitKind::ALL.len() as u64;
        assert_eq!(exits.total(), n * (n + 1) / 2 + n);
    }
}
