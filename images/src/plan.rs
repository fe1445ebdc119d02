//! Turning parsed images into [`LoadPlan`]s, and the checks every plan passes.

use crate::bytes::to_usize;
use crate::elf::Elf;
use crate::{BootProtocol, ImageError, LoadPlan, Segment};

/// Lowest guest-physical address a kernel may occupy: below it live the VMM's boot structures.
pub const MIN_LOAD_ADDR: u64 = 0x10_0000;
/// First address a 32-bit entry (paging off) cannot reach.
const FOUR_GIB: u64 = 1 << 32;

/// The PT_LOAD segments of `elf` (a file of `file_len` bytes) at their physical addresses,
/// without the empty ones.
pub(crate) fn elf_segments(elf: &Elf, file_len: usize) -> Result<Vec<Segment>, ImageError> {
    let mut segments = Vec::new();
    for p in elf.loads() {
        let bad = |problem: String| ImageError::BadSegment {
            index: p.index,
            problem,
        };
        if p.filesz > p.memsz {
            return Err(bad(format!(
                "its file size {:#x} is larger than its memory size {:#x}",
                p.filesz, p.memsz
            )));
        }
        if p.memsz == 0 {
            continue;
        }
        if p.paddr.checked_add(p.memsz).is_none() {
            return Err(bad(format!(
                "{:#x} bytes at physical address {:#x} run past the end of the address space",
                p.memsz, p.paddr
            )));
        }
        let in_file = to_usize(p.offset)
            .zip(to_usize(p.filesz))
            .filter(|(o, s)| o.checked_add(*s).is_some_and(|end| end <= file_len));
        let Some((file_offset, file_size)) = in_file else {
            return Err(ImageError::truncated(
                format!(
                    "PT_LOAD program header {} data ({:#x} bytes at file offset {:#x})",
                    p.index, p.filesz, p.offset
                ),
                file_len,
            ));
        };
        segments.push(Segment {
            guest_addr: p.paddr,
            file_offset,
            file_size,
            mem_size: p.memsz,
        });
    }
    if segments.is_empty() {
        return Err(ImageError::BadProgramHeaders {
            problem: "no non-empty loadable (PT_LOAD) segments".into(),
        });
    }
    Ok(segments)
}

/// The physical entry point for ELF's `e_entry`: kept if it lies in a loaded segment,
/// otherwise translated from virtual to physical through the PT_LOAD whose virtual range
/// holds it (Linux links `e_entry` at 0xffffffff8..., GRUB does the same translation).
pub(crate) fn elf_entry(elf: &Elf, segments: &[Segment]) -> u64 {
    let e = elf.entry;
    if segments.iter().any(|s| contains(s, e)) {
        return e;
    }
    elf.loads()
        .filter(|p| p.memsz != 0)
        .find(|p| e >= p.vaddr && e - p.vaddr < p.memsz)
        .and_then(|p| p.paddr.checked_add(e - p.vaddr))
        .unwrap_or(e)
}

fn contains(s: &Segment, addr: u64) -> bool {
    addr >= s.guest_addr && addr - s.guest_addr < s.mem_size
}

fn end(s: &Segment) -> u64 {
    // ELF segments were checked not to overflow; bzImage and multiboot ones are 32-bit sized.
    s.guest_addr.saturating_add(s.mem_size)
}

/// Checks `segments` and `entry` for `protocol` and assembles the plan.
pub(crate) fn finish(
    protocol: BootProtocol,
    entry: u64,
    segments: Vec<Segment>,
) -> Result<LoadPlan, ImageError> {
    let mut sorted: Vec<&Segment> = segments.iter().collect();
    sorted.sort_by_key(|s| s.guest_addr);
    for s in &sorted {
        if s.guest_addr < MIN_LOAD_ADDR {
            return Err(ImageError::SegmentBelow1MiB {
                start: s.guest_addr,
                end: end(s),
            });
        }
    }
    for pair in sorted.windows(2) {
        if let [a, b] = pair {
            if end(a) > b.guest_addr {
                return Err(ImageError::SegmentsOverlap {
                    a_start: a.guest_addr,
                    a_end: end(a),
                    b_start: b.guest_addr,
                    b_end: end(b),
                });
            }
        }
    }
    let kernel_end = sorted.iter().map(|s| end(s)).max().unwrap_or(MIN_LOAD_ADDR);
    if matches!(protocol, BootProtocol::Pvh | BootProtocol::Multiboot) && kernel_end > FOUR_GIB {
        return Err(ImageError::Above4GiB {
            protocol,
            end: kernel_end,
        });
    }
    if !segments.iter().any(|s| contains(s, entry)) {
        return Err(ImageError::EntryOutsideSegments { protocol, entry });
    }
    Ok(LoadPlan {
        protocol,
        entry,
        segments,
        kernel_end,
        setup_header: None,
        setup: None,
    })
}
