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

/// Why KVM_RUN returned to the VMM, as counted (names are the `reason` label of the agent's
/// `edgevisor_vm_exits_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// A port write (serial output, debug exit, PCI config).
    IoOut,
    /// A port read.
    IoIn,
    /// An MMIO write (virtio-mmio registers, PL011).
    MmioWrite,
    /// An MMIO read.
    MmioRead,
    /// A halt KVM did not handle.
    Hlt,
    /// A triple fault.
    Shutdown,
    /// KVM could not run or emulate the guest.
    InternalError,
    /// VM entry failed.
    FailEntry,
    /// Power off, reset or crash from the guest (PSCI on arm64).
    SystemEvent,
    /// A signal interrupted KVM_RUN (pause, stop).
    Interrupted,
    /// Anything else.
    Other,
}

impl ExitKind {
    /// Every kind, in report order.
    pub const ALL: [ExitKind; 11] = [
        ExitKind::IoOut,
        ExitKind::IoIn,
        ExitKind::MmioWrite,
        ExitKind::MmioRead,
        ExitKind::Hlt,
        ExitKind::Shutdown,
        ExitKind::InternalError,
        ExitKind::FailEntry,
        ExitKind::SystemEvent,
        ExitKind::Interrupted,
        ExitKind::Other,
    ];

    /// The kind's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::IoOut => "io_out",
            ExitKind::IoIn => "io_in",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::Hlt => "hlt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::InternalError => "internal_error",
            ExitKind::FailEntry => "fail_entry",
            ExitKind::SystemEvent => "system_event",
            ExitKind::Interrupted => "interrupted",
            ExitKind::Other => "other",
        }
    }
}

/// VM-wide counters.
#[derive(Debug, Default)]
pub struct VmCounters {
    unhandled_pio: AtomicU64,
    unhandled_mmio: AtomicU64,
    /// vCPU exits, indexed like [`ExitKind::ALL`] (all vCPUs together).
    exits: [AtomicU64; ExitKind::ALL.len()],
}

impl VmCounters {
    /// A port access nobody answered.
    pub fn count_unhandled_pio(&self) {
        self.unhandled_pio.fetch_add(1, Ordering::Relaxed);
    }
    /// An MMIO access nobody answered.
    pub fn count_unhandled_mmio(&self) {
        self.unhandled_mmio.fetch_add(1, Ordering::Relaxed);
    }
    /// One vCPU exit of `kind`.
    pub fn count_exit(&self, kind: ExitKind) {
        self.exits[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
    /// Snapshot.
    pub fn snapshot(&self) -> CountersReport {
        CountersReport {
            unhandled_pio_accesses: self.unhandled_pio.load(Ordering::Relaxed),
            unhandled_mmio_accesses: self.unhandled_mmio.load(Ordering::Relaxed),
            exits: ExitKind::ALL
                .iter()
                .map(|k| (k.name(), self.exits[*k as usize].load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// Counters as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountersReport {
    /// Port accesses nobody answered (reads got all ones).
    pub unhandled_pio_accesses: u64,
    /// MMIO accesses nobody answered.
    pub unhandled_mmio_accesses: u64,
    /// vCPU exits by kind ([`ExitKind::name`]), every kind present.
    pub exits: std::collections::BTreeMap<&'static str, u64>,
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
            counters: VmCounters::default(),
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
