//! No input makes the parser panic: valid images are truncated and mutated at every offset,
//! and whatever is accepted must still give plans whose segments lie inside the file.

mod common;

use common::*;
use images::{BootProtocol, KernelImage, MIN_LOAD_ADDR};

/// A valid image of every shape the parser knows.
fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let mut elf64 = ElfSpec::elf64().pvh_note(0x20_0010).section(".uk_inittab");
    elf64.early = multiboot_header(0x3, None);
    elf64.loads.push(Load {
        paddr: 0x40_0000,
        vaddr: 0xffff_ffff_8040_0000,
        data: pattern(0x40, 2),
        memsz: 0x800,
    });
    let mut aout = ElfSpec::elf32_multiboot();
    aout.early = multiboot_header(
        0x1_0003,
        Some([0x10_0034, 0x10_0000, 0, 0x10_8000, 0x10_0040]),
    );
    let mut pvh32 = ElfSpec::elf32_multiboot().pvh_note(0x20_0000);
    pvh32.note_place = NotePlace::SectionOnly;
    let mut bz = BzSpec::modern();
    bz.payload.truncate(0x240);
    vec![
        ("elf64", elf64.bytes()),
        ("elf32", ElfSpec::elf32_multiboot().bytes()),
        ("elf32-aout", aout.bytes()),
        ("elf32-pvh", pvh32.bytes()),
        ("bzimage", bz.bytes()),
    ]
}

/// Parses `bytes` and, if accepted, checks every plan's invariants. Returns whether accepted.
fn exercise(bytes: Vec<u8>) -> bool {
    let len = bytes.len();
    let Ok(img) = KernelImage::from_bytes(bytes) else {
        return false;
    };
    let _ = (img.format(), img.kind(), img.multiboot_header());
    assert!(!img.protocols().is_empty());
    assert_eq!(img.default_protocol(), img.protocols()[0]);
    for p in BootProtocol::ALL {
        let Ok(plan) = img.plan(p) else {
            assert!(!img.protocols().contains(&p));
            continue;
        };
        assert!(img.protocols().contains(&p));
        assert!(!plan.segments.is_empty());
        for s in &plan.segments {
            assert!(s.file_offset + s.file_size <= len);
            assert_eq!(img.segment_data(s).len(), s.file_size);
            assert!(s.mem_size >= s.file_size as u64);
            assert!(s.guest_addr >= MIN_LOAD_ADDR);
            assert!(s.guest_addr + s.mem_size <= plan.kernel_end);
        }
        assert!(plan
            .segments
            .iter()
            .any(|s| plan.entry >= s.guest_addr && plan.entry < s.guest_addr + s.mem_size));
        if let Some(h) = &plan.setup_header {
            assert!(h.len() <= 0x7B);
        }
    }
    true
}

#[test]
fn corpus_is_valid() {
    for (name, bytes) in corpus() {
        assert!(exercise(bytes), "{name} should parse");
    }
}

#[test]
fn every_truncation() {
    for (name, bytes) in corpus() {
        let mut accepted = 0;
        for len in 0..bytes.len() {
            if exercise(bytes[..len].to_vec()) {
                accepted += 1;
            }
        }
        // Most prefixes lose the section table, a segment or the payload.
        assert!(
            accepted < bytes.len() / 2,
            "{name}: {accepted} of {} prefixes accepted",
            bytes.len()
        );
    }
}

#[test]
fn every_byte_mutated() {
    for (name, bytes) in corpus() {
        let (mut accepted, mut rejected) = (0, 0);
        for off in 0..bytes.len() {
            for v in [
                0x00u8,
                0xFF,
                0x80,
                0x7F,
                bytes[off] ^ 0x01,
                bytes[off] ^ 0x10,
            ] {
                let mut m = bytes.clone();
                m[off] = v;
                if exercise(m) {
                    accepted += 1;
                } else {
                    rejected += 1;
                }
            }
        }
        // Most bytes are segment data: both outcomes must occur, or the harness is broken.
        assert!(
            accepted > 0 && rejected > 0,
            "{name}: {accepted} accepted, {rejected} rejected"
        );
    }
}

#[test]
fn boundary_words_in_headers() {
    let words: [u64; 8] = [
        0,
        1,
        0x7fff_ffff,
        0xffff_ffff,
        0x1_0000_0000,
        0x8000_0000_0000_0000,
        u64::MAX,
        u64::MAX - 7,
    ];
    for (_, bytes) in corpus() {
        // Headers, program headers and the bzImage setup header all live in the first 0x400
        // bytes; section headers at the end.
        let tail = bytes.len().saturating_sub(0x200);
        let offsets = (0..bytes.len().min(0x400)).chain(tail..bytes.len());
        for off in offsets {
            for w in words {
                for width in [2usize, 4, 8] {
                    if off + width > bytes.len() {
                        continue;
                    }
                    let mut m = bytes.clone();
                    m[off..off + width].copy_from_slice(&w.to_le_bytes()[..width]);
                    exercise(m);
                }
            }
        }
    }
}

#[test]
fn pseudo_random_multi_byte_mutations() {
    // xorshift64*: deterministic, no dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for (_, bytes) in corpus() {
        for _ in 0..3000 {
            let mut m = bytes.clone();
            let n = 1 + (next() % 8) as usize;
            for _ in 0..n {
                let off = (next() % m.len() as u64) as usize;
                m[off] = next() as u8;
            }
            if next() % 4 == 0 {
                let len = (next() % m.len() as u64) as usize;
                m.truncate(len);
            }
            exercise(m);
        }
    }
}

/// Writes the corpus as seeds for the fuzz target:
/// `EDGEVISOR_SEED_DIR=fuzz/corpus/from_bytes cargo test -p images --test robustness -- --ignored`.
#[test]
#[ignore = "a tool: writes the fuzz seed corpus to $EDGEVISOR_SEED_DIR"]
fn write_fuzz_seeds() {
    let dir = std::env::var("EDGEVISOR_SEED_DIR").expect("set EDGEVISOR_SEED_DIR");
    std::fs::create_dir_all(&dir).expect("create seed dir");
    for (name, bytes) in corpus() {
        std::fs::write(std::path::Path::new(&dir).join(name), bytes).expect("write seed");
    }
}

#[test]
fn many_overlapping_note_segments_stay_cheap() {
    // 60000 PT_NOTEs over the same 1 MiB of empty notes: without a bound on the notes walked
    // this is billions of steps.
    let built = ElfSpec::elf64().build();
    let mut b = built.bytes.clone();
    let notes_at = b.len();
    b.resize(notes_at + (1 << 20), 0);
    let phoff = b.len();
    b.extend_from_slice(&built.bytes[built.phoff..built.phoff + 56]); // the PT_LOAD
    let count = 60_000u16;
    for _ in 0..count {
        let mut ph = [0u8; 56];
        put32(&mut ph, 0, 4);
        put64(&mut ph, 8, notes_at as u64);
        put64(&mut ph, 32, 1 << 20);
        put64(&mut ph, 48, 4);
        b.extend_from_slice(&ph);
    }
    put64(&mut b, 32, phoff as u64);
    put16(&mut b, 56, count + 1);
    let img = KernelImage::from_bytes(b).unwrap();
    assert_eq!(img.protocols(), &[BootProtocol::Linux64]);
}
