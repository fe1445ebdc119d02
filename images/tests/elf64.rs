//! ELF64 images: Linux 64-bit entry, PVH note, multiboot as an extra, and the checks.

mod common;

use common::*;
use images::{BootProtocol, ImageError, ImageFormat, KernelImage, Segment};

fn image(spec: &ElfSpec) -> KernelImage {
    KernelImage::from_bytes(spec.bytes()).expect("valid test image")
}

fn error(bytes: Vec<u8>) -> ImageError {
    KernelImage::from_bytes(bytes).expect_err("image should be rejected")
}

#[test]
fn linux_style_vmlinux_translates_virtual_entry_and_loads_at_paddr() {
    let mut spec = ElfSpec::elf64();
    spec.loads = vec![
        Load {
            paddr: 0x100_0000,
            vaddr: 0xffff_ffff_8100_0000,
            data: pattern(0x400, 1),
            memsz: 0x400,
        },
        Load {
            paddr: 0x100_1000,
            vaddr: 0xffff_ffff_8100_1000,
            data: pattern(0x80, 2),
            memsz: 0x2000,
        },
    ];
    spec.entry = 0xffff_ffff_8100_0123;
    let built = spec.build();
    let img = KernelImage::from_bytes(built.bytes.clone()).unwrap();
    assert_eq!(img.format(), ImageFormat::Elf64);
    assert_eq!(img.protocols(), &[BootProtocol::Linux64]);
    assert_eq!(img.default_protocol(), BootProtocol::Linux64);
    let plan = img.plan(BootProtocol::Linux64).unwrap();
    assert_eq!(plan.protocol, BootProtocol::Linux64);
    assert_eq!(plan.entry, 0x100_0123);
    assert_eq!(
        plan.segments,
        vec![
            Segment {
                guest_addr: 0x100_0000,
                file_offset: built.load_offsets[0],
                file_size: 0x400,
                mem_size: 0x400
            },
            Segment {
                guest_addr: 0x100_1000,
                file_offset: built.load_offsets[1],
                file_size: 0x80,
                mem_size: 0x2000
            },
        ]
    );
    assert_eq!(plan.kernel_end, 0x100_3000);
    assert_eq!(plan.setup_header, None);
    assert_eq!(plan.setup, None);
    assert_eq!(img.segment_data(&plan.segments[0]), &spec.loads[0].data[..]);
    assert_eq!(img.segment_data(&plan.segments[1]), &spec.loads[1].data[..]);
    assert_eq!(img.bytes(), &built.bytes[..]);
}

#[test]
fn physical_entry_is_kept() {
    let mut spec = ElfSpec::elf64();
    spec.entry = 0x20_0010;
    assert_eq!(
        image(&spec).plan(BootProtocol::Linux64).unwrap().entry,
        0x20_0010
    );
}

#[test]
fn pvh_note_in_pt_note_is_offered_first() {
    let spec = ElfSpec::elf64().pvh_note(0x20_0040);
    let img = image(&spec);
    assert_eq!(img.protocols(), &[BootProtocol::Pvh, BootProtocol::Linux64]);
    assert_eq!(img.default_protocol(), BootProtocol::Pvh);
    let pvh = img.plan(BootProtocol::Pvh).unwrap();
    assert_eq!(pvh.entry, 0x20_0040);
    let linux = img.plan(BootProtocol::Linux64).unwrap();
    assert_eq!(linux.entry, 0x20_0000);
    assert_eq!(pvh.segments, linux.segments);
}

#[test]
fn pvh_note_with_8_byte_value_and_other_notes_before_it() {
    let mut spec = ElfSpec::elf64();
    spec.notes.push((b"GNU\0".to_vec(), 3, vec![0xAB; 20]));
    spec.notes
        .push((b"Xen\0".to_vec(), 18, 0x20_0080u64.to_le_bytes().to_vec()));
    assert_eq!(
        image(&spec).plan(BootProtocol::Pvh).unwrap().entry,
        0x20_0080
    );
}

#[test]
fn pvh_note_found_in_sections_when_no_pt_note() {
    let mut spec = ElfSpec::elf64().pvh_note(0x20_0100);
    spec.note_place = NotePlace::SectionOnly;
    let img = image(&spec);
    assert_eq!(img.default_protocol(), BootProtocol::Pvh);
    assert_eq!(img.plan(BootProtocol::Pvh).unwrap().entry, 0x20_0100);
    // Without section headers the note is gone.
    spec.no_sections = true;
    assert_eq!(image(&spec).protocols(), &[BootProtocol::Linux64]);
}

#[test]
fn other_xen_notes_do_not_offer_pvh() {
    let mut spec = ElfSpec::elf64();
    spec.notes
        .push((b"Xen\0".to_vec(), 1, 0x20_0000u32.to_le_bytes().to_vec()));
    spec.notes
        .push((b"Xe\0".to_vec(), 18, 0x20_0000u32.to_le_bytes().to_vec()));
    assert_eq!(image(&spec).protocols(), &[BootProtocol::Linux64]);
}

#[test]
fn pvh_note_with_bad_value_is_rejected() {
    let mut spec = ElfSpec::elf64();
    spec.notes.push((b"Xen\0".to_vec(), 18, vec![0; 2]));
    let e = error(spec.bytes());
    assert!(matches!(e, ImageError::BadPvhNote { .. }), "{e}");
    assert!(e.to_string().contains("XEN_ELFNOTE_PHYS32_ENTRY"), "{e}");
}

#[test]
fn pvh_entry_outside_segments_is_rejected() {
    let e = error(ElfSpec::elf64().pvh_note(0x30_0000).bytes());
    assert!(
        matches!(
            e,
            ImageError::EntryOutsideSegments {
                protocol: BootProtocol::Pvh,
                entry: 0x30_0000
            }
        ),
        "{e}"
    );
}

#[test]
fn entry_outside_every_segment_is_rejected() {
    let mut spec = ElfSpec::elf64();
    spec.entry = 0xffff_ffff_8100_0000;
    let e = error(spec.bytes());
    assert!(
        matches!(
            e,
            ImageError::EntryOutsideSegments {
                protocol: BootProtocol::Linux64,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn zero_size_pt_load_is_skipped() {
    let mut spec = ElfSpec::elf64();
    spec.loads.push(Load {
        paddr: 0,
        vaddr: 0,
        data: Vec::new(),
        memsz: 0,
    });
    let plan = image(&spec).plan(BootProtocol::Linux64).unwrap();
    assert_eq!(plan.segments.len(), 1);
    assert_eq!(plan.segments[0].guest_addr, 0x20_0000);
}

#[test]
fn only_empty_pt_loads_is_rejected() {
    let mut spec = ElfSpec::elf64();
    spec.loads[0].data.clear();
    spec.loads[0].memsz = 0;
    assert!(matches!(
        error(spec.bytes()),
        ImageError::BadProgramHeaders { .. }
    ));
}

#[test]
fn bss_counts_towards_kernel_end() {
    let mut spec = ElfSpec::elf64();
    spec.loads[0].memsz = 0x10_0000;
    let plan = image(&spec).plan(BootProtocol::Linux64).unwrap();
    assert_eq!(plan.segments[0].file_size, 0x300);
    assert_eq!(plan.segments[0].mem_size, 0x10_0000);
    assert_eq!(plan.kernel_end, 0x30_0000);
}

#[test]
fn filesz_larger_than_memsz_is_rejected() {
    let mut spec = ElfSpec::elf64();
    spec.loads[0].memsz = 0x100;
    let e = error(spec.bytes());
    assert!(matches!(e, ImageError::BadSegment { index: 0, .. }), "{e}");
}

#[test]
fn segment_data_outside_the_file_is_truncation() {
    let built = ElfSpec::elf64().build();
    let mut b = built.bytes.clone();
    // p_offset of the first PT_LOAD points past the end.
    let past = (b.len() - 0x10) as u64;
    put64(&mut b, built.phoff + 8, past);
    let e = error(b);
    assert!(matches!(e, ImageError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("PT_LOAD program header 0"), "{e}");

    // A huge p_filesz with a matching p_memsz.
    let mut b = built.bytes.clone();
    put64(&mut b, built.phoff + 32, u64::MAX - 4);
    put64(&mut b, built.phoff + 40, u64::MAX - 4);
    assert!(matches!(
        error(b),
        ImageError::BadSegment { .. } | ImageError::Truncated { .. }
    ));
}

#[test]
fn segment_wrapping_the_address_space_is_rejected() {
    let mut spec = ElfSpec::elf64();
    spec.loads[0].paddr = u64::MAX - 0x10;
    spec.loads[0].vaddr = u64::MAX - 0x10;
    spec.entry = u64::MAX - 0x10;
    let e = error(spec.bytes());
    assert!(matches!(e, ImageError::BadSegment { index: 0, .. }), "{e}");
}

#[test]
fn segments_below_1mib_are_rejected() {
    let mut spec = ElfSpec::elf64();
    spec.loads.insert(0, Load::at(0xF_FF00, pattern(0x200, 3)));
    let e = error(spec.bytes());
    assert!(
        matches!(
            e,
            ImageError::SegmentBelow1MiB {
                start: 0xF_FF00,
                end: 0x10_0100
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("1 MiB"), "{e}");
}

#[test]
fn overlapping_segments_are_rejected() {
    let mut spec = ElfSpec::elf64();
    spec.loads.push(Load::at(0x20_0200, pattern(0x200, 4)));
    let e = error(spec.bytes());
    assert!(
        matches!(
            e,
            ImageError::SegmentsOverlap {
                a_start: 0x20_0000,
                a_end: 0x20_0300,
                b_start: 0x20_0200,
                b_end: 0x20_0400
            }
        ),
        "{e}"
    );
    // Touching is fine.
    let mut spec = ElfSpec::elf64();
    spec.loads.push(Load::at(0x20_0300, pattern(0x200, 4)));
    assert_eq!(
        image(&spec).plan(BootProtocol::Linux64).unwrap().kernel_end,
        0x20_0500
    );
}

#[test]
fn pvh_cannot_reach_above_4gib() {
    let mut spec = ElfSpec::elf64().pvh_note(0x20_0000);
    spec.loads.push(Load::at(0xFFFF_F000, pattern(0x2000, 5)));
    let e = error(spec.bytes());
    assert!(
        matches!(
            e,
            ImageError::Above4GiB {
                protocol: BootProtocol::Pvh,
                end: 0x1_0000_1000
            }
        ),
        "{e}"
    );
    // The same segments are fine for the 64-bit entry.
    spec.notes.clear();
    assert_eq!(
        image(&spec).plan(BootProtocol::Linux64).unwrap().kernel_end,
        0x1_0000_1000
    );
}

#[test]
fn wrong_machine_type_or_class_is_rejected() {
    let mut spec = ElfSpec::elf64();
    spec.machine = 183;
    let e = error(spec.bytes());
    assert!(
        matches!(e, ImageError::WrongMachine { e_machine: 183, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("AArch64"), "{e}");

    let mut spec = ElfSpec::elf64();
    spec.machine = EM_386;
    assert!(matches!(
        error(spec.bytes()),
        ImageError::WrongMachine { bits: 64, .. }
    ));

    let mut spec = ElfSpec::elf64();
    spec.e_type = 3;
    let e = error(spec.bytes());
    assert!(
        matches!(e, ImageError::NotExecutable { e_type: 3, .. }),
        "{e}"
    );

    let mut b = ElfSpec::elf64().bytes();
    b[5] = 2;
    let e = error(b);
    assert!(e.to_string().contains("big-endian"), "{e}");

    let mut b = ElfSpec::elf64().bytes();
    b[4] = 3;
    assert!(matches!(
        error(b),
        ImageError::UnsupportedElf { what: "class", .. }
    ));
}

#[test]
fn truncation_names_the_part() {
    let built = ElfSpec::elf64().build();
    let cases = [
        (5, "ELF identification"),
        (40, "ELF header"),
        (built.shoff + 10, "section header table"),
    ];
    for (len, part) in cases {
        let e = error(built.bytes[..len].to_vec());
        assert!(matches!(e, ImageError::Truncated { .. }), "{len}: {e}");
        assert!(e.to_string().contains(part), "{len}: {e}");
    }
    // Program header table beyond the end.
    let mut b = built.bytes.clone();
    let past = b.len() as u64 - 8;
    put64(&mut b, 32, past);
    let e = error(b);
    assert!(e.to_string().contains("program header table"), "{e}");
}

#[test]
fn no_program_headers_is_rejected() {
    let mut b = ElfSpec::elf64().bytes();
    put16(&mut b, 56, 0);
    assert!(matches!(error(b), ImageError::BadProgramHeaders { .. }));
}

#[test]
fn multiboot_header_in_elf64_is_offered_last() {
    let mut spec = ElfSpec::elf64();
    spec.early = multiboot_header(0x3, None);
    let img = image(&spec);
    assert_eq!(
        img.protocols(),
        &[BootProtocol::Linux64, BootProtocol::Multiboot]
    );
    assert_eq!(img.default_protocol(), BootProtocol::Linux64);
    let mb = img.plan(BootProtocol::Multiboot).unwrap();
    assert_eq!(mb.entry, 0x20_0000);
    assert_eq!(
        mb.segments,
        img.plan(BootProtocol::Linux64).unwrap().segments
    );
    let h = img.multiboot_header().unwrap();
    assert_eq!((h.flags, h.header_offset), (0x3, 64));

    let spec = spec.pvh_note(0x20_0004);
    assert_eq!(
        image(&spec).protocols(),
        &[
            BootProtocol::Pvh,
            BootProtocol::Linux64,
            BootProtocol::Multiboot
        ]
    );
}

#[test]
fn unusable_multiboot_header_in_elf64_only_removes_multiboot() {
    let mut spec = ElfSpec::elf64();
    spec.early = multiboot_header(0x3 | 0x10, None);
    let img = image(&spec);
    assert_eq!(img.protocols(), &[BootProtocol::Linux64]);
    assert!(img.multiboot_header().is_none());
    let e = img.plan(BootProtocol::Multiboot).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::ProtocolNotOffered {
                requested: BootProtocol::Multiboot,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("0x10"), "{e}");
    assert!(e.to_string().contains("linux64"), "{e}");
}

#[test]
fn protocol_not_offered_names_what_is() {
    let img = image(&ElfSpec::elf64());
    let e = img.plan(BootProtocol::Pvh).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::ProtocolNotOffered {
                requested: BootProtocol::Pvh,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("pvh") && msg.contains("linux64") && msg.contains("PHYS32_ENTRY"),
        "{msg}"
    );
    assert!(img.plan(BootProtocol::Multiboot).is_err());
}
