//! What the virtio fuzz targets share: a cursor over the fuzz input, guest memory whose
//! regions are fenced by inaccessible guard pages, and a split virtqueue laid out in that
//! memory from the input.
//!
//! The guard pages are the "never touches memory outside the regions" oracle: every region
//! is mapped read-write inside a larger `PROT_NONE` reservation, so an access one byte past
//! a region (or into the hole between two regions that are adjacent in guest-physical
//! space) faults, and libFuzzer reports the fault as a crash.

use std::sync::OnceLock;

use virtio_queue::{Queue, QueueT};
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// Guest memory as the devices see it.
pub type Memory = GuestMemoryMmap;

/// Reads the fuzz input front to back; once it runs out, every read yields zeroes.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    /// Bytes not consumed yet.
    pub fn remaining(&self) -> usize {
        self.data.len()
    }

    /// Up to `n` bytes (fewer when the input ends).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.bytes(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// Largest region the layouts use.
pub const MAX_REGION: usize = 1 << 20;
/// Smallest region, and the step between region sizes.
pub const REGION_STEP: usize = 64 << 10;
/// Inaccessible bytes before, between and after the host mappings of the regions.
const GUARD: usize = 64 << 10;
/// Regions a layout has at most.
const MAX_REGIONS: usize = 2;
const RESERVATION: usize = GUARD + MAX_REGIONS * (MAX_REGION + GUARD);

/// Where the guest's RAM is: one or two regions, `(guest address, size)`, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemLayout {
    /// The regions.
    pub regions: Vec<(u64, usize)>,
}

impl MemLayout {
    /// Two bytes of input: the first region is 64 KiB to 1 MiB at guest address 0 or 4 GiB;
    /// a second one (64 KiB to 1 MiB) may follow, right after the first (adjacent in guest
    /// space, separate on the host), after a hole, or at the very top of the address space.
    pub fn from_input(input: &mut Input) -> MemLayout {
        let a = input.u8();
        let b = input.u8();
        let size1 = REGION_STEP * (1 + usize::from(a & 0x0f));
        let base1 = if a & 0x20 != 0 { 1u64 << 32 } else { 0 };
        let mut regions = vec![(base1, size1)];
        if a & 0x10 != 0 {
            let size2 = REGION_STEP * (1 + usize::from(b & 0x0f));
            let end1 = base1 + size1 as u64;
            let base2 = match b >> 4 & 3 {
                0 => end1,
                1 => end1 + 0x1000,
                2 => end1 + (1 << 20),
                // The last page-aligned base whose region still ends below 2^64.
                _ => (u64::MAX - size2 as u64) & !0xfff,
            };
            regions.push((base2, size2));
        }
        MemLayout { regions }
    }

    /// Whether `addr..addr+len` lies inside one region.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        self.regions.iter().any(|&(base, size)| {
            addr >= base
                && (addr - base)
                    .checked_add(len)
                    .is_some_and(|end| end <= size as u64)
        })
    }

    /// Builds the memory: fresh zeroed regions fenced by guard pages. The previous memory a
    /// caller built must be dropped by now (its mappings are reused).
    pub fn build(&self) -> Memory {
        let base = reservation();
        // SAFETY: `base..base+RESERVATION` is our own anonymous mapping (see `reservation`),
        // never unmapped; changing its protection and dropping its pages affects nothing else.
        unsafe {
            let rc = libc::mprotect(base.cast(), RESERVATION, libc::PROT_NONE);
            assert_eq!(
                rc, 0,
                "mprotect(PROT_NONE) on the guest-memory reservation failed"
            );
            let rc = libc::madvise(base.cast(), RESERVATION, libc::MADV_DONTNEED);
            assert_eq!(
                rc, 0,
                "madvise(MADV_DONTNEED) on the guest-memory reservation failed"
            );
        }
        assert!(self.regions.len() <= MAX_REGIONS);
        let regions = self
            .regions
            .iter()
            .enumerate()
            .map(|(i, &(gpa, size))| {
                assert!(size <= MAX_REGION && size % 4096 == 0);
                // SAFETY: slot `i` of the reservation: `GUARD + i * (MAX_REGION + GUARD)`
                // plus at most MAX_REGION bytes stays inside it, and is followed by PROT_NONE.
                let host = unsafe { base.add(GUARD + i * (MAX_REGION + GUARD)) };
                // SAFETY: `host..host+size` lies inside our reservation (above).
                let rc = unsafe {
                    libc::mprotect(host.cast(), size, libc::PROT_READ | libc::PROT_WRITE)
                };
                assert_eq!(
                    rc, 0,
                    "mprotect(PROT_READ|PROT_WRITE) of a guest region failed"
                );
                // SAFETY: `host..host+size` is part of a live private anonymous mapping that
                // is never unmapped, now readable and writable (checked above).
                let mapping = unsafe {
                    MmapRegion::build_raw(
                        host,
                        size,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    )
                }
                .expect("wrapping a guest region");
                GuestRegionMmap::new(mapping, GuestAddress(gpa)).expect("region fits below 2^64")
            })
            .collect();
        GuestMemoryMmap::from_regions(regions).expect("valid region layout")
    }
}

/// The process-wide PROT_NONE reservation the regions are carved from.
fn reservation() -> *mut u8 {
    static BASE: OnceLock<usize> = OnceLock::new();
    *BASE.get_or_init(|| {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choice; no memory
        // of ours is involved.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RESERVATION,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "reserving guest memory failed");
        p as usize
    }) as *mut u8
}

/// Virtqueue flags.
pub const F_NEXT: u16 = 1;
/// Device-writable buffer.
pub const F_WRITE: u16 = 2;
/// Indirect table (never offered).
pub const F_INDIRECT: u16 = 4;

/// How a queue is configured, as the driver would program it.
#[derive(Debug, Clone)]
pub struct RingSpec {
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    /// QueueReady.
    pub ready: bool,
    /// VIRTIO_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Where the device's avail and used counters start (as after earlier traffic).
    pub next_avail: u16,
    /// See `next_avail`.
    pub next_used: u16,
}

impl RingSpec {
    /// Reads a queue configuration: mostly rings laid out tidily inside a region, sometimes
    /// anywhere at all (the transport and virtio-queue must then refuse it).
    pub fn from_input(input: &mut Input, layout: &MemLayout, max: u16) -> RingSpec {
        let ctl = input.u8();
        let size = if ctl & 0x80 != 0 {
            input.u16()
        } else {
            (1u16 << (input.u8() % 9)).min(max)
        };
        let ready = ctl & 0x0f != 0x0f;
        let event_idx = ctl & 0x10 != 0;
        let next_avail = if ctl & 0x20 != 0 { input.u16() } else { 0 };
        let next_used = if ctl & 0x20 != 0 { input.u16() } else { 0 };
        let (desc, avail, used) = if ctl & 0x40 != 0 {
            (input.u64(), input.u64(), input.u64())
        } else {
            let sel = input.u8();
            let (base, region) = layout.regions[usize::from(sel & 1) % layout.regions.len()];
            // Wrapping: a region may end at the top of the address space.
            let desc = base.wrapping_add((u64::from(input.u16()) * 16) % region as u64);
            let n = u64::from(size);
            let avail = desc.wrapping_add(16 * n);
            let used = avail.wrapping_add(6 + 2 * n + 3) & !3;
            if sel & 2 != 0 {
                // Rings in another order, possibly overlapping each other.
                let shift = u64::from(input.u16()) * 2;
                (
                    used,
                    desc.wrapping_add(shift),
                    avail.wrapping_add(shift) & !3,
                )
            } else {
                (desc, avail, used)
            }
        };
        RingSpec {
            size,
            desc,
            avail,
            used,
            ready,
            event_idx,
            next_avail,
            next_used,
        }
    }

    /// The queue as the transport would hand it to a device, or `None` where the transport
    /// refuses the configuration (size, alignment, rings outside memory).
    pub fn queue(&self, mem: &Memory, max: u16) -> Option<Queue> {
        let mut q = Queue::new(max).ok()?;
        q.try_set_size(self.size).ok()?;
        q.try_set_desc_table_address(GuestAddress(self.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .ok()?;
        q.try_set_used_ring_address(GuestAddress(self.used)).ok()?;
        q.set_ready(self.ready);
        if self.ready && !q.is_valid(mem) {
            return None;
        }
        q.set_event_idx(self.event_idx);
        q.set_next_avail(self.next_avail);
        q.set_next_used(self.next_used);
        Some(q)
    }

    /// Bytes of the descriptor table, the available ring and the used ring (with their
    /// event fields): `(start, len)` each.
    pub fn ring_areas(&self) -> [(u64, u64); 3] {
        let n = u64::from(self.size);
        [
            (self.desc, 16 * n),
            (self.avail, 6 + 2 * n),
            (self.used, 6 + 8 * n),
        ]
    }

    /// Puts input bytes at the start of the buffers of the first few descriptors (a request
    /// header, a frame): the device reads them, and without this they would all be zero.
    fn fill_buffers(&self, mem: &Memory, input: &mut Input) {
        let n = input.u8() % 4;
        for i in 0..u16::from(n) {
            let Ok(addr) = mem.read_obj::<u64>(at(self.desc, 16 * u64::from(i))) else {
                continue;
            };
            let len = usize::from(input.u8() % 32);
            let bytes = input.bytes(len);
            let _ = mem.write_slice(bytes, GuestAddress(u64::from_le(addr)));
        }
    }

    /// Writes descriptors and available-ring entries from the input (see
    /// [`write_descriptor`]) and the start of their buffers; returns how many chains were
    /// made available.
    pub fn fill(&self, mem: &Memory, layout: &MemLayout, input: &mut Input) -> u16 {
        let size = self.size.max(1);
        let descs = u16::from(input.u8()).min(size);
        for i in 0..descs {
            write_descriptor(mem, layout, self.desc, i, input);
        }
        // Buffer contents before the rings, so that the rings end up as described even
        // when a buffer overlaps them.
        self.fill_buffers(mem, input);
        let ctl = input.u8();
        // Usually at most the queue size, sometimes more (an index the device must refuse).
        let count = if ctl & 0x80 != 0 {
            input.u16()
        } else {
            u16::from(input.u8()).min(size)
        };
        let raw_heads = ctl & 0x40 != 0;
        for k in 0..count.min(size) {
            let head = if raw_heads {
                input.u16()
            } else {
                u16::from(input.u8()) % size
            };
            let slot = u64::from(self.next_avail.wrapping_add(k) % size);
            let _ = mem.write_obj(head.to_le(), at(self.avail, 4 + 2 * slot));
        }
        // The used index as the device left it after earlier traffic.
        let _ = mem.write_obj(self.next_used.to_le(), at(self.used, 2));
        let avail_idx = self.next_avail.wrapping_add(count);
        let _ = mem.write_obj(avail_idx.to_le(), at(self.avail, 2));
        // used_event, for VIRTIO_F_EVENT_IDX.
        let used_event = input.u16();
        let _ = mem.write_obj(used_event.to_le(), at(self.avail, 4 + 2 * u64::from(size)));
        count
    }
}

/// Writes descriptor `index` of the table at `table` from the input. A control byte picks
/// the flags and the encoding: usually a buffer somewhere in (or just past) a region and a
/// small `next`, sometimes every field raw.
pub fn write_descriptor(
    mem: &Memory,
    layout: &MemLayout,
    table: u64,
    index: u16,
    input: &mut Input,
) {
    let ctl = input.u8();
    let (addr, len, flags, next) = if ctl & 0x08 != 0 {
        (input.u64(), input.u32(), input.u16(), input.u16())
    } else {
        let (base, size) = layout.regions[usize::from(ctl >> 4 & 1) % layout.regions.len()];
        let addr = base.wrapping_add(u64::from(input.u32()) % (size as u64 + 0x100));
        let len = if ctl & 0x20 != 0 {
            input.u32()
        } else {
            u32::from(input.u16())
        };
        (addr, len, u16::from(ctl & 7), u16::from(input.u8()))
    };
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    if let Some(at) = table.checked_add(16 * u64::from(index)) {
        let _ = mem.write_slice(&raw, GuestAddress(at));
    }
}

/// `base + offset`, wrapping at the top of the address space (the access then fails).
pub fn at(base: u64, offset: u64) -> GuestAddress {
    GuestAddress(base.wrapping_add(offset))
}

/// Whether `a..a+alen` and `b..b+blen` share a byte.
pub fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    alen != 0 && blen != 0 && a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

/// The used-ring entries `(id, len)` the device added since `next_used`, when the used
/// ring can be read.
pub fn used_entries(mem: &Memory, spec: &RingSpec, next_used: u16) -> Vec<(u32, u32)> {
    let used = GuestAddress(spec.used);
    let Ok(idx) = mem.read_obj::<u16>(at(used.0, 2)) else {
        return Vec::new();
    };
    let idx = u16::from_le(idx);
    let mut out = Vec::new();
    let mut next = next_used;
    while next != idx && out.len() <= usize::from(spec.size) {
        let slot = u64::from(next % spec.size.max(1));
        let elem = at(used.0, 4 + 8 * slot);
        let id = mem
            .read_obj::<u32>(elem)
            .map(u32::from_le)
            .unwrap_or(u32::MAX);
        let len = mem
            .read_obj::<u32>(at(elem.0, 4))
            .map(u32::from_le)
            .unwrap_or(u32::MAX);
        out.push((id, len));
        next = next.wrapping_add(1);
    }
    out
}
