//! Telling what is inside an image: our probe, a Unikraft unikernel, Linux, or something else.

use memchr::memmem;

use crate::elf::{Elf, ElfClass};
use crate::ImageKind;

/// The marker string every edgevisor firmware probe carries.
pub const PROBE_MARKER: &[u8] = b"edgevisor-probe";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memmem::find(haystack, needle).is_some()
}

/// Classifies a bzImage: Linux unless it is our probe.
pub(crate) fn of_bzimage(bytes: &[u8]) -> ImageKind {
    if contains(bytes, PROBE_MARKER) {
        ImageKind::EdgevisorProbe
    } else {
        ImageKind::Linux
    }
}

/// Classifies an ELF image. Section names decide before strings in the bytes do, since a
/// string can turn up by accident and a `.uk_*` or `__ksymtab` section cannot.
pub(crate) fn of_elf(bytes: &[u8], elf: &Elf) -> ImageKind {
    if contains(bytes, PROBE_MARKER) {
        return ImageKind::EdgevisorProbe;
    }
    let unikraft = match elf.class {
        ElfClass::Elf32 => ImageKind::UnikraftMultiboot,
        ElfClass::Elf64 => ImageKind::UnikraftLxboot,
    };
    let is64 = elf.class == ElfClass::Elf64;
    if elf.has_section(|n| n.starts_with(b".uk_")) {
        return unikraft;
    }
    if is64 && elf.has_section(|n| n == b"__ksymtab") {
        return ImageKind::Linux;
    }
    if contains(bytes, b"Unikraft") {
        return unikraft;
    }
    if is64 && contains(bytes, b"Linux version ") {
        return ImageKind::Linux;
    }
    ImageKind::Other
}

/// Classifies an arm64 Image: our probe, Unikraft, Linux, or unknown.
pub(crate) fn of_arm64(bytes: &[u8]) -> ImageKind {
    if contains(bytes, PROBE_MARKER) {
        ImageKind::EdgevisorProbe
    } else if contains(bytes, b"Unikraft") {
        ImageKind::UnikraftArm64
    } else if contains(bytes, b"Linux version ") {
        ImageKind::Linux
    } else {
        ImageKind::Other
    }
}
