//! Multiboot v1: finding the header in the first 8 KiB and, when its flags ask for it, loading
//! by the header's address fields (the "a.out kludge") instead of by ELF program headers.

use crate::bytes::{to_usize, u32_at};
use crate::{ImageError, Segment};

/// The magic that starts a multiboot v1 header.
pub const MULTIBOOT_MAGIC: u32 = 0x1BAD_B002;
/// The header must lie completely within this many bytes from the start of the file.
pub const MULTIBOOT_SEARCH_LIMIT: usize = 8192;
/// Flags bit 0: align modules on 4 KiB pages.
pub const MULTIBOOT_PAGE_ALIGN: u32 = 1 << 0;
/// Flags bit 1: the kernel wants the memory fields / memory map.
pub const MULTIBOOT_MEMORY_INFO: u32 = 1 << 1;
/// Flags bit 2: the kernel asks for a video mode (edgevisor ignores it: serial only).
pub const MULTIBOOT_VIDEO_MODE: u32 = 1 << 2;
/// Flags bit 16: the header's address fields say where to load the image.
pub const MULTIBOOT_ADDRESS_FIELDS: u32 = 1 << 16;

/// Bits 0-15 are "required": a loader must refuse a kernel that sets one it does not know.
const REQUIRED_BITS: u32 = 0xffff;
const UNDERSTOOD_REQUIRED: u32 =
    MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO | MULTIBOOT_VIDEO_MODE;
/// magic, flags, checksum.
const BASE_LEN: usize = 12;
/// ... then header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr.
const ADDRESS_FIELDS_LEN: usize = 32;

/// A multiboot v1 header found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultibootHeader {
    /// The flags word.
    pub flags: u32,
    /// File offset of the magic.
    pub header_offset: usize,
    /// The address fields, present when flags bit 16 is set.
    pub addresses: Option<MultibootAddresses>,
}

/// The multiboot header's address fields (flags bit 16), all guest-physical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultibootAddresses {
    /// Where the header's magic lands in memory.
    pub header_addr: u32,
    /// Where loading starts (the file is loaded from `header_offset - (header_addr - load_addr)`).
    pub load_addr: u32,
    /// Where the loaded file data ends (0: at the end of the file).
    pub load_end_addr: u32,
    /// Where the zeroed bss ends (0: no bss).
    pub bss_end_addr: u32,
    /// The entry point.
    pub entry_addr: u32,
}

impl MultibootHeader {
    /// Checks that every required flag bit (0-15) is one edgevisor implements.
    pub(crate) fn check_flags(&self) -> Result<(), ImageError> {
        let unknown = self.flags & REQUIRED_BITS & !UNDERSTOOD_REQUIRED;
        if unknown != 0 {
            return Err(ImageError::UnsupportedMultibootFlags {
                flags: self.flags,
                unknown,
            });
        }
        Ok(())
    }
}

/// Looks for the first 4-byte aligned multiboot header with a valid checksum in the first
/// 8 KiB of `b`. A magic with a bad checksum is an error if no valid header follows it.
pub(crate) fn find(b: &[u8]) -> Result<Option<MultibootHeader>, ImageError> {
    let window = &b[..b.len().min(MULTIBOOT_SEARCH_LIMIT)];
    let mut bad_checksum = None;
    for offset in (0..window.len()).step_by(4) {
        let Some(magic) = u32_at(window, offset) else {
            break;
        };
        if magic != MULTIBOOT_MAGIC {
            continue;
        }
        let (Some(flags), Some(checksum)) = (
            u32_at(window, offset.saturating_add(4)),
            u32_at(window, offset.saturating_add(8)),
        ) else {
            break;
        };
        if magic.wrapping_add(flags).wrapping_add(checksum) != 0 {
            bad_checksum.get_or_insert(ImageError::MultibootChecksum {
                offset,
                magic,
                flags,
                checksum,
            });
            continue;
        }
        let addresses = if flags & MULTIBOOT_ADDRESS_FIELDS != 0 {
            Some(read_addresses(window, offset)?)
        } else {
            None
        };
        return Ok(Some(MultibootHeader {
            flags,
            header_offset: offset,
            addresses,
        }));
    }
    match bad_checksum {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

fn read_addresses(window: &[u8], offset: usize) -> Result<MultibootAddresses, ImageError> {
    let field = |i: usize| {
        u32_at(window, offset + BASE_LEN + 4 * i).ok_or_else(|| ImageError::BadMultibootAddresses {
            problem: format!(
                "the {ADDRESS_FIELDS_LEN}-byte header at file offset {offset:#x} does not fit in the file's first {MULTIBOOT_SEARCH_LIMIT} bytes"
            ),
        })
    };
    Ok(MultibootAddresses {
        header_addr: field(0)?,
        load_addr: field(1)?,
        load_end_addr: field(2)?,
        bss_end_addr: field(3)?,
        entry_addr: field(4)?,
    })
}

/// The one segment the address fields describe, for a file of `file_len` bytes.
pub(crate) fn address_fields_segment(
    file_len: usize,
    header_offset: usize,
    a: &MultibootAddresses,
) -> Result<Segment, ImageError> {
    let bad = |problem: String| ImageError::BadMultibootAddresses { problem };
    let (load, header) = (u64::from(a.load_addr), u64::from(a.header_addr));
    let before_header = header.checked_sub(load).ok_or_else(|| {
        bad(format!(
            "load_addr {load:#x} is above header_addr {header:#x}"
        ))
    })?;
    let file_offset = to_usize(before_header)
        .and_then(|d| header_offset.checked_sub(d))
        .ok_or_else(|| {
            bad(format!(
                "load_addr {load:#x} would start loading {before_header:#x} bytes before the header, which is only {header_offset:#x} bytes into the file"
            ))
        })?;
    let available = file_len - file_offset.min(file_len);
    let file_size = match a.load_end_addr {
        0 => available,
        end => {
            let size = u64::from(end).checked_sub(load).ok_or_else(|| {
                bad(format!(
                    "load_end_addr {end:#x} is below load_addr {load:#x}"
                ))
            })?;
            match to_usize(size) {
                Some(s) if s <= available => s,
                _ => {
                    return Err(bad(format!(
                        "load_end_addr {end:#x} asks for {size:#x} bytes but the file has only {available:#x} after offset {file_offset:#x}"
                    )))
                }
            }
        }
    };
    let data_end = load + file_size as u64;
    let mem_size = match a.bss_end_addr {
        0 => file_size as u64,
        end if u64::from(end) >= data_end => u64::from(end) - load,
        end => {
            return Err(bad(format!(
                "bss_end_addr {end:#x} is below the end of the loaded data {data_end:#x}"
            )))
        }
    };
    Ok(Segment {
        guest_addr: load,
        file_offset,
        file_size,
        mem_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32, at: usize, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[at..at + 4].copy_from_slice(&MULTIBOOT_MAGIC.to_le_bytes());
        b[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
        let sum = 0u32.wrapping_sub(MULTIBOOT_MAGIC).wrapping_sub(flags);
        b[at + 8..at + 12].copy_from_slice(&sum.to_le_bytes());
        b
    }

    #[test]
    fn finds_an_aligned_header_and_skips_misaligned_magic() {
        let mut b = header(3, 0x40, 0x100);
        // An unaligned copy of the magic before it must be ignored.
        b[0x11..0x15].copy_from_slice(&MULTIBOOT_MAGIC.to_le_bytes());
        let h = find(&b).unwrap().unwrap();
        assert_eq!((h.flags, h.header_offset, h.addresses), (3, 0x40, None));
    }

    #[test]
    fn header_beyond_8k_is_not_found() {
        let b = header(3, MULTIBOOT_SEARCH_LIMIT, MULTIBOOT_SEARCH_LIMIT + 64);
        assert_eq!(find(&b).unwrap(), None);
        let b = header(3, MULTIBOOT_SEARCH_LIMIT - 12, MULTIBOOT_SEARCH_LIMIT + 64);
        assert!(find(&b).unwrap().is_some());
    }

    #[test]
    fn bad_checksum_is_reported_unless_a_good_header_follows() {
        let mut b = header(3, 0x20, 0x100);
        b[0x28] ^= 1;
        assert!(matches!(
            find(&b),
            Err(ImageError::MultibootChecksum { offset: 0x20, .. })
        ));
        let good = header(3, 0x80, 0x100);
        b[0x80..0x8c].copy_from_slice(&good[0x80..0x8c]);
        assert_eq!(find(&b).unwrap().map(|h| h.header_offset), Some(0x80));
    }

    #[test]
    fn required_flag_bits_are_checked() {
        let h = |flags| MultibootHeader {
            flags,
            header_offset: 0,
            addresses: None,
        };
        assert!(h(0x7).check_flags().is_ok());
        assert!(h(0x7 | MULTIBOOT_ADDRESS_FIELDS | 0x8000_0000)
            .check_flags()
            .is_ok());
        assert!(matches!(
            h(0x1 | 0x8).check_flags(),
            Err(ImageError::UnsupportedMultibootFlags { unknown: 0x8, .. })
        ));
    }

    #[test]
    fn address_fields_segment_math() {
        let a = MultibootAddresses {
            header_addr: 0x10_0040,
            load_addr: 0x10_0000,
            load_end_addr: 0x10_0800,
            bss_end_addr: 0x10_2000,
            entry_addr: 0x10_0100,
        };
        let s = address_fields_segment(0x1000, 0x40, &a).unwrap();
        assert_eq!(
            s,
            Segment {
                guest_addr: 0x10_0000,
                file_offset: 0,
                file_size: 0x800,
                mem_size: 0x2000
            }
        );
        let to_eof = MultibootAddresses {
            load_end_addr: 0,
            bss_end_addr: 0,
            ..a
        };
        let s = address_fields_segment(0x1000, 0x40, &to_eof).unwrap();
        assert_eq!((s.file_size, s.mem_size), (0x1000, 0x1000));
        let before_file = MultibootAddresses {
            load_addr: 0x0f_0000,
            ..a
        };
        assert!(address_fields_segment(0x1000, 0x40, &before_file).is_err());
        let past_eof = MultibootAddresses {
            load_end_addr: 0x10_1001,
            ..a
        };
        assert!(address_fields_segment(0x1000, 0x40, &past_eof).is_err());
        let bss_low = MultibootAddresses {
            bss_end_addr: 0x10_0400,
            ..a
        };
        assert!(address_fields_segment(0x1000, 0x40, &bss_low).is_err());
    }
}
