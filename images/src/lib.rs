//! Reading guest kernel images for edgevisor.
//!
//! [`KernelImage`] identifies an x86_64 kernel image (an ELF64 vmlinux, with or without a PVH
//! note; a multiboot v1 ELF32; a Linux bzImage), tells what kind of guest it is, and turns it
//! into a [`LoadPlan`] per boot protocol it offers: which file bytes go to which guest-physical
//! addresses, and where to enter. It is pure parsing: the VMM does the memory writes.
//! [`Arm64Image`] does the same for the Linux arm64 `Image` format (aarch64 guests).
//! Every field of the image is treated as hostile: no input makes it panic.
//!
//! ```no_run
//! # fn main() -> Result<(), images::ImageError> {
//! let image = images::KernelImage::from_file("vmlinux".as_ref())?;
//! let plan = image.plan(image.default_protocol())?;
//! for segment in &plan.segments {
//!     let _bytes = image.segment_data(segment); // copy to segment.guest_addr, zero the rest
//! }
//! # Ok(()) }
//! ```

mod arm64;
mod bytes;
mod bzimage;
mod elf;
mod error;
mod kind;
mod multiboot;
mod plan;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

pub use arm64::{
    looks_like_arm64_image, Arm64FileError, Arm64Header, Arm64Image, Arm64ImageError,
    Arm64PageSize, ARM64_BASE_ALIGN, ARM64_HEADER_LEN, ARM64_LEGACY_TEXT_OFFSET, ARM64_MAGIC,
    ARM64_MAGIC_OFFSET,
};
pub use bzimage::{
    BZIMAGE_ENTRY_64_OFFSET, BZIMAGE_LOAD_ADDR, SETUP_HEADER_MAX_LEN, SETUP_HEADER_OFFSET,
};
pub use error::ImageError;
pub use kind::PROBE_MARKER;
pub use multiboot::{MultibootAddresses, MultibootHeader, MULTIBOOT_MAGIC, MULTIBOOT_SEARCH_LIMIT};
pub use plan::MIN_LOAD_ADDR;

use elf::{ElfClass, ELF_MAGIC};

/// How the VMM enters the kernel (see docs/GUEST_INTERFACE.md for the CPU state of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, RSI = zero page.
    #[serde(alias = "linux")]
    Linux64,
    /// Xen PVH: 32-bit protected mode, EBX = `hvm_start_info`.
    Pvh,
    /// Multiboot v1: 32-bit protected mode, EAX = 0x2BADB002, EBX = multiboot info.
    #[serde(alias = "multiboot1")]
    Multiboot,
}

impl BootProtocol {
    /// All protocols, in the order they are documented.
    pub const ALL: [BootProtocol; 3] = [
        BootProtocol::Linux64,
        BootProtocol::Pvh,
        BootProtocol::Multiboot,
    ];

    /// The name used on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            BootProtocol::Linux64 => "linux64",
            BootProtocol::Pvh => "pvh",
            BootProtocol::Multiboot => "multiboot",
        }
    }
}

impl fmt::Display for BootProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BootProtocol {
    type Err = ImageError;

    /// Accepts `linux64` (or `linux`), `pvh`, `multiboot` (or `multiboot1`), any case.
    fn from_str(s: &str) -> Result<BootProtocol, ImageError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "linux64" | "linux" => Ok(BootProtocol::Linux64),
            "pvh" => Ok(BootProtocol::Pvh),
            "multiboot" | "multiboot1" => Ok(BootProtocol::Multiboot),
            _ => Err(ImageError::UnknownProtocol {
                name: s.to_string(),
            }),
        }
    }
}

/// The container format of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// A 64-bit ELF executable (a vmlinux, a Unikraft image, our probe).
    Elf64,
    /// A 32-bit ELF executable with a multiboot header (or a PVH note).
    Elf32,
    /// A Linux bzImage.
    BzImage,
    /// A Linux arm64 `Image` (see [`Arm64Image`]).
    Arm64Image,
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Elf64 => "ELF64",
            ImageFormat::Elf32 => "ELF32",
            ImageFormat::BzImage => "bzImage",
            ImageFormat::Arm64Image => "arm64 Image",
        })
    }
}

/// What kind of guest an image looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// A Unikraft unikernel as an ELF64 (booted with the Linux 64-bit or PVH entry).
    UnikraftLxboot,
    /// A Unikraft unikernel as a multiboot ELF32 (its QEMU build).
    UnikraftMultiboot,
    /// A Unikraft unikernel as an arm64 Image (see [`Arm64Image`]).
    UnikraftArm64,
    /// A Linux kernel.
    Linux,
    /// One of edgevisor's own firmware probes (it carries [`PROBE_MARKER`]).
    EdgevisorProbe,
    /// Anything else.
    Other,
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageKind::UnikraftLxboot => "Unikraft (lxboot)",
            ImageKind::UnikraftMultiboot => "Unikraft (multiboot)",
            ImageKind::UnikraftArm64 => "Unikraft (arm64 Image)",
            ImageKind::Linux => "Linux",
            ImageKind::EdgevisorProbe => "edgevisor probe",
            ImageKind::Other => "unknown",
        })
    }
}

/// One piece of the image to put in guest memory: `file_size` bytes from `file_offset` copied
/// to `guest_addr`, then zeroes up to `mem_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical load address.
    pub guest_addr: u64,
    /// Where the bytes start in the image file.
    pub file_offset: usize,
    /// How many bytes come from the file (always inside it).
    pub file_size: usize,
    /// How much guest memory the segment covers (>= `file_size`; the rest is zero).
    pub mem_size: u64,
}

/// The fields of a bzImage's setup header that the VMM needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupInfo {
    /// Boot protocol version, e.g. 0x020F for 2.15.
    pub version: u16,
    /// loadflags (bit 0 LOADED_HIGH).
    pub loadflags: u8,
    /// xloadflags (bit 0 XLF_KERNEL_64); 0 before protocol 2.12.
    pub xloadflags: u16,
    /// Longest command line the kernel accepts, without the NUL.
    pub cmdline_size: u32,
    /// Highest address the initrd may end at (inclusive).
    pub initrd_addr_max: u32,
    /// Alignment the kernel wants when relocatable.
    pub kernel_alignment: u32,
    /// Memory the kernel needs from its load address while it decompresses; 0 before 2.10.
    pub init_size: u32,
    /// Preferred load address if not relocated; 0 before 2.10.
    pub pref_address: u64,
}

/// How to load an image for one boot protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadPlan {
    /// The protocol this plan is for.
    pub protocol: BootProtocol,
    /// Guest-physical entry point for that protocol.
    pub entry: u64,
    /// What to copy and zero; no two overlap and none lies below 1 MiB.
    pub segments: Vec<Segment>,
    /// The highest guest address used by segments (exclusive).
    pub kernel_end: u64,
    /// bzImage only: image bytes from 0x1F1 to the end of the setup header (0x202 + the byte
    /// at 0x201, at most 0x7B bytes in all), to copy into the zero page at 0x1F1.
    pub setup_header: Option<Vec<u8>>,
    /// bzImage only: parsed setup header fields.
    pub setup: Option<SetupInfo>,
}

/// A kernel image, checked and ready to be planned into guest memory.
#[derive(Clone)]
pub struct KernelImage {
    bytes: Vec<u8>,
    format: ImageFormat,
    kind: ImageKind,
    /// Offered protocols, default first; `plans[i]` is for `protocols[i]`.
    protocols: Vec<BootProtocol>,
    plans: Vec<LoadPlan>,
    /// Why a protocol the image hints at is not offered after all.
    declined: Vec<(BootProtocol, String)>,
    multiboot: Option<MultibootHeader>,
}

impl fmt::Debug for KernelImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the bytes: they can be tens of MiB.
        f.debug_struct("KernelImage")
            .field("len", &self.bytes.len())
            .field("format", &self.format)
            .field("kind", &self.kind)
            .field("protocols", &self.protocols)
            .field("multiboot", &self.multiboot)
            .finish()
    }
}

/// Reads a whole file that must exist and not be empty.
fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, ImageError> {
    let bytes = std::fs::read(path).map_err(|io| match io.kind() {
        std::io::ErrorKind::NotFound => ImageError::NotFound {
            what,
            path: path.to_path_buf(),
        },
        _ => ImageError::Unreadable {
            what,
            path: path.to_path_buf(),
            io,
        },
    })?;
    if bytes.is_empty() {
        return Err(ImageError::EmptyFile {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Reads an initrd (initramfs) file whole.
pub fn read_initrd(path: &Path) -> Result<Vec<u8>, ImageError> {
    read_file("initrd", path)
}

impl KernelImage {
    /// Reads and checks the kernel image at `path`; errors name the path.
    pub fn from_file(path: &Path) -> Result<KernelImage, ImageError> {
        let bytes = read_file("kernel image", path)?;
        KernelImage::from_bytes(bytes).map_err(|error| match error {
            ImageError::UnknownFormat => ImageError::NotAKernelImage {
                path: path.to_path_buf(),
            },
            error => ImageError::InFile {
                path: path.to_path_buf(),
                error: Box::new(error),
            },
        })
    }

    /// Identifies and fully checks an image: every protocol it offers has a valid plan.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<KernelImage, ImageError> {
        if bytes.is_empty() {
            return Err(ImageError::EmptyImage);
        }
        if bytes.starts_with(ELF_MAGIC) {
            return KernelImage::from_elf(bytes);
        }
        if bzimage::looks_like_bzimage(&bytes) {
            return KernelImage::from_bzimage(bytes);
        }
        Err(ImageError::UnknownFormat)
    }

    fn from_bzimage(bytes: Vec<u8>) -> Result<KernelImage, ImageError> {
        let bz = bzimage::parse(&bytes)?;
        let file_size = bytes.len() - bz.payload_offset;
        let segment = Segment {
            guest_addr: BZIMAGE_LOAD_ADDR,
            file_offset: bz.payload_offset,
            file_size,
            mem_size: (file_size as u64).max(u64::from(bz.setup.init_size)),
        };
        let mut plan = plan::finish(
            BootProtocol::Linux64,
            BZIMAGE_LOAD_ADDR + BZIMAGE_ENTRY_64_OFFSET,
            vec![segment],
        )?;
        plan.setup_header = Some(bz.setup_header);
        plan.setup = Some(bz.setup);
        Ok(KernelImage {
            kind: kind::of_bzimage(&bytes),
            bytes,
            format: ImageFormat::BzImage,
            protocols: vec![BootProtocol::Linux64],
            plans: vec![plan],
            declined: vec![(
                BootProtocol::Pvh,
                "edgevisor boots bzImages only through their 64-bit entry".into(),
            )],
            multiboot: None,
        })
    }

    fn from_elf(bytes: Vec<u8>) -> Result<KernelImage, ImageError> {
        let elf = elf::parse(&bytes)?;
        let segments = plan::elf_segments(&elf, bytes.len())?;
        let pvh = elf
            .pvh_entry(&bytes)?
            .map(|entry| plan::finish(BootProtocol::Pvh, entry, segments.clone()))
            .transpose()?;
        let mut plans = Vec::new();
        let mut declined = Vec::new();
        let mut multiboot = None;
        let format = match elf.class {
            ElfClass::Elf64 => {
                plans.extend(pvh);
                let entry = plan::elf_entry(&elf, &segments);
                plans.push(plan::finish(
                    BootProtocol::Linux64,
                    entry,
                    segments.clone(),
                )?);
                // Multiboot is an extra for ELF64: a header it cannot use only takes it away.
                let found = multiboot::find(&bytes).and_then(|header| match header {
                    Some(h) => {
                        multiboot_plan(&elf, &segments, &h, bytes.len()).map(|p| Some((h, p)))
                    }
                    None => Ok(None),
                });
                match found {
                    Ok(Some((h, p))) => {
                        multiboot = Some(h);
                        plans.push(p);
                    }
                    Ok(None) => {}
                    Err(e) => declined.push((BootProtocol::Multiboot, e.to_string())),
                }
                ImageFormat::Elf64
            }
            ElfClass::Elf32 => {
                let header = multiboot::find(&bytes)?;
                if header.is_none() && pvh.is_none() {
                    return Err(ImageError::NoMultibootHeader);
                }
                if let Some(h) = header {
                    plans.push(multiboot_plan(&elf, &segments, &h, bytes.len())?);
                    multiboot = Some(h);
                }
                plans.extend(pvh);
                declined.push((
                    BootProtocol::Linux64,
                    "it is a 32-bit ELF without a 64-bit entry point".into(),
                ));
                ImageFormat::Elf32
            }
        };
        Ok(KernelImage {
            kind: kind::of_elf(&bytes, &elf),
            bytes,
            format,
            protocols: plans.iter().map(|p| p.protocol).collect(),
            plans,
            declined,
            multiboot,
        })
    }

    /// The image's format.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// What kind of guest it looks like.
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// The protocols the image can boot with, in preference order (never empty).
    pub fn protocols(&self) -> &[BootProtocol] {
        &self.protocols
    }

    /// The preferred protocol: PVH if the ELF has the note, else Linux 64-bit for ELF64 and
    /// bzImage, multiboot for ELF32.
    pub fn default_protocol(&self) -> BootProtocol {
        self.plans
            .first()
            .map_or(BootProtocol::Linux64, |p| p.protocol)
    }

    /// How to load the image for `protocol`; an error if the image does not offer it.
    pub fn plan(&self, protocol: BootProtocol) -> Result<LoadPlan, ImageError> {
        if let Some(plan) = self.plans.iter().find(|p| p.protocol == protocol) {
            return Ok(plan.clone());
        }
        let why = match self.declined.iter().find(|(p, _)| *p == protocol) {
            Some((_, why)) => why.clone(),
            None => {
                match protocol {
                    BootProtocol::Pvh => "it has no Xen XEN_ELFNOTE_PHYS32_ENTRY note".to_string(),
                    BootProtocol::Multiboot => {
                        format!("it has no multiboot header in its first {MULTIBOOT_SEARCH_LIMIT} bytes")
                    }
                    BootProtocol::Linux64 => "it has no 64-bit entry point".to_string(),
                }
            }
        };
        let offered: Vec<&str> = self.protocols.iter().map(|p| p.name()).collect();
        Err(ImageError::ProtocolNotOffered {
            requested: protocol,
            why,
            offered: offered.join(", "),
        })
    }

    /// The multiboot header, if the image offers multiboot.
    pub fn multiboot_header(&self) -> Option<&MultibootHeader> {
        self.multiboot.as_ref()
    }

    /// The whole image file.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The file bytes of a segment of one of this image's plans. A segment that does not
    /// belong to this image (and so does not fit in it) gives an empty slice.
    pub fn segment_data(&self, s: &Segment) -> &[u8] {
        bytes::slice(&self.bytes, s.file_offset, s.file_size).unwrap_or(&[])
    }
}

/// The multiboot plan of an ELF: by the header's address fields when flags bit 16 is set,
/// else by the ELF's PT_LOAD segments and entry point.
fn multiboot_plan(
    elf: &elf::Elf,
    elf_segments: &[Segment],
    header: &MultibootHeader,
    file_len: usize,
) -> Result<LoadPlan, ImageError> {
    header.check_flags()?;
    match &header.addresses {
        Some(a) => {
            let segment = multiboot::address_fields_segment(file_len, header.header_offset, a)?;
            plan::finish(
                BootProtocol::Multiboot,
                u64::from(a.entry_addr),
                vec![segment],
            )
        }
        None => plan::finish(
            BootProtocol::Multiboot,
            plan::elf_entry(elf, elf_segments),
            elf_segments.to_vec(),
        ),
    }
}
