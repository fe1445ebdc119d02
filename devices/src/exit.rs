//! How devices ask the VMM to end the VM.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use vmm_sys_util::eventfd::EventFd;

/// Why the guest wants the VM to end (see "Exit codes" in `docs/GUEST_INTERFACE.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestExitRequest {
    /// ACPI PM1a_CNT write with SLP_EN set.
    PowerOff,
    /// i8042 reset line pulsed (command 0xFE on port 0x64).
    Reset,
    /// pvpanic write with bit 0 (PANICKED) set.
    Panic,
    /// isa-debug-exit byte write; the VMM exits with `(V << 1) | 1`.
    DebugExit(u8),
}

/// Receives exit requests from devices. Called on a vCPU thread with the device's lock
/// held, so implementations should only record the request and wake whoever stops the VM.
pub trait ExitSink: Send + Sync {
    /// The guest asked for the VM to end.
    fn request_exit(&self, req: GuestExitRequest);
}

/// An [`ExitSink`] that keeps the first request (the one that decides the exit code),
/// counts all of them, and optionally signals an `EventFd` so an event loop wakes up.
#[derive(Debug, Default)]
pub struct ExitLatch {
    first: OnceLock<GuestExitRequest>,
    requests: AtomicU64,
    wake: Option<EventFd>,
}

impl ExitLatch {
    /// A latch nobody is woken by; poll [`ExitLatch::first`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A latch that writes 1 to `wake` on every request.
    pub fn with_wake(wake: EventFd) -> Self {
        Self {
            wake: Some(wake),
            ..Self::default()
        }
    }

    /// The first request made, if any.
    pub fn first(&self) -> Option<GuestExitRequest> {
        self.first.get().copied()
    }

    /// How many requests were made in all.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl ExitSink for ExitLatch {
    fn request_exit(&self, req: GuestExitRequest) {
        // Only the first request counts; later ones (a guest that keeps writing) are tallied.
        let _ = self.first.set(req);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(wake) = &self.wake {
            // A full eventfd counter already means "wake up", so a failed write loses nothing.
            let _ = wake.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn latch_keeps_the_first_request_and_counts_all() {
        let latch = ExitLatch::new();
        assert_eq!(latch.first(), None);
        latch.request_exit(GuestExitRequest::DebugExit(3));
        latch.request_exit(GuestExitRequest::PowerOff);
        assert_eq!(latch.first(), Some(GuestExitRequest::DebugExit(3)));
        assert_eq!(latch.requests(), 2);
    }

    #[test]
    fn latch_wakes_its_eventfd() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let latch = ExitLatch::with_wake(evt.try_clone().unwrap());
        assert!(evt.read().is_err(), "nothing signalled yet");
        latch.request_exit(GuestExitRequest::Reset);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
