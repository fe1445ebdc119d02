//! Kind detection and the names of protocols, formats and kinds.

mod common;

use common::*;
use images::{BootProtocol, ImageError, ImageFormat, ImageKind, KernelImage};

fn kind_of(spec: &ElfSpec) -> ImageKind {
    KernelImage::from_bytes(spec.bytes()).unwrap().kind()
}

/// An ELF64 whose segment data holds `text` at offset 0x40.
fn with_text(text: &[u8]) -> ElfSpec {
    let mut spec = ElfSpec::elf64();
    spec.loads[0].data[0x40..0x40 + text.len()].copy_from_slice(text);
    spec
}

#[test]
fn plain_elf_is_other() {
    assert_eq!(kind_of(&ElfSpec::elf64()), ImageKind::Other);
    assert_eq!(kind_of(&ElfSpec::elf32_multiboot()), ImageKind::Other);
}

#[test]
fn unikraft_by_section_or_string() {
    for name in [".uk_inittab", ".uk_ctortab", ".uk_thread_inittab"] {
        assert_eq!(
            kind_of(&ElfSpec::elf64().section(name)),
            ImageKind::UnikraftLxboot,
            "{name}"
        );
    }
    assert_eq!(kind_of(&ElfSpec::elf64().section(".uk")), ImageKind::Other);
    assert_eq!(
        kind_of(&with_text(b"Powered by Unikraft")),
        ImageKind::UnikraftLxboot
    );
    let mut spec = ElfSpec::elf32_multiboot();
    spec.loads[0].data[0x10..0x18].copy_from_slice(b"Unikraft");
    assert_eq!(kind_of(&spec), ImageKind::UnikraftMultiboot);
    // An ELF64 Unikraft image that also has a multiboot header is still lxboot.
    let mut spec = ElfSpec::elf64().section(".uk_inittab");
    spec.early = multiboot_header(0x3, None);
    assert_eq!(kind_of(&spec), ImageKind::UnikraftLxboot);
}

#[test]
fn linux_by_ksymtab_or_banner() {
    assert_eq!(
        kind_of(&ElfSpec::elf64().section("__ksymtab")),
        ImageKind::Linux
    );
    assert_eq!(
        kind_of(&ElfSpec::elf64().section("__ksymtab_gpl")),
        ImageKind::Other
    );
    assert_eq!(
        kind_of(&with_text(b"Linux version 6.1.0 (gcc)")),
        ImageKind::Linux
    );
    assert_eq!(kind_of(&with_text(b"Linux versio")), ImageKind::Other);
}

#[test]
fn sections_win_over_strings() {
    let spec = with_text(b"Linux version 6.1").section(".uk_inittab");
    assert_eq!(kind_of(&spec), ImageKind::UnikraftLxboot);
    let spec = with_text(b"Unikraft").section("__ksymtab");
    assert_eq!(kind_of(&spec), ImageKind::Linux);
}

#[test]
fn probe_marker_wins() {
    let spec = with_text(b"edgevisor-probe").section(".uk_inittab");
    assert_eq!(kind_of(&spec), ImageKind::EdgevisorProbe);
    let mut spec = ElfSpec::elf32_multiboot();
    spec.loads[0].data[0x20..0x2F].copy_from_slice(images::PROBE_MARKER);
    assert_eq!(kind_of(&spec), ImageKind::EdgevisorProbe);
}

#[test]
fn display_names() {
    let protocols: Vec<String> = BootProtocol::ALL.iter().map(|p| p.to_string()).collect();
    assert_eq!(protocols, ["linux64", "pvh", "multiboot"]);
    let formats: Vec<String> = [ImageFormat::Elf64, ImageFormat::Elf32, ImageFormat::BzImage]
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_eq!(formats, ["ELF64", "ELF32", "bzImage"]);
    let kinds: Vec<String> = [
        ImageKind::UnikraftLxboot,
        ImageKind::UnikraftMultiboot,
        ImageKind::Linux,
        ImageKind::EdgevisorProbe,
        ImageKind::Other,
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    assert_eq!(
        kinds,
        [
            "Unikraft (lxboot)",
            "Unikraft (multiboot)",
            "Linux",
            "edgevisor probe",
            "unknown"
        ]
    );
}

#[test]
fn protocol_from_str_round_trips_and_rejects_unknown_names() {
    for p in BootProtocol::ALL {
        assert_eq!(p.to_string().parse::<BootProtocol>().unwrap(), p);
        assert_eq!(
            p.to_string()
                .to_uppercase()
                .parse::<BootProtocol>()
                .unwrap(),
            p
        );
    }
    assert_eq!(
        "linux".parse::<BootProtocol>().unwrap(),
        BootProtocol::Linux64
    );
    let e = "efi".parse::<BootProtocol>().unwrap_err();
    assert!(
        matches!(&e, ImageError::UnknownProtocol { name } if name == "efi"),
        "{e}"
    );
    assert!(e.to_string().contains("linux64, pvh or multiboot"), "{e}");
}

#[test]
fn protocol_serde_uses_the_cli_names() {
    for p in BootProtocol::ALL {
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, format!("\"{p}\""));
        assert_eq!(serde_json::from_str::<BootProtocol>(&json).unwrap(), p);
    }
    assert!(serde_json::from_str::<BootProtocol>("\"efi\"").is_err());
}
