//! Counters every virtio device keeps, read by the VMM (and the agent's metrics) while the
//! guest runs. Every field only ever grows.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one virtio device.
#[derive(Debug, Default)]
pub struct VirtioCounters {
    /// Queue kicks (ioeventfd wake-ups) served.
    pub kicks: AtomicU64,
    /// Interrupts raised towards the guest.
    pub interrupts: AtomicU64,
    /// Requests completed (block requests, rng requests, vsock packets).
    pub requests: AtomicU64,
    /// Frames or packets the guest sent (net TX).
    pub tx_packets: AtomicU64,
    /// Bytes the guest sent out through the device.
    pub tx_bytes: AtomicU64,
    /// Frames or packets delivered to the guest (net RX).
    pub rx_packets: AtomicU64,
    /// Bytes delivered to the guest.
    pub rx_bytes: AtomicU64,
    /// Block: bytes read from the image.
    pub read_bytes: AtomicU64,
    /// Block: bytes written to the image.
    pub write_bytes: AtomicU64,
    /// Block: flushes that reached fsync.
    pub flushes: AtomicU64,
    /// Descriptor chains refused as malformed (returned with length 0).
    pub malformed_chains: AtomicU64,
    /// Requests the device does not support (answered with UNSUPP or dropped).
    pub unsupported_requests: AtomicU64,
    /// Host-side I/O errors (file, TAP, socket).
    pub io_errors: AtomicU64,
    /// Input dropped because the guest had no buffer for it.
    pub dropped_no_buffer: AtomicU64,
    /// Interrupts that could not be raised (eventfd write failed).
    pub interrupt_errors: AtomicU64,
    /// Guest accesses to the transport it does not serve (bad offset, size or state).
    pub transport_errors: AtomicU64,
}

/// A copy of [`VirtioCounters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[allow(missing_docs)]
pub struct VirtioCounterSnapshot {
    pub kicks: u64,
    pub interrupts: u64,
    pub requests: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub flushes: u64,
    pub malformed_chains: u64,
    pub unsupported_requests: u64,
    pub io_errors: u64,
    pub dropped_no_buffer: u64,
    pub interrupt_errors: u64,
    pub transport_errors: u64,
}

/// Adds `by` to a counter.
pub fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl VirtioCounters {
    /// Reads every counter.
    pub fn snapshot(&self) -> VirtioCounterSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VirtioCounterSnapshot {
            kicks: r(&self.kicks),
            interrupts: r(&self.interrupts),
            requests: r(&self.requests),
            tx_packets: r(&self.tx_packets),
            tx_bytes: r(&self.tx_bytes),
            rx_packets: r(&self.rx_packets),
            rx_bytes: r(&self.rx_bytes),
            read_bytes: r(&self.read_bytes),
            write_bytes: r(&self.write_bytes),
            flushes: r(&self.flushes),
            malformed_chains: r(&self.malformed_chains),
            unsupported_requests: r(&self.unsupported_requests),
            io_errors: r(&self.io_errors),
            dropped_no_buffer: r(&self.dropped_no_buffer),
            interrupt_errors: r(&self.interrupt_errors),
            transport_errors: r(&self.transport_errors),
        }
    }
}
