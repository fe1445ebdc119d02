//! Descriptor chains with every guest-controlled value checked.
//!
//! virtio-queue handles the available and used rings; the descriptor table is walked here,
//! because a chain is refused as a whole when any of these does not hold:
//! * every index (head and `next`) is below the queue size;
//! * the chain has at most queue-size descriptors (so a loop ends as an error);
//! * no descriptor is indirect (we never offer VIRTIO_F_INDIRECT_DESC);
//! * every buffer lies inside one guest memory region (`addr + len` neither wraps nor crosses
//!   into a hole or another mapping: the CVE-2019-18960 class);
//! * device-readable descriptors come before device-writable ones;
//! * the total length fits in 32 bits.
//!
//! A refused chain goes back to the used ring with length 0 ([`QueueHandler::complete`]) and
//! is counted; the queue keeps serving.

use std::num::Wrapping;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, VolatileSlice,
};

use super::Memory;

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// One descriptor as it sits in the guest's table (virtio 1.2, 2.7.5).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct RawDescriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

// SAFETY: plain old data of fixed layout with no padding (8 + 4 + 2 + 2 bytes); any byte
// pattern is a valid value.
unsafe impl ByteValued for RawDescriptor {}

/// A buffer of a chain, checked to lie inside one memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A head or `next` index is not below the queue size.
    #[error("descriptor index {index} is outside a queue of size {size}")]
    IndexOutOfRange {
        /// The index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// More descriptors than the queue holds: a loop or a runaway chain.
    #[error("descriptor chain is longer than the queue ({size} descriptors): a loop")]
    TooLong {
        /// The queue size.
        size: u16,
    },
    /// An indirect descriptor, which we never offered.
    #[error("indirect descriptor at index {index}, but VIRTIO_F_INDIRECT_DESC was not offered")]
    Indirect {
        /// The index.
        index: u16,
    },
    /// A buffer outside guest RAM or across two regions.
    #[error("buffer {addr:#x}+{len:#x} is not inside one guest memory region")]
    OutsideMemory {
        /// Start address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A device-readable descriptor after a device-writable one.
    #[error("device-readable descriptor at index {index} after a device-writable one")]
    ReadableAfterWritable {
        /// The index.
        index: u16,
    },
    /// The chain adds up to 4 GiB or more.
    #[error("descriptor chain is 4 GiB or longer")]
    TooLarge,
    /// The descriptor table itself cannot be read.
    #[error("descriptor table entry {index} is outside guest memory")]
    TableUnreadable {
        /// The index.
        index: u16,
    },
    /// A buffer could not be read or written.
    #[error("guest memory access failed at {addr:#x}")]
    Access {
        /// Address.
        addr: u64,
    },
}

/// A validated descriptor chain: readable segments, then writable ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescriptorChainView {
    /// Index of the head descriptor (what goes back to the used ring).
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Segment>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Segment>,
}

fn total(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

/// Checks that `addr..addr+len` is inside one region of `mem`.
pub fn check_segment(mem: &Memory, addr: u64, len: u32) -> Result<Segment, ChainError> {
    let outside = ChainError::OutsideMemory { addr, len };
    let region = mem.find_region(GuestAddress(addr)).ok_or(outside.clone())?;
    let offset = addr - region.start_addr().raw_value();
    let end = offset.checked_add(u64::from(len)).ok_or(outside.clone())?;
    if end > region.len() {
        return Err(outside);
    }
    Ok(Segment {
        addr: GuestAddress(addr),
        len,
    })
}

impl DescriptorChainView {
    /// Walks the chain starting at `head` in the table at `table` of a queue of `size`.
    pub fn walk(
        mem: &Memory,
        table: GuestAddress,
        size: u16,
        head: u16,
    ) -> Result<Self, ChainError> {
        let mut view = DescriptorChainView {
            head,
            ..Default::default()
        };
        let mut index = head;
        let mut sum: u64 = 0;
        for _ in 0..size {
            if index >= size {
                return Err(ChainError::IndexOutOfRange { index, size });
            }
            let at = table
                .checked_add(u64::from(index) * 16)
                .ok_or(ChainError::TableUnreadable { index })?;
            let desc: RawDescriptor = mem
                .read_obj(at)
                .map_err(|_| ChainError::TableUnreadable { index })?;
            let (addr, len, flags) = (
                u64::from_le(desc.addr),
                u32::from_le(desc.len),
                u16::from_le(desc.flags),
            );
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                return Err(ChainError::Indirect { index });
            }
            sum += u64::from(len);
            if sum > u64::from(u32::MAX) {
                return Err(ChainError::TooLarge);
            }
            let segment = check_segment(mem, addr, len)?;
            if flags & VIRTQ_DESC_F_WRITE != 0 {
                view.writable.push(segment);
            } else if view.writable.is_empty() {
                view.readable.push(segment);
            } else {
                return Err(ChainError::ReadableAfterWritable { index });
            }
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(view);
            }
            index = u16::from_le(desc.next);
        }
        Err(ChainError::TooLong { size })
    }

    /// Total device-readable bytes.
    pub fn readable_len(&self) -> u64 {
        total(&self.readable)
    }

    /// Total device-writable bytes.
    pub fn writable_len(&self) -> u64 {
        total(&self.writable)
    }

    /// Copies readable bytes starting `skip` bytes into the chain into `buf`; returns how
    /// many were copied (less than `buf.len()` when the chain ends first).
    pub fn read_at(&self, mem: &Memory, skip: u64, buf: &mut [u8]) -> Result<usize, ChainError> {
        copy_segments(&self.readable, skip, buf.len(), |addr, from, n| {
            mem.read_slice(&mut buf[from..from + n], addr)
        })
    }

    /// Copies `data` into the writable buffers starting `skip` bytes in; returns how many
    /// bytes fitted.
    pub fn write_at(&self, mem: &Memory, skip: u64, data: &[u8]) -> Result<usize, ChainError> {
        copy_segments(&self.writable, skip, data.len(), |addr, from, n| {
            mem.write_slice(&data[from..from + n], addr)
        })
    }

    /// The writable buffers from `skip` on, as volatile slices of guest memory (for
    /// readv-style I/O straight into the guest).
    pub fn writable_slices<'m>(
        &self,
        mem: &'m Memory,
        skip: u64,
    ) -> Result<Vec<VolatileSlice<'m, ()>>, ChainError> {
        slices(mem, &self.writable, skip)
    }

    /// The readable buffers from `skip` on, as volatile slices (for writev-style I/O).
    pub fn readable_slices<'m>(
        &self,
        mem: &'m Memory,
        skip: u64,
    ) -> Result<Vec<VolatileSlice<'m, ()>>, ChainError> {
        slices(mem, &self.readable, skip)
    }
}

fn slices<'m>(
    mem: &'m Memory,
    segments: &[Segment],
    mut skip: u64,
) -> Result<Vec<VolatileSlice<'m, ()>>, ChainError> {
    let mut out = Vec::with_capacity(segments.len());
    for s in segments {
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let addr = s.addr.unchecked_add(skip);
        let n = (len - skip) as usize;
        skip = 0;
        let slice = mem
            .get_slice(addr, n)
            .map_err(|_| ChainError::Access { addr: addr.0 })?;
        out.push(slice);
    }
    Ok(out)
}

/// Walks `segments`, skipping `skip` bytes, calling `copy(addr, offset_in_buffer, n)` for
/// each piece until `want` bytes are done or the segments end.
fn copy_segments<E>(
    segments: &[Segment],
    mut skip: u64,
    want: usize,
    mut copy: impl FnMut(GuestAddress, usize, usize) -> Result<(), E>,
) -> Result<usize, ChainError> {
    let mut done = 0usize;
    for s in segments {
        if done == want {
            break;
        }
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let addr = s.addr.unchecked_add(skip);
        let n = ((len - skip) as usize).min(want - done);
        skip = 0;
        copy(addr, done, n).map_err(|_| ChainError::Access { addr: addr.0 })?;
        done += n;
    }
    Ok(done)
}

/// One queue of an active device, with its memory.
pub struct QueueHandler {
    /// The queue (rings configured by the driver, validated by the transport).
    pub queue: Queue,
}

/// What [`QueueHandler::pop`] found.
#[derive(Debug)]
pub enum Popped {
    /// A well-formed chain.
    Chain(DescriptorChainView),
    /// A malformed chain, already returned to the used ring with length 0 when its head
    /// index allowed it.
    Malformed(ChainError),
}

impl QueueHandler {
    /// Wraps a queue.
    pub fn new(queue: Queue) -> QueueHandler {
        QueueHandler { queue }
    }

    /// The next available chain, validated; `None` when the ring is empty (or its index is
    /// garbage, which stops this queue until the driver resets it).
    pub fn pop(&mut self, mem: &Memory) -> Option<Popped> {
        let chain = self.queue.pop_descriptor_chain(mem)?;
        let head = chain.head_index();
        let table = GuestAddress(self.queue.desc_table());
        let size = self.queue.size();
        Some(match DescriptorChainView::walk(mem, table, size, head) {
            Ok(view) => Popped::Chain(view),
            Err(e) => {
                if head < size {
                    let _ = self.queue.add_used(mem, head, 0);
                }
                Popped::Malformed(e)
            }
        })
    }

    /// Returns a chain to the used ring with `len` bytes written.
    pub fn complete(&mut self, mem: &Memory, head: u16, len: u32) -> Result<(), ChainError> {
        self.queue
            .add_used(mem, head, len)
            .map_err(|_| ChainError::IndexOutOfRange {
                index: head,
                size: self.queue.size(),
            })
    }

    /// Puts the last popped chain back (a device that could not serve it yet, e.g. RX with
    /// no frame pending, will pop it again later).
    pub fn undo_pop(&mut self) {
        self.queue.go_to_previous_position();
    }

    /// Re-enables kicks after the ring was drained: with VIRTIO_F_EVENT_IDX this publishes
    /// `avail_event`, without which a driver stops kicking after its first request. Returns
    /// true when more chains arrived meanwhile and [`QueueHandler::pop`] can serve them.
    /// False also when the queue cannot deliver anything whatever its index says (not
    /// ready, or an available index more than a ring ahead of ours: garbage that stops the
    /// queue until the driver resets it), so a caller that loops while this is true ends.
    /// Devices drain their queues with [`QueueHandler::pop_or_enable`], which calls it.
    pub fn enable_notification(&mut self, mem: &Memory) -> bool {
        if !self.queue.enable_notification(mem).unwrap_or(false) {
            return false;
        }
        // `iter` refuses exactly the states in which popping yields nothing: a queue not
        // ready (or reset) and an index too far ahead.
        self.queue.iter(mem).is_ok()
    }

    /// The next chain to serve; when the ring looks empty, re-enables kicks and looks once
    /// more (a chain may have arrived meanwhile). `None` means the device is done until the
    /// next kick. Never spins: a ring that still yields nothing after kicks are re-enabled
    /// ends the drain, whatever the guest wrote into its index.
    pub fn pop_or_enable(&mut self, mem: &Memory) -> Option<Popped> {
        if let Some(popped) = self.pop(mem) {
            return Some(popped);
        }
        if self.enable_notification(mem) {
            self.pop(mem)
        } else {
            None
        }
    }

    /// Whether the driver wants an interrupt for what was just completed (event-idx aware).
    pub fn needs_notification(&mut self, mem: &Memory) -> bool {
        self.queue.needs_notification(mem).unwrap_or(true)
    }

    /// Chains the driver has made available and we have not popped yet.
    pub fn pending(&self, mem: &Memory) -> u16 {
        self.queue
            .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
            .map(|idx| (idx - Wrapping(self.queue.next_avail())).0)
            .unwrap_or(0)
    }
}

/// The one queue of a request/response device (block, rng) while it is active.
pub struct RequestQueue {
    /// Guest memory.
    pub mem: Memory,
    /// The queue.
    pub queue: QueueHandler,
    /// The device's interrupt.
    pub interrupt: std::sync::Arc<super::Interrupt>,
}

impl RequestQueue {
    /// Takes the first queue of `activation`.
    pub fn from_activation(
        activation: super::Activation,
        device: &'static str,
    ) -> Result<RequestQueue, super::ActivateError> {
        let queue = activation
            .queues
            .into_iter()
            .next()
            .ok_or_else(|| super::ActivateError {
                device,
                detail: "the transport gave no queue".into(),
            })?;
        Ok(RequestQueue {
            mem: activation.mem,
            queue: QueueHandler::new(queue),
            interrupt: activation.interrupt,
        })
    }

    /// Serves every available chain with `serve`, which returns the used length. Malformed
    /// chains are counted and logged (through `log`) and go back empty; kicks are re-enabled
    /// once the ring is drained, and the guest is interrupted if it asked to be.
    pub fn drain(
        &mut self,
        counters: &super::VirtioCounters,
        log: &crate::log::RateLimited,
        device: &str,
        mut serve: impl FnMut(&Memory, &DescriptorChainView) -> u32,
    ) {
        let bump = super::counters::bump;
        let mut completed = false;
        while let Some(popped) = self.queue.pop_or_enable(&self.mem) {
            completed = true;
            let chain = match popped {
                Popped::Chain(chain) => chain,
                Popped::Malformed(e) => {
                    bump(&counters.malformed_chains, 1);
                    log.warn(format_args!(
                        "virtio-{device}: malformed chain refused: {e}"
                    ));
                    continue;
                }
            };
            let used = serve(&self.mem, &chain);
            if self.queue.complete(&self.mem, chain.head, used).is_err() {
                bump(&counters.malformed_chains, 1);
            }
        }
        if completed && self.queue.needs_notification(&self.mem) {
            self.interrupt.signal_used_queue();
        }
    }
}
