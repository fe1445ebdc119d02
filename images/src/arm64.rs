//! The Linux arm64 `Image` format (Documentation/arch/arm64/booting.rst), which Unikraft's
//! arm64 builds use too.
//!
//! The first 64 bytes of the file are a header:
//!
//! | offset | field | meaning |
//! |---|---|---|
//! | 0x00 | code0, code1 | executable code (a branch to the kernel's start) |
//! | 0x08 | text_offset | where the image goes above a 2 MiB aligned base (LE) |
//! | 0x10 | image_size | bytes the kernel occupies from its load address, bss included; 0 before Linux 3.17 |
//! | 0x18 | flags | bit 0 big-endian, bits 1-2 kernel page size, bit 3 placed anywhere |
//! | 0x20 | res2, res3, res4 | reserved |
//! | 0x38 | magic | `ARM\x64` (0x644d5241 little-endian) |
//! | 0x3c | res5 | offset of the PE header (EFI stub) or 0 |
//!
//! The boot protocol: the image is copied unchanged to `text_offset` bytes above a 2 MiB
//! aligned base in RAM (the lowest one when flags bit 3 is clear), and entered at its first
//! byte with X0 = the FDT's address, X1-X3 = 0, MMU and caches off, interrupts masked, at EL1.

use std::fmt;
use std::path::Path;

use crate::bytes::{u32_at, u64_at};
use crate::ImageKind;

/// Offset of the magic number.
pub const ARM64_MAGIC_OFFSET: usize = 0x38;
/// The magic number, `ARM\x64` read as a little-endian u32.
pub const ARM64_MAGIC: u32 = 0x644d_5241;
/// Size of the header.
pub const ARM64_HEADER_LEN: usize = 0x40;
/// The base the image is placed above is aligned to this.
pub const ARM64_BASE_ALIGN: u64 = 2 << 20;
/// text_offset kernels before 3.17 (image_size 0) are assumed to want.
pub const ARM64_LEGACY_TEXT_OFFSET: u64 = 0x8_0000;

/// Why an arm64 Image cannot be booted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Arm64ImageError {
    /// Shorter than the 64-byte header.
    #[error(
        "the arm64 Image is {len} bytes long, shorter than its 64-byte header: pass the whole \
         kernel Image (arch/arm64/boot/Image), not a fragment"
    )]
    TooShort {
        /// Length of the input.
        len: usize,
    },
    /// No `ARM\x64` at 0x38.
    #[error(
        "the file has {found:#010x} at offset 0x38 where an arm64 Image has the magic \
         0x644d5241 (\"ARM\\x64\"): pass an uncompressed arm64 Image (gunzip Image.gz first)"
    )]
    BadMagic {
        /// The u32 found at 0x38.
        found: u32,
    },
    /// Flags bit 0 says big-endian.
    #[error(
        "the arm64 Image is a big-endian kernel (flags bit 0 set): edgevisor boots little-endian \
         kernels only; build the kernel without CONFIG_CPU_BIG_ENDIAN"
    )]
    BigEndian,
    /// text_offset or image_size make the kernel run past the end of the address space.
    #[error(
        "the arm64 Image's text_offset {text_offset:#x} and image_size {image_size:#x} do not \
         fit in the address space: the header is corrupt, rebuild the kernel"
    )]
    BadSize {
        /// text_offset field.
        text_offset: u64,
        /// image_size field.
        image_size: u64,
    },
    /// The kernel does not fit in the guest's RAM.
    #[error(
        "the arm64 kernel needs {need:#x} bytes of RAM from {load_addr:#x} but the guest's RAM \
         ends at {ram_end:#x}: give the VM more memory"
    )]
    DoesNotFit {
        /// Where it would be loaded.
        load_addr: u64,
        /// Bytes it needs from there.
        need: u64,
        /// First address past the RAM it was planned into.
        ram_end: u64,
    },
}

/// The kernel's own page size, from flags bits 1-2 (it need not match the host's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm64PageSize {
    /// The kernel does not say (field 0, kernels before 3.17).
    Unspecified,
    /// 4 KiB pages.
    K4,
    /// 16 KiB pages.
    K16,
    /// 64 KiB pages.
    K64,
}

impl Arm64PageSize {
    /// Bytes per page, or None when unspecified.
    pub fn bytes(self) -> Option<u64> {
        match self {
            Arm64PageSize::Unspecified => None,
            Arm64PageSize::K4 => Some(4 << 10),
            Arm64PageSize::K16 => Some(16 << 10),
            Arm64PageSize::K64 => Some(64 << 10),
        }
    }
}

impl fmt::Display for Arm64PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bytes() {
            Some(b) => write!(f, "{} KiB", b >> 10),
            None => f.write_str("unspecified"),
        }
    }
}

/// The parsed header of an arm64 Image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arm64Header {
    /// Offset of the image above its 2 MiB aligned base.
    pub text_offset: u64,
    /// Bytes the kernel needs from its load address (bss included); the file length for
    /// kernels that leave it 0.
    pub image_size: u64,
    /// Whether the header carried an image_size (Linux 3.17 and later).
    pub has_image_size: bool,
    /// Flags bit 0.
    pub big_endian: bool,
    /// Flags bits 1-2.
    pub page_size: Arm64PageSize,
    /// Flags bit 3: the base may be anywhere in RAM, not only as low as possible.
    pub place_anywhere: bool,
    /// The raw flags field.
    pub flags: u64,
}

/// Whether `bytes` start with an arm64 Image header (the magic is where it belongs).
pub fn looks_like_arm64_image(bytes: &[u8]) -> bool {
    u32_at(bytes, ARM64_MAGIC_OFFSET) == Some(ARM64_MAGIC)
}

impl Arm64Header {
    /// Parses and checks the header of `bytes` (the whole image file).
    pub fn parse(bytes: &[u8]) -> Result<Arm64Header, Arm64ImageError> {
        let too_short = || Arm64ImageError::TooShort { len: bytes.len() };
        if bytes.len() < ARM64_HEADER_LEN {
            return Err(too_short());
        }
        let magic = u32_at(bytes, ARM64_MAGIC_OFFSET).ok_or_else(too_short)?;
        if magic != ARM64_MAGIC {
            return Err(Arm64ImageError::BadMagic { found: magic });
        }
        let text_offset = u64_at(bytes, 0x08).ok_or_else(too_short)?;
        let image_size = u64_at(bytes, 0x10).ok_or_else(too_short)?;
        let flags = u64_at(bytes, 0x18).ok_or_else(too_short)?;
        // Before 3.17 the header had image_size 0, flags 0 and text_offset possibly in the
        // wrong endianness: assume the documented 0x80000 and the file length.
        let has_image_size = image_size != 0;
        let (text_offset, image_size) = if has_image_size {
            (text_offset, image_size)
        } else {
            (ARM64_LEGACY_TEXT_OFFSET, bytes.len() as u64)
        };
        let header = Arm64Header {
            text_offset,
            image_size: image_size.max(bytes.len() as u64),
            has_image_size,
            big_endian: flags & 1 != 0,
            page_size: match (flags >> 1) & 3 {
                1 => Arm64PageSize::K4,
                2 => Arm64PageSize::K16,
                3 => Arm64PageSize::K64,
                _ => Arm64PageSize::Unspecified,
            },
            place_anywhere: flags & (1 << 3) != 0,
            flags,
        };
        if header.big_endian {
            return Err(Arm64ImageError::BigEndian);
        }
        let bad_size = Arm64ImageError::BadSize {
            text_offset,
            image_size,
        };
        // The base is 2 MiB aligned; a text_offset past that window only wastes RAM, but
        // one that overflows with the size is corrupt.
        if text_offset
            .checked_add(header.image_size)
            .and_then(|end| end.checked_add(ARM64_BASE_ALIGN))
            .is_none()
        {
            return Err(bad_size);
        }
        Ok(header)
    }

    /// Where the kernel goes in RAM that starts at `ram_base` and is `ram_size` bytes long:
    /// `text_offset` above the lowest 2 MiB aligned address at or above `ram_base` (both
    /// placements allow that base). Errors if the kernel would not fit.
    pub fn load_addr(&self, ram_base: u64, ram_size: u64) -> Result<u64, Arm64ImageError> {
        let ram_end = ram_base.saturating_add(ram_size);
        let does_not_fit = |load_addr| Arm64ImageError::DoesNotFit {
            load_addr,
            need: self.image_size,
            ram_end,
        };
        let base = ram_base
            .checked_add(ARM64_BASE_ALIGN - 1)
            .map(|v| v & !(ARM64_BASE_ALIGN - 1))
            .ok_or_else(|| does_not_fit(ram_base))?;
        let load = base
            .checked_add(self.text_offset)
            .ok_or_else(|| does_not_fit(base))?;
        match load.checked_add(self.image_size) {
            Some(end) if end <= ram_end => Ok(load),
            _ => Err(does_not_fit(load)),
        }
    }
}

/// A checked arm64 Image and what kind of guest it is.
#[derive(Clone)]
pub struct Arm64Image {
    bytes: Vec<u8>,
    header: Arm64Header,
    kind: ImageKind,
}

impl fmt::Debug for Arm64Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arm64Image")
            .field("len", &self.bytes.len())
            .field("header", &self.header)
            .field("kind", &self.kind)
            .finish()
    }
}

/// Why an arm64 Image file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Arm64FileError {
    /// The file could not be read.
    #[error("arm64 kernel Image {path} could not be read ({source}): check the path")]
    Read {
        /// The path given.
        path: std::path::PathBuf,
        /// What the OS reported.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a bootable arm64 Image.
    #[error("arm64 kernel Image {path}: {source}")]
    Bad {
        /// The path given.
        path: std::path::PathBuf,
        /// What is wrong with it.
        #[source]
        source: Arm64ImageError,
    },
}

impl Arm64Image {
    /// Reads and checks the Image at `path`; errors name the path.
    pub fn from_file(path: &Path) -> Result<Arm64Image, Arm64FileError> {
        let bytes = std::fs::read(path).map_err(|source| Arm64FileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Arm64Image::from_bytes(bytes).map_err(|source| Arm64FileError::Bad {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks an Image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Arm64Image, Arm64ImageError> {
        let header = Arm64Header::parse(&bytes)?;
        let kind = crate::kind::of_arm64(&bytes);
        Ok(Arm64Image {
            bytes,
            header,
            kind,
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Arm64Header {
        &self.header
    }

    /// What kind of guest it looks like (Linux, Unikraft, our probe, or unknown).
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// The whole file: it is copied to [`Arm64Header::load_addr`] unchanged, and the
    /// rest of `image_size` is zeroed.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic header with the given fields and `len` bytes in all.
    fn image(text_offset: u64, image_size: u64, flags: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len.max(ARM64_HEADER_LEN)];
        b[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b #0x40
        b[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
        b[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        b[0x18..0x20].copy_from_slice(&flags.to_le_bytes());
        b[0x38..0x3c].copy_from_slice(b"ARM\x64");
        b.truncate(len);
        b
    }

    #[test]
    fn magic_is_arm_0x64_at_0x38() {
        assert_eq!(&ARM64_MAGIC.to_le_bytes(), b"ARM\x64");
        assert!(looks_like_arm64_image(&image(0, 0x1000, 0, 0x1000)));
        let mut shifted = vec![0u8; 4];
        shifted.extend(image(0, 0x1000, 0, 0x1000));
        assert!(!looks_like_arm64_image(&shifted));
    }

    #[test]
    fn a_modern_header_gives_its_fields() {
        // 4 KiB pages, placed anywhere: what defconfig arm64 kernels carry (flags 0xa).
        let h = Arm64Header::parse(&image(0, 0x2a0_0000, 0xa, 0x1000)).expect("valid");
        assert_eq!(h.text_offset, 0);
        assert_eq!(h.image_size, 0x2a0_0000);
        assert!(h.has_image_size);
        assert!(!h.big_endian);
        assert_eq!(h.page_size, Arm64PageSize::K4);
        assert!(h.place_anywhere);
        assert_eq!(h.flags, 0xa);
    }

    #[test]
    fn every_page_size_and_placement_bit_is_decoded() {
        let cases = [
            (0b000, Arm64PageSize::Unspecified, false),
            (0b010, Arm64PageSize::K4, false),
            (0b100, Arm64PageSize::K16, false),
            (0b110, Arm64PageSize::K64, false),
            (0b1100, Arm64PageSize::K16, true),
        ];
        for (flags, page, anywhere) in cases {
            let h = Arm64Header::parse(&image(0x8_0000, 0x10_0000, flags, 0x100)).expect("valid");
            assert_eq!(h.page_size, page, "flags {flags:#b}");
            assert_eq!(h.place_anywhere, anywhere, "flags {flags:#b}");
        }
        assert_eq!(Arm64PageSize::K16.bytes(), Some(16384));
        assert_eq!(Arm64PageSize::K16.to_string(), "16 KiB");
    }

    #[test]
    fn old_kernels_without_image_size_get_the_legacy_text_offset() {
        let h = Arm64Header::parse(&image(0x1234, 0, 0, 0x3000)).expect("valid");
        assert!(!h.has_image_size);
        assert_eq!(h.text_offset, ARM64_LEGACY_TEXT_OFFSET);
        assert_eq!(h.image_size, 0x3000);
    }

    #[test]
    fn image_size_never_is_less_than_the_file() {
        let h = Arm64Header::parse(&image(0, 0x100, 0, 0x2000)).expect("valid");
        assert_eq!(h.image_size, 0x2000);
    }

    #[test]
    fn big_endian_kernels_are_refused() {
        let err = Arm64Header::parse(&image(0, 0x1000, 0b1011, 0x100)).unwrap_err();
        assert_eq!(err, Arm64ImageError::BigEndian);
        assert!(err.to_string().contains("big-endian"));
    }

    #[test]
    fn short_and_wrong_inputs_are_refused_with_what_was_found() {
        for len in [0, 1, 0x3b, 0x3f] {
            let err = Arm64Header::parse(&image(0, 0x1000, 0, len)).unwrap_err();
            assert_eq!(err, Arm64ImageError::TooShort { len });
        }
        let mut b = image(0, 0x1000, 0, 0x100);
        b[0x38..0x3c].copy_from_slice(b"\x7fELF");
        let err = Arm64Header::parse(&b).unwrap_err();
        assert_eq!(err, Arm64ImageError::BadMagic { found: 0x464c_457f });
        assert!(err.to_string().contains("0x464c457f"));
    }

    #[test]
    fn sizes_that_overflow_are_refused() {
        let err = Arm64Header::parse(&image(u64::MAX - 0x10, 0x1000, 0, 0x100)).unwrap_err();
        assert!(matches!(err, Arm64ImageError::BadSize { .. }), "{err}");
        let err = Arm64Header::parse(&image(0, u64::MAX, 0, 0x100)).unwrap_err();
        assert!(matches!(err, Arm64ImageError::BadSize { .. }), "{err}");
    }

    #[test]
    fn load_address_is_text_offset_above_the_first_2mib_aligned_base() {
        let h = Arm64Header::parse(&image(0x8_0000, 0x100_0000, 0xa, 0x100)).expect("valid");
        assert_eq!(h.load_addr(0x4000_0000, 1 << 30), Ok(0x4008_0000));
        // A base that is not 2 MiB aligned moves up to the next one.
        assert_eq!(h.load_addr(0x4000_1000, 1 << 30), Ok(0x4028_0000));
        let h0 = Arm64Header::parse(&image(0, 0x100_0000, 0xa, 0x100)).expect("valid");
        assert_eq!(h0.load_addr(0x8000_0000, 1 << 30), Ok(0x8000_0000));
    }

    #[test]
    fn a_kernel_larger_than_ram_is_refused() {
        let h = Arm64Header::parse(&image(0x8_0000, 0x400_0000, 0xa, 0x100)).expect("valid");
        let err = h.load_addr(0x4000_0000, 0x200_0000).unwrap_err();
        assert_eq!(
            err,
            Arm64ImageError::DoesNotFit {
                load_addr: 0x4008_0000,
                need: 0x400_0000,
                ram_end: 0x4200_0000,
            }
        );
        // Exactly enough fits.
        assert_eq!(h.load_addr(0x4000_0000, 0x408_0000), Ok(0x4008_0000));
        assert!(h.load_addr(u64::MAX - 0x1000, 0x1000).is_err());
    }

    #[test]
    fn images_are_classified_by_their_contents() {
        let mut linux = image(0, 0x10_0000, 0xa, 0x200);
        linux.extend(b"Linux version 6.1.0-rpi7-rpi-v8 (gcc)");
        assert_eq!(
            Arm64Image::from_bytes(linux).expect("valid").kind(),
            ImageKind::Linux
        );
        let mut uk = image(0, 0x10_0000, 0xa, 0x200);
        uk.extend(b"Powered by Unikraft Pan (0.16.0)");
        assert_eq!(
            Arm64Image::from_bytes(uk).expect("valid").kind(),
            ImageKind::UnikraftArm64
        );
        let plain = image(0, 0x10_0000, 0xa, 0x200);
        let img = Arm64Image::from_bytes(plain.clone()).expect("valid");
        assert_eq!(img.kind(), ImageKind::Other);
        assert_eq!(img.bytes(), &plain[..]);
        assert_eq!(img.header().image_size, 0x10_0000);
    }

    #[test]
    fn from_file_names_the_path() {
        let dir = std::env::temp_dir().join(format!("images-arm64-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("Image");
        std::fs::write(&path, b"not an image at all").expect("write");
        let err = Arm64Image::from_file(&path).unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(err.to_string().contains("shorter than its 64-byte header"));
        std::fs::write(&path, image(0, 0x1000, 0xa, 0x1000)).expect("write");
        assert!(Arm64Image::from_file(&path).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
