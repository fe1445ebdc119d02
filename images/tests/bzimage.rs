//! bzImage: setup header checks and the one-segment plan at 1 MiB.

mod common;

use common::*;
use images::{BootProtocol, ImageError, ImageFormat, ImageKind, KernelImage, Segment, SetupInfo};

fn error(spec: &BzSpec) -> ImageError {
    KernelImage::from_bytes(spec.bytes()).expect_err("bzImage should be rejected")
}

#[test]
fn modern_bzimage_plan() {
    let spec = BzSpec::modern();
    let bytes = spec.bytes();
    let img = KernelImage::from_bytes(bytes.clone()).unwrap();
    assert_eq!(img.format(), ImageFormat::BzImage);
    assert_eq!(img.kind(), ImageKind::Linux);
    assert_eq!(img.protocols(), &[BootProtocol::Linux64]);
    assert_eq!(img.default_protocol(), BootProtocol::Linux64);
    let plan = img.plan(BootProtocol::Linux64).unwrap();
    assert_eq!(plan.entry, 0x10_0200);
    let offset = spec.payload_offset();
    assert_eq!(offset, 4 * 512);
    assert_eq!(
        plan.segments,
        vec![Segment {
            guest_addr: 0x10_0000,
            file_offset: offset,
            file_size: spec.payload.len(),
            mem_size: u64::from(spec.init_size),
        }]
    );
    assert_eq!(plan.kernel_end, 0x10_0000 + u64::from(spec.init_size));
    assert_eq!(img.segment_data(&plan.segments[0]), &spec.payload[..]);
    assert_eq!(
        plan.setup,
        Some(SetupInfo {
            version: spec.version,
            loadflags: spec.loadflags,
            xloadflags: spec.xloadflags,
            cmdline_size: spec.cmdline_size,
            initrd_addr_max: spec.initrd_addr_max,
            kernel_alignment: spec.kernel_alignment,
            init_size: spec.init_size,
            pref_address: spec.pref_address,
        })
    );
    // 0x202 + 0x6A = 0x26C: the whole 0x7B-byte header.
    assert_eq!(plan.setup_header.as_deref(), Some(&bytes[0x1F1..0x26C]));
}

#[test]
fn setup_header_length_follows_the_jump_and_is_capped() {
    let mut spec = BzSpec::modern();
    spec.jump = 0x66;
    let bytes = spec.bytes();
    let plan = KernelImage::from_bytes(bytes.clone())
        .unwrap()
        .plan(BootProtocol::Linux64)
        .unwrap();
    assert_eq!(plan.setup_header.as_deref(), Some(&bytes[0x1F1..0x268]));

    spec.jump = 0x7F;
    let bytes = spec.bytes();
    let plan = KernelImage::from_bytes(bytes.clone())
        .unwrap()
        .plan(BootProtocol::Linux64)
        .unwrap();
    assert_eq!(plan.setup_header.map(|h| h.len()), Some(0x7B));
}

#[test]
fn zero_setup_sects_means_four() {
    let mut spec = BzSpec::modern();
    spec.setup_sects = 0;
    let plan = KernelImage::from_bytes(spec.bytes())
        .unwrap()
        .plan(BootProtocol::Linux64)
        .unwrap();
    assert_eq!(plan.segments[0].file_offset, 5 * 512);
    assert_eq!(plan.segments[0].file_size, spec.payload.len());
}

#[test]
fn payload_larger_than_init_size_sets_mem_size() {
    let mut spec = BzSpec::modern();
    spec.init_size = 0x100;
    let plan = KernelImage::from_bytes(spec.bytes())
        .unwrap()
        .plan(BootProtocol::Linux64)
        .unwrap();
    assert_eq!(plan.segments[0].mem_size, spec.payload.len() as u64);
}

#[test]
fn too_old_protocol_is_rejected() {
    let mut spec = BzSpec::modern();
    spec.version = 0x0205;
    let e = error(&spec);
    assert!(
        matches!(e, ImageError::BzImageTooOld { major: 2, minor: 5 }),
        "{e}"
    );
    assert!(e.to_string().contains("2.05"), "{e}");
}

#[test]
fn no_64_bit_entry_is_rejected() {
    let mut spec = BzSpec::modern();
    spec.xloadflags = 0x2;
    let e = error(&spec);
    assert!(matches!(e, ImageError::BzImageNot64Bit { .. }), "{e}");
    assert!(e.to_string().contains("no 64-bit entry"), "{e}");
    // Before 2.12 there is no xloadflags field at all, whatever the bytes say.
    let mut spec = BzSpec::modern();
    spec.version = 0x020B;
    assert!(matches!(
        error(&spec),
        ImageError::BzImageNot64Bit { xloadflags: 0, .. }
    ));
}

#[test]
fn zimage_is_rejected() {
    let mut spec = BzSpec::modern();
    spec.loadflags = 0x80;
    let e = error(&spec);
    assert!(
        matches!(e, ImageError::BzImageNotLoadedHigh { loadflags: 0x80 }),
        "{e}"
    );
}

#[test]
fn missing_payload_is_rejected() {
    let mut spec = BzSpec::modern();
    spec.payload.clear();
    assert!(matches!(error(&spec), ImageError::BzImageNoPayload { .. }));
}

#[test]
fn truncated_setup_header_is_rejected() {
    let bytes = BzSpec::modern().bytes();
    for len in [0x207, 0x212, 0x23A, 0x25C, 0x264] {
        let e = KernelImage::from_bytes(bytes[..len].to_vec()).unwrap_err();
        assert!(
            matches!(e, ImageError::BzImageTruncated { .. }),
            "{len:#x}: {e}"
        );
    }
}

#[test]
fn payload_shorter_than_syssize_is_truncation() {
    let mut spec = BzSpec::modern();
    spec.payload.truncate(0x5F1); // syssize rounds up to 0x60 paragraphs: still accepted
    let bytes = spec.bytes();
    assert!(KernelImage::from_bytes(bytes.clone()).is_ok());
    let e = KernelImage::from_bytes(bytes[..bytes.len() - 0x10].to_vec()).unwrap_err();
    assert!(matches!(e, ImageError::BzImageTruncated { .. }), "{e}");
    assert!(e.to_string().contains("syssize"), "{e}");
    // Trailing data (e.g. an appended signature) is fine and gets loaded too.
    let mut longer = spec.bytes();
    longer.extend_from_slice(&[0x5A; 0x123]);
    let plan = KernelImage::from_bytes(longer)
        .unwrap()
        .plan(BootProtocol::Linux64)
        .unwrap();
    assert_eq!(plan.segments[0].file_size, 0x5F1 + 0x123);
}

#[test]
fn only_linux64_is_offered() {
    let img = KernelImage::from_bytes(BzSpec::modern().bytes()).unwrap();
    for p in [BootProtocol::Pvh, BootProtocol::Multiboot] {
        let e = img.plan(p).unwrap_err();
        assert!(
            matches!(e, ImageError::ProtocolNotOffered { requested, .. } if requested == p),
            "{e}"
        );
        assert!(e.to_string().contains("linux64"), "{e}");
    }
}

#[test]
fn boot_sector_without_hdrs_is_unknown() {
    let mut b = BzSpec::modern().bytes();
    b[0x202..0x206].copy_from_slice(b"NoHd");
    assert!(matches!(
        KernelImage::from_bytes(b),
        Err(ImageError::UnknownFormat)
    ));
}

#[test]
fn probe_bzimage_is_recognised() {
    let mut spec = BzSpec::modern();
    spec.payload[0x300..0x300 + PROBE.len()].copy_from_slice(PROBE);
    let img = KernelImage::from_bytes(spec.bytes()).unwrap();
    assert_eq!(img.kind(), ImageKind::EdgevisorProbe);
}

const PROBE: &[u8] = b"edgevisor-probe";
