//! ELF32 images: multiboot v1 (by program headers or by the header's address fields) and PVH.

mod common;

use common::*;
use images::{BootProtocol, ImageError, ImageFormat, ImageKind, KernelImage, Segment};

fn error(bytes: Vec<u8>) -> ImageError {
    KernelImage::from_bytes(bytes).expect_err("image should be rejected")
}

#[test]
fn multiboot_elf32_loads_by_program_headers() {
    let mut spec = ElfSpec::elf32_multiboot();
    spec.loads.push(Load {
        paddr: 0x30_0000,
        vaddr: 0x30_0000,
        data: pattern(0x40, 9),
        memsz: 0x1000,
    });
    spec.entry = 0x20_0020;
    let built = spec.build();
    let img = KernelImage::from_bytes(built.bytes.clone()).unwrap();
    assert_eq!(img.format(), ImageFormat::Elf32);
    assert_eq!(img.protocols(), &[BootProtocol::Multiboot]);
    assert_eq!(img.default_protocol(), BootProtocol::Multiboot);
    let h = img.multiboot_header().unwrap();
    assert_eq!((h.flags, h.header_offset, h.addresses), (0x3, 0x34, None));
    let plan = img.plan(BootProtocol::Multiboot).unwrap();
    assert_eq!(plan.entry, 0x20_0020);
    assert_eq!(
        plan.segments,
        vec![
            Segment {
                guest_addr: 0x20_0000,
                file_offset: built.load_offsets[0],
                file_size: 0x300,
                mem_size: 0x300
            },
            Segment {
                guest_addr: 0x30_0000,
                file_offset: built.load_offsets[1],
                file_size: 0x40,
                mem_size: 0x1000
            },
        ]
    );
    assert_eq!(plan.kernel_end, 0x30_1000);
    assert_eq!(img.segment_data(&plan.segments[1]), &spec.loads[1].data[..]);
    for p in [BootProtocol::Linux64, BootProtocol::Pvh] {
        let e = img.plan(p).unwrap_err();
        assert!(matches!(e, ImageError::ProtocolNotOffered { .. }), "{e}");
        assert!(e.to_string().contains("multiboot"), "{e}");
    }
}

#[test]
fn higher_half_entry_is_translated_like_grub() {
    let mut spec = ElfSpec::elf32_multiboot();
    spec.loads[0].vaddr = 0xC020_0000;
    spec.entry = 0xC020_0010;
    let img = KernelImage::from_bytes(spec.bytes()).unwrap();
    assert_eq!(img.plan(BootProtocol::Multiboot).unwrap().entry, 0x20_0010);
}

#[test]
fn address_fields_load_a_range_of_the_file() {
    // The whole file goes to 0x100000, so the header (at file offset 0x34) is at 0x100034.
    let mut spec = ElfSpec::elf32_multiboot();
    // Measure the file with a header of the final size.
    spec.early = multiboot_header(0x1_0003, Some([0; 5]));
    let probe_len = spec.bytes().len() as u32;
    let load_end = 0x10_0000 + probe_len;
    spec.early = multiboot_header(
        0x1_0003,
        Some([0x10_0034, 0x10_0000, load_end, load_end + 0x5000, 0x10_0100]),
    );
    let bytes = spec.bytes();
    assert_eq!(bytes.len() as u32, probe_len, "builder layout changed");
    let img = KernelImage::from_bytes(bytes.clone()).unwrap();
    assert_eq!(img.protocols(), &[BootProtocol::Multiboot]);
    let a = img.multiboot_header().unwrap().addresses.unwrap();
    assert_eq!(a.entry_addr, 0x10_0100);
    let plan = img.plan(BootProtocol::Multiboot).unwrap();
    assert_eq!(plan.entry, 0x10_0100);
    assert_eq!(
        plan.segments,
        vec![Segment {
            guest_addr: 0x10_0000,
            file_offset: 0,
            file_size: bytes.len(),
            mem_size: bytes.len() as u64 + 0x5000
        }]
    );
    assert_eq!(plan.kernel_end, u64::from(load_end) + 0x5000);
    assert_eq!(img.segment_data(&plan.segments[0]), &bytes[..]);
}

#[test]
fn address_fields_starting_mid_file_and_loading_to_eof() {
    // Load from file offset 0x20 (0x14 bytes before the header) to the end of the file.
    let mut spec = ElfSpec::elf32_multiboot();
    spec.early = multiboot_header(0x1_0000, Some([0x40_0014, 0x40_0000, 0, 0, 0x40_0020]));
    let bytes = spec.bytes();
    let img = KernelImage::from_bytes(bytes.clone()).unwrap();
    let plan = img.plan(BootProtocol::Multiboot).unwrap();
    let seg = plan.segments[0];
    assert_eq!((seg.guest_addr, seg.file_offset), (0x40_0000, 0x20));
    assert_eq!(seg.file_size, bytes.len() - 0x20);
    assert_eq!(seg.mem_size, seg.file_size as u64);
    assert_eq!(img.segment_data(&seg), &bytes[0x20..]);
}

#[test]
fn inconsistent_address_fields_are_rejected() {
    let cases = [
        // load_addr above header_addr
        [0x10_0034, 0x10_0100, 0, 0, 0x10_0100],
        // loading would start before the file
        [0x10_0034, 0x0F_0000, 0, 0, 0x10_0000],
        // load_end_addr past the end of the file
        [0x10_0034, 0x10_0000, 0x20_0000, 0, 0x10_0000],
        // bss ends before the data
        [0x10_0034, 0x10_0000, 0x10_0100, 0x10_0080, 0x10_0000],
    ];
    for fields in cases {
        let mut spec = ElfSpec::elf32_multiboot();
        spec.early = multiboot_header(0x1_0000, Some(fields));
        let e = error(spec.bytes());
        assert!(
            matches!(e, ImageError::BadMultibootAddresses { .. }),
            "{fields:x?}: {e}"
        );
    }
    // Entry outside what is loaded.
    let mut spec = ElfSpec::elf32_multiboot();
    spec.early = multiboot_header(
        0x1_0000,
        Some([0x10_0034, 0x10_0000, 0x10_0100, 0, 0x10_0200]),
    );
    let e = error(spec.bytes());
    assert!(matches!(e, ImageError::EntryOutsideSegments { .. }), "{e}");
    // Below 1 MiB.
    let mut spec = ElfSpec::elf32_multiboot();
    spec.early = multiboot_header(0x1_0000, Some([0x8_0034, 0x8_0000, 0, 0, 0x8_0000]));
    assert!(matches!(
        error(spec.bytes()),
        ImageError::SegmentBelow1MiB { .. }
    ));
}

#[test]
fn bad_checksum_is_rejected() {
    let built = ElfSpec::elf32_multiboot().build();
    let mut b = built.bytes;
    b[built.early_offset + 8] ^= 0x01;
    let e = error(b);
    assert!(
        matches!(e, ImageError::MultibootChecksum { offset: 0x34, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("checksum"), "{e}");
}

#[test]
fn elf32_without_multiboot_header_is_rejected() {
    let mut spec = ElfSpec::elf32_multiboot();
    spec.early.clear();
    let e = error(spec.bytes());
    assert!(matches!(e, ImageError::NoMultibootHeader), "{e}");
}

#[test]
fn header_must_be_in_the_first_8k() {
    let mut spec = ElfSpec::elf32_multiboot();
    spec.early = vec![0; 0x2000];
    spec.early.extend(multiboot_header(0x3, None));
    assert!(matches!(error(spec.bytes()), ImageError::NoMultibootHeader));
    // Just inside the limit is fine: 0x34 + 0x1FB0 = 0x1FE4, ends at 0x1FF0.
    let mut spec = ElfSpec::elf32_multiboot();
    spec.early = vec![0; 0x1FB0];
    spec.early.extend(multiboot_header(0x3, None));
    let img = KernelImage::from_bytes(spec.bytes()).unwrap();
    assert_eq!(img.multiboot_header().unwrap().header_offset, 0x1FE4);
}

#[test]
fn misaligned_header_is_not_a_header() {
    let mut spec = ElfSpec::elf32_multiboot();
    spec.early = vec![0; 2];
    spec.early.extend(multiboot_header(0x3, None));
    assert!(matches!(error(spec.bytes()), ImageError::NoMultibootHeader));
}

#[test]
fn flag_bits() {
    // Bit 2 (video mode) is ignored; high optional bits other than 16 are ignored.
    for flags in [0x0, 0x7, 0x8000_0003, 0x0002_0003] {
        let mut spec = ElfSpec::elf32_multiboot();
        spec.early = multiboot_header(flags, None);
        let img = KernelImage::from_bytes(spec.bytes()).unwrap();
        assert_eq!(img.multiboot_header().unwrap().flags, flags);
    }
    for unknown in [0x8u32, 0x8000, 0x100] {
        let mut spec = ElfSpec::elf32_multiboot();
        spec.early = multiboot_header(0x3 | unknown, None);
        let e = error(spec.bytes());
        assert!(
            matches!(e, ImageError::UnsupportedMultibootFlags { unknown: u, .. } if u == unknown),
            "{e}"
        );
    }
}

#[test]
fn elf32_with_pvh_note() {
    let mut spec = ElfSpec::elf32_multiboot().pvh_note(0x20_0008);
    spec.early.clear();
    let img = KernelImage::from_bytes(spec.bytes()).unwrap();
    assert_eq!(img.protocols(), &[BootProtocol::Pvh]);
    assert_eq!(img.plan(BootProtocol::Pvh).unwrap().entry, 0x20_0008);
    assert!(img.multiboot_header().is_none());

    let spec = ElfSpec::elf32_multiboot().pvh_note(0x20_0008);
    let img = KernelImage::from_bytes(spec.bytes()).unwrap();
    assert_eq!(
        img.protocols(),
        &[BootProtocol::Multiboot, BootProtocol::Pvh]
    );
}

#[test]
fn elf32_must_be_i386() {
    let mut spec = ElfSpec::elf32_multiboot();
    spec.machine = EM_X86_64;
    let e = error(spec.bytes());
    assert!(
        matches!(
            e,
            ImageError::WrongMachine {
                bits: 32,
                e_machine: 62,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn unikraft_qemu_build_is_unikraft_multiboot() {
    let spec = ElfSpec::elf32_multiboot().section(".uk_inittab");
    let img = KernelImage::from_bytes(spec.bytes()).unwrap();
    assert_eq!(img.kind(), ImageKind::UnikraftMultiboot);
    assert_eq!(img.kind().to_string(), "Unikraft (multiboot)");
}
