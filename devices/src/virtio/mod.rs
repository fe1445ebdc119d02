//! Virtio devices over the virtio-mmio transport (virtio 1.x, "version 2" register layout).
//!
//! * [`VirtioDevice`]: what a device (net, block, vsock, rng) implements. It knows nothing of
//!   KVM or of the transport: it gets guest memory, its queues and an [`Interrupt`] when the
//!   driver sets DRIVER_OK ([`VirtioDevice::activate`]), and is told about kicks and back-end
//!   readiness by the event loop.
//! * [`mmio::MmioTransport`]: the register file a guest sees at the device's MMIO window, a
//!   [`crate::BusDevice`]. It holds the device behind an `Arc<Mutex<..>>` that it shares with
//!   the event loop.
//! * [`queue`]: popping descriptor chains with every guest-controlled value checked
//!   ([`queue::DescriptorChainView`]), and returning them to the used ring.
//! * [`event_loop::DeviceSubscriber`]: the event-manager subscriber that drains a device's
//!   queue-kick eventfds (registered by the VMM as ioeventfds) and forwards back-end events.
//!
//! Threading: vCPU threads only touch the transport's registers (config-space exits); queue
//! work runs on the event-loop thread, which locks the device per event.

pub mod block;
pub mod counters;
pub mod event_loop;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod rng;
pub mod tap;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

pub use counters::{VirtioCounterSnapshot, VirtioCounters};
pub use interrupt::Interrupt;
pub use mmio::MmioTransport;

/// Guest memory as devices see it: a cheap clone sharing the VMM's mappings.
pub type Memory = GuestMemoryMmap;

/// Device types (virtio 1.2, section 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// Feature bits shared by every device (virtio 1.2, section 6).
pub mod features {
    /// The device speaks virtio 1.x (required by the v2 MMIO transport).
    pub const VERSION_1: u64 = 1 << 32;
    /// Descriptors may point to indirect tables (we do not offer it).
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// used_event / avail_event suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
}

/// First `data` value a device may use for its own back-end events in the event loop; values
/// below it are the queue indexes of kick events.
pub const BACKEND_EVENT_BASE: u32 = 0x100;

/// What [`VirtioDevice::activate`] hands a device.
pub struct Activation {
    /// Guest memory.
    pub mem: Memory,
    /// The queues, configured and validated by the transport, in queue-index order.
    pub queues: Vec<Queue>,
    /// Features the driver accepted (a subset of what the device offered).
    pub acked_features: u64,
    /// How to interrupt the guest.
    pub interrupt: Arc<Interrupt>,
    /// Each queue's kick eventfd (what KVM signals on QueueNotify). Only devices whose
    /// [`VirtioDevice::handles_kicks_itself`] is true use these, e.g. to hand them to a
    /// vhost-user back end.
    pub queue_events: Vec<Arc<vmm_sys_util::eventfd::EventFd>>,
}

/// Why a device refused to start.
#[derive(Debug, thiserror::Error)]
#[error("the virtio {device} device could not start: {detail}")]
pub struct ActivateError {
    /// Which device.
    pub device: &'static str,
    /// What went wrong.
    pub detail: String,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// Virtio device type ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Short name for counters and logs ("net", "block", ...).
    fn name(&self) -> &'static str;
    /// Maximum size of each queue; the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered (must include [`features::VERSION_1`]).
    fn offered_features(&self) -> u64;
    /// Reads the device-specific configuration space at `offset`; bytes past its end read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (most devices ignore writes).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: start serving. Called once per reset cycle.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver reset the device: stop serving and drop the queues. The device may be
    /// activated again afterwards.
    fn reset(&mut self);
    /// The guest kicked queue `index` (the eventfd is already drained). Only called while
    /// active.
    fn queue_notified(&mut self, index: usize);
    /// Back-end descriptors to watch from the start: (fd, data >= [`BACKEND_EVENT_BASE`],
    /// events). Devices may add or remove more later through `ops`.
    fn backend_events(&self) -> Vec<(RawFd, u32, event_manager::EventSet)> {
        Vec::new()
    }
    /// A back-end event fired. `ops` lets the device change its registrations.
    fn backend_event(&mut self, _events: Events, _ops: &mut EventOps) {}
    /// Counters shared with the VMM.
    fn counters(&self) -> Arc<VirtioCounters>;
    /// True when the device consumes its queue kicks itself (a vhost back end reads the
    /// kick eventfds from [`Activation::queue_events`]); the event loop then leaves them
    /// alone and never calls [`VirtioDevice::queue_notified`].
    fn handles_kicks_itself(&self) -> bool {
        false
    }
}
