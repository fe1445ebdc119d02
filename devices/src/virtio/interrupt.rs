//! The interrupt line of a virtio-mmio device: an eventfd the VMM routes to a GSI with
//! irqfd, and the InterruptStatus bits the driver reads and acknowledges.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::counters::{bump, VirtioCounters};

/// InterruptStatus bit: a queue's used ring was updated.
pub const INT_USED_RING: u32 = 1;
/// InterruptStatus bit: the configuration space changed.
pub const INT_CONFIG: u32 = 2;

/// One device's interrupt.
#[derive(Debug)]
pub struct Interrupt {
    event: EventFd,
    status: AtomicU32,
    counters: Arc<VirtioCounters>,
}

impl Interrupt {
    /// An interrupt signalled through `event` (the VMM registers it as an irqfd).
    pub fn new(event: EventFd, counters: Arc<VirtioCounters>) -> Interrupt {
        Interrupt {
            event,
            status: AtomicU32::new(0),
            counters,
        }
    }

    /// The eventfd, for the VMM to register.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        match self.event.write(1) {
            Ok(()) => bump(&self.counters.interrupts, 1),
            Err(_) => bump(&self.counters.interrupt_errors, 1),
        }
    }

    /// Tells the driver a used ring changed.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// Tells the driver the configuration space changed.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG);
    }

    /// InterruptStatus as the driver reads it.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the bits the driver acknowledged.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every bit (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}
