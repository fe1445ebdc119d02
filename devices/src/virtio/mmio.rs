//! The virtio-mmio transport, "version 2" register layout (virtio 1.2, section 4.2.2).
//!
//! The guest's driver sees this register file at the device's MMIO window. Every write is
//! checked against the device-status state machine: features only before FEATURES_OK, queue
//! configuration only between FEATURES_OK and DRIVER_OK (frozen after), queues validated
//! (power-of-two size within the maximum, rings aligned and inside guest memory) before the
//! device is activated. A driver that breaks the rules gets DEVICE_NEEDS_RESET, not a
//! running device; accesses of the wrong size or to unknown registers are dropped and
//! counted in `transport_errors`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::counters::{bump, VirtioCounters};
use super::{features, Activation, Interrupt, Memory, VirtioDevice};
use crate::bus::BusDevice;
use crate::log::RateLimited;

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (where the VMM places each queue's ioeventfd).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Offset of the device-specific configuration space.
pub const CONFIG_OFFSET: u64 = 0x100;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// Vendor id reported to the guest ("EDGV").
pub const VENDOR_ID: u32 = 0x5647_4445;

/// The bits of the status register: the status is one byte.
const STATUS_BYTE: u32 = 0xff;

/// Device status bits.
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: the device may serve.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error the driver must reset it for.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

static LOG: RateLimited = RateLimited::new();

/// One virtio device's register file.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    name: &'static str,
    device_type: u32,
    offered: u64,
    mem: Memory,
    interrupt: Arc<Interrupt>,
    queue_events: Vec<Arc<EventFd>>,
    queues: Vec<Queue>,
    active: Arc<AtomicBool>,
    counters: Arc<VirtioCounters>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked: u64,
    queue_sel: u32,
    config_generation: u32,
    /// The driver wrote a queue size the device cannot take; DRIVER_OK will be refused.
    bad_queue_config: bool,
}

fn lock(device: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    match device.lock() {
        Ok(d) => d,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl MmioTransport {
    /// Wraps `device`; `interrupt_event` is the eventfd the VMM routes to the device's IRQ.
    /// Creates one kick eventfd per queue (see [`MmioTransport::queue_events`]).
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: Memory,
        interrupt_event: EventFd,
    ) -> std::io::Result<MmioTransport> {
        let (name, device_type, offered, sizes, counters) = {
            let d = lock(&device);
            (
                d.name(),
                d.device_type(),
                d.offered_features() | features::VERSION_1,
                d.queue_max_sizes().to_vec(),
                d.counters(),
            )
        };
        let mut queues = Vec::with_capacity(sizes.len());
        let mut queue_events = Vec::with_capacity(sizes.len());
        for max in sizes {
            let queue = Queue::new(max).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("the {name} device asked for a queue of {max} entries: {e}"),
                )
            })?;
            queues.push(queue);
            queue_events.push(Arc::new(EventFd::new(libc::EFD_NONBLOCK)?));
        }
        Ok(MmioTransport {
            device,
            name,
            device_type,
            offered,
            mem,
            interrupt: Arc::new(Interrupt::new(interrupt_event, counters.clone())),
            queue_events,
            queues,
            active: Arc::new(AtomicBool::new(false)),
            counters,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked: 0,
            queue_sel: 0,
            config_generation: 0,
            bad_queue_config: false,
        })
    }

    /// The kick eventfd of each queue, in queue order: the VMM registers each as an
    /// ioeventfd on QueueNotify with the queue index as data, and the event loop reads them.
    pub fn queue_events(&self) -> &[Arc<EventFd>] {
        &self.queue_events
    }

    /// The device's interrupt (its eventfd is what the VMM registers as an irqfd).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The device, shared with the event loop.
    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        self.device.clone()
    }

    /// True while the device is activated (between DRIVER_OK and reset).
    pub fn active_flag(&self) -> Arc<AtomicBool> {
        self.active.clone()
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<VirtioCounters> {
        self.counters.clone()
    }

    /// Device name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Device status as the driver last set it.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn queue_config_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0
    }

    fn refuse(&self, what: std::fmt::Arguments) {
        bump(&self.counters.transport_errors, 1);
        LOG.warn(format_args!("virtio-{}: {}", self.name, what));
    }

    fn read_register(&mut self, offset: u64) -> Option<u32> {
        Some(match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device_type,
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            0x34 => self
                .selected_queue()
                .map(|q| u32::from(q.max_size()))
                .unwrap_or(0),
            0x44 => self
                .selected_queue()
                .map(|q| u32::from(q.ready()))
                .unwrap_or(0),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => return None,
        })
    }

    fn write_register(&mut self, offset: u64, value: u32) -> bool {
        match offset {
            0x14 => self.device_features_sel = value,
            0x24 => self.driver_features_sel = value,
            0x20 => return self.write_driver_features(value),
            0x30 => self.queue_sel = value,
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                return self.write_queue_register(offset, value)
            }
            0x50 => return self.notify(value),
            0x64 => self.interrupt.acknowledge(value),
            0x70 => self.write_status(value),
            _ => return false,
        }
        true
    }

    fn write_driver_features(&mut self, value: u32) -> bool {
        if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
            return false;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            _ => return value == 0,
        };
        let mask = 0xffff_ffffu64 << shift;
        self.acked = (self.acked & !mask) | ((u64::from(value) << shift) & mask);
        true
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) -> bool {
        if !self.queue_config_allowed() {
            return false;
        }
        let Some(q) = self.selected_queue() else {
            return false;
        };
        match offset {
            0x38 => {
                let max = u32::from(q.max_size());
                if value == 0 || value > max || !value.is_power_of_two() {
                    self.bad_queue_config = true;
                    return false;
                }
                q.set_size(value as u16);
            }
            0x44 => q.set_ready(value == 1),
            0x80 | 0x84 => {
                let addr = with_half(q.desc_table(), offset == 0x84, value);
                if q.try_set_desc_table_address(GuestAddress(addr)).is_err() {
                    self.bad_queue_config = true;
                    return false;
                }
            }
            0x90 | 0x94 => {
                let addr = with_half(q.avail_ring(), offset == 0x94, value);
                if q.try_set_avail_ring_address(GuestAddress(addr)).is_err() {
                    self.bad_queue_config = true;
                    return false;
                }
            }
            0xa0 | 0xa4 => {
                let addr = with_half(q.used_ring(), offset == 0xa4, value);
                if q.try_set_used_ring_address(GuestAddress(addr)).is_err() {
                    self.bad_queue_config = true;
                    return false;
                }
            }
            _ => return false,
        }
        true
    }

    /// A QueueNotify write that reached us (no ioeventfd registered): kick the event loop.
    fn notify(&mut self, value: u32) -> bool {
        match self.queue_events.get(value as usize) {
            Some(event) => event.write(1).is_ok(),
            None => false,
        }
    }

    fn write_status(&mut self, value: u32) {
        // The status is one byte (QEMU also drops the rest), and DEVICE_NEEDS_RESET is the
        // device's to set: a driver's write cannot set it, and only a reset clears it.
        let value = value & STATUS_BYTE;
        if value == 0 {
            self.reset();
            return;
        }
        if self.status & status::DEVICE_NEEDS_RESET != 0 {
            // Only a reset gets the device out of this state: no feature or DRIVER_OK step
            // may bring up a device that is waiting for one.
            self.refuse(format_args!(
                "status {value:#x} written while DEVICE_NEEDS_RESET is set: only a reset (0) is accepted"
            ));
            return;
        }
        let value = value & !status::DEVICE_NEEDS_RESET;
        // Status bits only ever get added until a reset.
        let added = value & !self.status;
        if value & self.status != self.status {
            self.refuse(format_args!(
                "driver cleared status bits ({:#x} -> {value:#x}) without a reset",
                self.status
            ));
            return;
        }
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            // FEATURES_OK does not stick (the driver reads it back and gives up), and neither
            // does a DRIVER_OK written with it: no device runs without agreed features.
            self.status = value & !(status::FEATURES_OK | status::DRIVER_OK);
            return;
        }
        if added & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK == 0 {
            self.refuse(format_args!("DRIVER_OK before FEATURES_OK"));
            self.status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        self.status = value;
        if added & status::DRIVER_OK != 0 {
            self.activate();
        }
    }

    /// Acked features must be a subset of the offered ones and include VERSION_1.
    fn features_acceptable(&self) -> bool {
        let ok = self.acked & !self.offered == 0 && self.acked & features::VERSION_1 != 0;
        if !ok {
            self.refuse(format_args!(
                "driver accepted features {:#x}, offered {:#x} (VERSION_1 is required)",
                self.acked, self.offered
            ));
        }
        ok
    }

    fn activate(&mut self) {
        if self.bad_queue_config {
            self.refuse(format_args!(
                "a queue size or ring address was refused (size not a power of two within the maximum, or a misaligned ring)"
            ));
            self.needs_reset();
            return;
        }
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                self.refuse(format_args!(
                    "queue {i} is invalid (size {}, rings at {:#x}/{:#x}/{:#x}): not a power of two, misaligned or outside guest memory",
                    q.size(),
                    q.desc_table(),
                    q.avail_ring(),
                    q.used_ring()
                ));
                self.needs_reset();
                return;
            }
        }
        let event_idx = self.acked & features::RING_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            // A copy for the device: the transport keeps its own for reset and re-activation.
            match Queue::try_from(q.state()) {
                Ok(mut copy) => {
                    copy.set_event_idx(event_idx);
                    queues.push(copy);
                }
                Err(e) => {
                    self.refuse(format_args!("queue state rejected: {e}"));
                    self.needs_reset();
                    return;
                }
            }
        }
        // Shared, not duplicated: this runs on a vCPU thread, whose seccomp filter allows no
        // new descriptors.
        let queue_events = self.queue_events.clone();
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            acked_features: self.acked,
            interrupt: self.interrupt.clone(),
            queue_events,
        };
        let result = lock(&self.device).activate(activation);
        match result {
            Ok(()) => self.active.store(true, Ordering::SeqCst),
            Err(e) => {
                LOG.warn(format_args!("{e}"));
                self.needs_reset();
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.signal_config_change();
    }

    fn reset(&mut self) {
        if self.active.swap(false, Ordering::SeqCst) {
            lock(&self.device).reset();
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.clear();
        self.status = 0;
        self.acked = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.bad_queue_config = false;
    }
}

/// `current` with its low (or high) 32 bits replaced by `value`.
fn with_half(current: u64, high: bool, value: u32) -> u64 {
    if high {
        (current & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (current & !0xffff_ffff) | u64::from(value)
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let value = if data.len() == 4 && offset % 4 == 0 {
            self.read_register(offset)
        } else {
            None
        };
        match value {
            Some(v) => data.copy_from_slice(&v.to_le_bytes()),
            None => {
                data.fill(0);
                self.refuse(format_args!(
                    "unserved {}-byte read at register {offset:#x}",
                    data.len()
                ));
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let served = match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(bytes)),
            _ => false,
        };
        if !served {
            self.refuse(format_args!(
                "refused {}-byte write at register {offset:#x} in status {:#x}",
                data.len(),
                self.status
            ));
        }
    }
}
