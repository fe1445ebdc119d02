//! Linux bzImage: the real-mode setup header at 0x1F1 and the protected-mode kernel after the
//! setup sectors, entered through its 64-bit entry point (Documentation/arch/x86/boot.rst).

use crate::bytes::{slice, u16_at, u32_at, u64_at, u8_at};
use crate::{ImageError, SetupInfo};

/// Where the setup header starts in the file (and in the zero page).
pub const SETUP_HEADER_OFFSET: usize = 0x1F1;
/// Size of `struct setup_header` as of boot protocol 2.15.
pub const SETUP_HEADER_MAX_LEN: usize = 0x7B;
/// Where a bzImage's protected-mode kernel is loaded.
pub const BZIMAGE_LOAD_ADDR: u64 = 0x10_0000;
/// The 64-bit entry point's offset from the load address.
pub const BZIMAGE_ENTRY_64_OFFSET: u64 = 0x200;

const SYSSIZE_OFFSET: usize = 0x1F4;
const BOOT_FLAG_OFFSET: usize = 0x1FE;
const BOOT_FLAG: u16 = 0xAA55;
const JUMP_OFFSET_BYTE: usize = 0x201;
const HEADER_MAGIC_OFFSET: usize = 0x202;
const HEADER_MAGIC: &[u8; 4] = b"HdrS";
const VERSION_OFFSET: usize = 0x206;
const LOADFLAGS_OFFSET: usize = 0x211;
const INITRD_ADDR_MAX_OFFSET: usize = 0x22C;
const KERNEL_ALIGNMENT_OFFSET: usize = 0x230;
const XLOADFLAGS_OFFSET: usize = 0x236;
const CMDLINE_SIZE_OFFSET: usize = 0x238;
const PREF_ADDRESS_OFFSET: usize = 0x258;
const INIT_SIZE_OFFSET: usize = 0x260;

/// loadflags bit 0: the protected-mode code is loaded at 0x100000.
pub const LOADED_HIGH: u8 = 1 << 0;
/// xloadflags bit 0: the kernel has the 64-bit entry point at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;

const MIN_VERSION: u16 = 0x0206;
const SECTOR: usize = 512;

/// What the loader takes from a bzImage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BzImage {
    pub setup: SetupInfo,
    /// File bytes from 0x1F1 to the end of the setup header.
    pub setup_header: Vec<u8>,
    /// Where the protected-mode kernel starts in the file.
    pub payload_offset: usize,
}

/// Whether `b` carries the boot sector signature and the "HdrS" setup header magic.
pub(crate) fn looks_like_bzimage(b: &[u8]) -> bool {
    u16_at(b, BOOT_FLAG_OFFSET) == Some(BOOT_FLAG)
        && slice(b, HEADER_MAGIC_OFFSET, 4) == Some(HEADER_MAGIC)
}

/// Parses and checks the setup header of `b` (which [`looks_like_bzimage`]).
pub(crate) fn parse(b: &[u8]) -> Result<BzImage, ImageError> {
    let len = b.len();
    let trunc = |part| ImageError::BzImageTruncated { part, len };
    let version = u16_at(b, VERSION_OFFSET).ok_or_else(|| trunc("setup header"))?;
    let [minor, major] = version.to_le_bytes();
    if version < MIN_VERSION {
        return Err(ImageError::BzImageTooOld { major, minor });
    }
    let u32_field = |off| u32_at(b, off).ok_or_else(|| trunc("setup header"));
    let loadflags = u8_at(b, LOADFLAGS_OFFSET).ok_or_else(|| trunc("setup header"))?;
    let xloadflags = if version >= 0x020C {
        u16_at(b, XLOADFLAGS_OFFSET).ok_or_else(|| trunc("setup header"))?
    } else {
        0
    };
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(ImageError::BzImageNot64Bit {
            major,
            minor,
            xloadflags,
        });
    }
    if loadflags & LOADED_HIGH == 0 {
        return Err(ImageError::BzImageNotLoadedHigh { loadflags });
    }
    let (pref_address, init_size) = if version >= 0x020A {
        (
            u64_at(b, PREF_ADDRESS_OFFSET).ok_or_else(|| trunc("setup header"))?,
            u32_field(INIT_SIZE_OFFSET)?,
        )
    } else {
        (0, 0)
    };
    let setup = SetupInfo {
        version,
        loadflags,
        xloadflags,
        cmdline_size: u32_field(CMDLINE_SIZE_OFFSET)?,
        initrd_addr_max: u32_field(INITRD_ADDR_MAX_OFFSET)?,
        kernel_alignment: u32_field(KERNEL_ALIGNMENT_OFFSET)?,
        init_size,
        pref_address,
    };

    let jump = usize::from(u8_at(b, JUMP_OFFSET_BYTE).ok_or_else(|| trunc("setup header"))?);
    let header_end = (HEADER_MAGIC_OFFSET + jump).min(SETUP_HEADER_OFFSET + SETUP_HEADER_MAX_LEN);
    let setup_header = b
        .get(SETUP_HEADER_OFFSET..header_end)
        .ok_or_else(|| trunc("setup header"))?
        .to_vec();

    let setup_sects = match u8_at(b, SETUP_HEADER_OFFSET).ok_or_else(|| trunc("setup header"))? {
        0 => 4,
        n => usize::from(n),
    };
    let payload_offset = (setup_sects + 1) * SECTOR;
    if payload_offset >= len {
        return Err(ImageError::BzImageNoPayload {
            setup_sects: setup_sects as u32,
            len,
        });
    }
    // syssize (4 bytes wide since 2.04) is the protected-mode size in 16-byte paragraphs; a
    // file shorter than that lost its tail. Longer is fine (signatures get appended).
    let syssize = u32_field(SYSSIZE_OFFSET)?;
    let paragraphs = (len - payload_offset).div_ceil(16);
    if paragraphs < syssize as usize {
        return Err(trunc(
            "protected-mode kernel (the file is shorter than its syssize field says)",
        ));
    }
    Ok(BzImage {
        setup,
        setup_header,
        payload_offset,
    })
}
