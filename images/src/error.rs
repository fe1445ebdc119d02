//! Everything that can be wrong with a kernel image or an initrd.

use std::io;
use std::path::PathBuf;

use crate::BootProtocol;

/// Why an image (or an initrd) cannot be used.
///
/// Every message is one sentence that names the input and says what to do. Errors found in
/// the bytes of a file read with [`crate::KernelImage::from_file`] come wrapped in
/// [`ImageError::InFile`], which adds the path; [`ImageError::root`] unwraps it.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file does not exist.
    #[error("{what} {path} does not exist: check the path")]
    NotFound {
        /// "kernel image" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("{what} {path} could not be read ({io}): check that it is a readable regular file")]
    Unreadable {
        /// "kernel image" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// What the OS reported.
        io: io::Error,
    },
    /// The file is empty.
    #[error("{what} {path} is empty (0 bytes): point at the real file, or rebuild it")]
    EmptyFile {
        /// "kernel image" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// A problem inside the bytes of the file at `path`.
    #[error("kernel image {path}: {error}")]
    InFile {
        /// The path given.
        path: PathBuf,
        /// What is wrong with its contents.
        error: Box<ImageError>,
    },
    /// A file that is neither ELF nor bzImage.
    #[error("{path} is not a kernel image edgevisor can boot: expected an ELF vmlinux, a bzImage or a multiboot ELF32")]
    NotAKernelImage {
        /// The path given.
        path: PathBuf,
    },
    /// The image has no bytes at all.
    #[error("the kernel image is empty (0 bytes): pass the bytes of an ELF vmlinux, a bzImage or a multiboot ELF32")]
    EmptyImage,
    /// Neither ELF nor bzImage ([`ImageError::NotAKernelImage`] when read from a file).
    #[error("the image is not a kernel image edgevisor can boot: expected an ELF vmlinux, a bzImage or a multiboot ELF32")]
    UnknownFormat,
    /// Some part of the ELF file lies (partly) outside the file.
    #[error("the ELF image is truncated or corrupt: its {part} lies outside the file ({len} bytes); copy or rebuild the kernel again")]
    Truncated {
        /// Which part, e.g. "program header table".
        part: String,
        /// The file's length.
        len: usize,
    },
    /// ELF class byte other than 32 or 64 bit, or not little-endian.
    #[error("the ELF image has an unsupported {what} ({value}): edgevisor boots little-endian x86_64 ELF64 and i386 ELF32 executables")]
    UnsupportedElf {
        /// "class" or "byte order".
        what: &'static str,
        /// The value found.
        value: String,
    },
    /// The ELF machine does not match its class (or is not x86 at all).
    #[error("the ELF{bits} image is built for {machine} (e_machine {e_machine}), not {expected}: use a kernel built for x86_64 ({expected})")]
    WrongMachine {
        /// 32 or 64.
        bits: u32,
        /// The e_machine value found.
        e_machine: u16,
        /// Its name, as far as known.
        machine: &'static str,
        /// The machine this class must have.
        expected: &'static str,
    },
    /// Not an ET_EXEC executable.
    #[error("the ELF image is {found} (e_type {e_type}), not an executable (ET_EXEC): link the kernel as a static, non-PIE executable")]
    NotExecutable {
        /// The e_type value found.
        e_type: u16,
        /// What it means.
        found: &'static str,
    },
    /// The ELF has no program headers or they have a bad entry size.
    #[error("the ELF image has {problem}: edgevisor loads kernels by their program headers, so relink the kernel normally")]
    BadProgramHeaders {
        /// What is wrong.
        problem: String,
    },
    /// A PT_LOAD program header is self-contradictory.
    #[error("the ELF image's PT_LOAD program header {index} is invalid ({problem}): the kernel file is corrupt, rebuild it")]
    BadSegment {
        /// Index of the program header.
        index: usize,
        /// What is wrong.
        problem: String,
    },
    /// A Xen PHYS32_ENTRY note with an unusable value.
    #[error("the image's PVH entry note (Xen XEN_ELFNOTE_PHYS32_ENTRY) is invalid ({problem}): fix the note or boot with another protocol")]
    BadPvhNote {
        /// What is wrong.
        problem: String,
    },
    /// A multiboot magic whose checksum does not add up.
    #[error("the multiboot header at file offset {offset:#x} has a bad checksum (magic {magic:#x} + flags {flags:#x} + checksum {checksum:#x} must be 0 modulo 2^32): fix the kernel's multiboot header")]
    MultibootChecksum {
        /// File offset of the magic.
        offset: usize,
        /// The magic.
        magic: u32,
        /// The flags word.
        flags: u32,
        /// The checksum word.
        checksum: u32,
    },
    /// An ELF32 image that edgevisor has no way to boot.
    #[error("the ELF32 image has no multiboot v1 header (magic 0x1BADB002, 4-byte aligned, in the first 8192 bytes) and no PVH note: edgevisor boots 32-bit ELF kernels only through multiboot v1 or PVH")]
    NoMultibootHeader,
    /// Required multiboot flag bits that edgevisor does not implement.
    #[error("the multiboot header asks for flags {unknown:#x} (of {flags:#x}) that edgevisor does not support: only bits 0, 1, 2 (ignored) and 16 are understood, so rebuild the kernel without them")]
    UnsupportedMultibootFlags {
        /// The whole flags word.
        flags: u32,
        /// The bits edgevisor does not know.
        unknown: u32,
    },
    /// The multiboot address fields (flags bit 16) do not describe a loadable image.
    #[error("the multiboot header's address fields (flags bit 16) are invalid: {problem}; fix header_addr/load_addr/load_end_addr/bss_end_addr in the kernel")]
    BadMultibootAddresses {
        /// What is wrong.
        problem: String,
    },
    /// A bzImage with a setup header that is too short for the fields it claims.
    #[error("the bzImage is truncated: its {part} lies outside the file ({len} bytes); copy or rebuild the kernel again")]
    BzImageTruncated {
        /// Which part.
        part: &'static str,
        /// The file's length.
        len: usize,
    },
    /// A bzImage older than boot protocol 2.06.
    #[error("the bzImage speaks Linux boot protocol {major}.{minor:02}, older than 2.06, which edgevisor needs: use a newer kernel")]
    BzImageTooOld {
        /// Major version.
        major: u8,
        /// Minor version.
        minor: u8,
    },
    /// A bzImage without XLF_KERNEL_64.
    #[error("the bzImage has no 64-bit entry point (boot protocol {major}.{minor:02}, xloadflags {xloadflags:#x} without XLF_KERNEL_64): use a kernel built for x86_64 with boot protocol 2.12 or later")]
    BzImageNot64Bit {
        /// Major version.
        major: u8,
        /// Minor version.
        minor: u8,
        /// The xloadflags field (0 before 2.12).
        xloadflags: u16,
    },
    /// A zImage: it wants to be loaded at 0x10000.
    #[error("the bzImage does not set LOADED_HIGH in loadflags ({loadflags:#x}), so it is a zImage that must load below 1 MiB: build a bzImage instead")]
    BzImageNotLoadedHigh {
        /// The loadflags byte.
        loadflags: u8,
    },
    /// Nothing after the setup sectors.
    #[error("the bzImage has no protected-mode kernel after its {setup_sects} setup sectors (the file is {len} bytes): the file is truncated, copy or rebuild it")]
    BzImageNoPayload {
        /// Setup sectors (after the 0-means-4 rule).
        setup_sects: u32,
        /// The file's length.
        len: usize,
    },
    /// A segment below 1 MiB, where the VMM keeps its boot structures.
    #[error("the image wants to load memory at {start:#x}..{end:#x}, below 1 MiB where edgevisor keeps its boot structures: link the kernel at 0x100000 or above")]
    SegmentBelow1MiB {
        /// Segment start.
        start: u64,
        /// Segment end (exclusive).
        end: u64,
    },
    /// Two segments share guest memory.
    #[error("the image's segments {a_start:#x}..{a_end:#x} and {b_start:#x}..{b_end:#x} overlap in guest memory: the kernel file is corrupt or mislinked, rebuild it")]
    SegmentsOverlap {
        /// First segment start.
        a_start: u64,
        /// First segment end.
        a_end: u64,
        /// Second segment start.
        b_start: u64,
        /// Second segment end.
        b_end: u64,
    },
    /// A 32-bit protocol cannot reach memory at or above 4 GiB.
    #[error("the {protocol} protocol starts the kernel with paging off, but the image loads memory up to {end:#x}, beyond 4 GiB: boot it with linux64 or link it below 4 GiB")]
    Above4GiB {
        /// The protocol.
        protocol: BootProtocol,
        /// The highest address used (exclusive).
        end: u64,
    },
    /// The entry point is not inside anything that gets loaded.
    #[error("the image's {protocol} entry point {entry:#x} is outside every segment it loads: the kernel file is corrupt or mislinked, rebuild it")]
    EntryOutsideSegments {
        /// The protocol.
        protocol: BootProtocol,
        /// The entry point.
        entry: u64,
    },
    /// The image does not offer the protocol asked for.
    #[error("this image cannot boot with the {requested} protocol ({why}): choose one it offers: {offered}")]
    ProtocolNotOffered {
        /// The protocol asked for.
        requested: BootProtocol,
        /// Why it is not offered.
        why: String,
        /// The protocols offered, comma separated.
        offered: String,
    },
    /// A protocol name the CLI or a config did not recognise.
    #[error("unknown boot protocol {name:?}: use linux64, pvh or multiboot")]
    UnknownProtocol {
        /// The name given.
        name: String,
    },
}

impl ImageError {
    /// The error itself, without the [`ImageError::InFile`] wrapper that names the file.
    pub fn root(&self) -> &ImageError {
        match self {
            ImageError::InFile { error, .. } => error.root(),
            other => other,
        }
    }

    pub(crate) fn truncated(part: impl Into<String>, len: usize) -> ImageError {
        ImageError::Truncated {
            part: part.into(),
            len,
        }
    }
}
