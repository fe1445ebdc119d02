//! The structures each boot protocol hands the guest: the Linux zero page, PVH's
//! `hvm_start_info` and the multiboot v1 information block.
//!
//! They are built as little-endian byte blocks at fixed offsets (the layouts are ABI) and
//! written into guest memory by the caller.

use super::layout::*;

/// Where the kernel command line and initrd were placed.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootInputs {
    /// Guest RAM size in bytes.
    pub mem_bytes: u64,
    /// Command line length in bytes, without the NUL (it sits at CMDLINE_START).
    pub cmdline_len: usize,
    /// Initrd start and size, if any.
    pub initrd: Option<(u64, u64)>,
}

/// A block of bytes with little-endian field writers.
pub struct Block(pub Vec<u8>);

impl Block {
    fn new(size: usize) -> Self {
        Block(vec![0; size])
    }
    fn put(&mut self, off: usize, bytes: &[u8]) {
        self.0[off..off + bytes.len()].copy_from_slice(bytes);
    }
    fn u8(&mut self, off: usize, v: u8) {
        self.0[off] = v;
    }
    fn u16(&mut self, off: usize, v: u16) {
        self.put(off, &v.to_le_bytes());
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.put(off, &v.to_le_bytes());
    }
    fn u64(&mut self, off: usize, v: u64) {
        self.put(off, &v.to_le_bytes());
    }
}

// Zero page (struct boot_params) offsets, from Documentation/arch/x86/zero-page.rst and boot.rst.
const ZP_ACPI_RSDP_ADDR: usize = 0x070;
const ZP_EXT_RAMDISK_IMAGE: usize = 0x0c0;
const ZP_EXT_RAMDISK_SIZE: usize = 0x0c4;
const ZP_EXT_CMD_LINE_PTR: usize = 0x0c8;
const ZP_E820_ENTRIES: usize = 0x1e8;
const ZP_SETUP_HEADER: usize = 0x1f1;
const ZP_BOOT_FLAG: usize = 0x1fe;
const ZP_HEADER: usize = 0x202;
const ZP_VERSION: usize = 0x206;
const ZP_TYPE_OF_LOADER: usize = 0x210;
#[cfg(test)]
const ZP_LOADFLAGS: usize = 0x211;
const ZP_RAMDISK_IMAGE: usize = 0x218;
const ZP_RAMDISK_SIZE: usize = 0x21c;
const ZP_CMD_LINE_PTR: usize = 0x228;
const ZP_KERNEL_ALIGNMENT: usize = 0x230;
const ZP_CMDLINE_SIZE: usize = 0x238;
const ZP_E820_TABLE: usize = 0x2d0;
const E820_MAX_ENTRIES: usize = 128;
/// Size of `struct setup_header` from 0x1f1 through 0x26b.
pub const SETUP_HEADER_MAX: usize = 0x7b;

/// Builds the Linux zero page. `setup_header` is the bzImage's own header (copied first, as
/// boot.rst asks of a boot loader); ELF vmlinux images get a synthetic one.
pub fn zero_page(inputs: &BootInputs, setup_header: Option<&[u8]>) -> Block {
    let mut zp = Block::new(4096);
    match setup_header {
        Some(hdr) => {
            let n = hdr.len().min(SETUP_HEADER_MAX);
            zp.put(ZP_SETUP_HEADER, &hdr[..n]);
        }
        None => {
            zp.u16(ZP_VERSION, 0x020f);
            zp.u32(ZP_KERNEL_ALIGNMENT, 0x0100_0000);
        }
    }
    zp.u64(ZP_ACPI_RSDP_ADDR, super::acpi::RSDP_START);
    zp.u16(ZP_BOOT_FLAG, 0xaa55);
    zp.put(ZP_HEADER, b"HdrS");
    // 0xff: a boot loader with no assigned id.
    zp.u8(ZP_TYPE_OF_LOADER, 0xff);
    zp.u32(ZP_CMD_LINE_PTR, CMDLINE_START as u32);
    zp.u32(ZP_EXT_CMD_LINE_PTR, (CMDLINE_START >> 32) as u32);
    zp.u32(ZP_CMDLINE_SIZE, inputs.cmdline_len as u32);
    if let Some((addr, size)) = inputs.initrd {
        zp.u32(ZP_RAMDISK_IMAGE, addr as u32);
        zp.u32(ZP_RAMDISK_SIZE, size as u32);
        zp.u32(ZP_EXT_RAMDISK_IMAGE, (addr >> 32) as u32);
        zp.u32(ZP_EXT_RAMDISK_SIZE, (size >> 32) as u32);
    }
    let map = memory_map(inputs.mem_bytes);
    for (i, e) in map.iter().take(E820_MAX_ENTRIES).enumerate() {
        let off = ZP_E820_TABLE + i * 20;
        zp.u64(off, e.addr);
        zp.u64(off + 8, e.size);
        zp.u32(off + 16, e.kind);
    }
    zp.u8(ZP_E820_ENTRIES, map.len().min(E820_MAX_ENTRIES) as u8);
    zp
}

/// `hvm_start_info` magic ("xEn3" with the top bit set).
pub const PVH_MAGIC: u32 = 0x336e_c578;

/// The PVH blocks: start info at PVH_INFO_START, memory map at PVH_MEMMAP_START, modules at
/// PVH_MODLIST_START. Returned as (address, bytes) pairs.
pub fn pvh_start_info(inputs: &BootInputs) -> Vec<(u64, Block)> {
    let map = memory_map(inputs.mem_bytes);
    let mut info = Block::new(0x38);
    info.u32(0x00, PVH_MAGIC);
    info.u32(0x04, 1); // version 1: has the memory map fields
    info.u32(0x0c, inputs.initrd.is_some() as u32); // nr_modules
    info.u64(0x10, PVH_MODLIST_START);
    info.u64(0x18, CMDLINE_START);
    info.u64(0x20, super::acpi::RSDP_START); // rsdp_paddr
    info.u64(0x28, PVH_MEMMAP_START);
    info.u32(0x30, map.len() as u32);

    let mut memmap = Block::new(map.len() * 24);
    for (i, e) in map.iter().enumerate() {
        memmap.u64(i * 24, e.addr);
        memmap.u64(i * 24 + 8, e.size);
        memmap.u32(i * 24 + 16, e.kind);
    }
    let mut out = vec![(PVH_INFO_START, info), (PVH_MEMMAP_START, memmap)];
    if let Some((addr, size)) = inputs.initrd {
        let mut modlist = Block::new(32);
        modlist.u64(0, addr);
        modlist.u64(8, size);
        out.push((PVH_MODLIST_START, modlist));
    }
    out
}

/// Value in EAX at a multiboot entry.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
const MB_FLAG_MEM: u32 = 1 << 0;
const MB_FLAG_CMDLINE: u32 = 1 << 2;
const MB_FLAG_MODS: u32 = 1 << 3;
const MB_FLAG_MMAP: u32 = 1 << 6;
const MB_FLAG_LOADER_NAME: u32 = 1 << 9;
const LOADER_NAME: &[u8] = b"edgevisor\0";
const MODULE_NAME: &[u8] = b"initrd\0";

/// The multiboot v1 information block and what it points to.
pub fn multiboot_info(inputs: &BootInputs) -> Vec<(u64, Block)> {
    let map = memory_map(inputs.mem_bytes);
    let mut info = Block::new(0x58);
    let mut flags = MB_FLAG_MEM | MB_FLAG_CMDLINE | MB_FLAG_MMAP | MB_FLAG_LOADER_NAME;
    // mem_lower / mem_upper in KiB: conventional memory, and contiguous memory above 1 MiB.
    info.u32(0x04, (EBDA_START / 1024) as u32);
    let upper = low_ram_end(inputs.mem_bytes).saturating_sub(HIGH_MEMORY_START) / 1024;
    info.u32(0x08, upper.min(u32::MAX as u64) as u32);
    info.u32(0x10, CMDLINE_START as u32);
    info.u32(0x2c, (map.len() * 24) as u32); // mmap_length
    info.u32(0x30, MB_MMAP_START as u32);
    info.u32(0x40, MB_STRINGS_START as u32);

    let mut mmap = Block::new(map.len() * 24);
    for (i, e) in map.iter().enumerate() {
        mmap.u32(i * 24, 20); // size of the entry without this field
        mmap.u64(i * 24 + 4, e.addr);
        mmap.u64(i * 24 + 12, e.size);
        mmap.u32(i * 24 + 20, e.kind);
    }
    let mut strings = Block::new(LOADER_NAME.len() + MODULE_NAME.len());
    strings.put(0, LOADER_NAME);
    strings.put(LOADER_NAME.len(), MODULE_NAME);

    let mut out = Vec::new();
    if let Some((addr, size)) = inputs.initrd {
        flags |= MB_FLAG_MODS;
        info.u32(0x14, 1);
        info.u32(0x18, MB_MODS_START as u32);
        let mut mods = Block::new(16);
        mods.u32(0, addr as u32);
        mods.u32(4, (addr + size) as u32);
        mods.u32(8, (MB_STRINGS_START + LOADER_NAME.len() as u64) as u32);
        out.push((MB_MODS_START, mods));
    }
    info.u32(0x00, flags);
    out.push((MB_INFO_START, info));
    out.push((MB_MMAP_START, mmap));
    out.push((MB_STRINGS_START, strings));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &Block, off: usize) -> u32 {
        u32::from_le_bytes(b.0[off..off + 4].try_into().unwrap())
    }

    fn inputs() -> BootInputs {
        BootInputs {
            mem_bytes: 128 << 20,
            cmdline_len: 12,
            initrd: Some((0x700_0000, 0x1234)),
        }
    }

    #[test]
    fn zero_page_has_magic_cmdline_initrd_and_e820() {
        let zp = zero_page(&inputs(), None);
        assert_eq!(&zp.0[ZP_HEADER..ZP_HEADER + 4], b"HdrS");
        assert_eq!(u16::from_le_bytes([zp.0[0x1fe], zp.0[0x1ff]]), 0xaa55);
        assert_eq!(u32_at(&zp, ZP_CMD_LINE_PTR), CMDLINE_START as u32);
        assert_ne!(
            u32_at(&zp, ZP_CMD_LINE_PTR),
            0,
            "Unikraft lxboot crashes on 0"
        );
        assert_eq!(u32_at(&zp, ZP_RAMDISK_IMAGE), 0x700_0000);
        assert_eq!(u32_at(&zp, ZP_RAMDISK_SIZE), 0x1234);
        assert_eq!(zp.0[ZP_E820_ENTRIES], 3);
        assert_eq!(
            u32_at(&zp, ZP_ACPI_RSDP_ADDR),
            super::super::acpi::RSDP_START as u32
        );
        let last = ZP_E820_TABLE + 2 * 20;
        assert_eq!(u32_at(&zp, last), HIGH_MEMORY_START as u32);
        assert_eq!(u32_at(&zp, last + 16), E820_RAM);
    }

    #[test]
    fn zero_page_keeps_the_bzimage_header_but_overrides_loader_fields() {
        let mut hdr = vec![0u8; SETUP_HEADER_MAX];
        hdr[0] = 7; // setup_sects
        hdr[0x206 - 0x1f1] = 0x0f; // version 0x020f
        hdr[0x207 - 0x1f1] = 0x02;
        hdr[0x211 - 0x1f1] = 0x01; // LOADED_HIGH
        let zp = zero_page(&inputs(), Some(&hdr));
        assert_eq!(zp.0[0x1f1], 7);
        assert_eq!(zp.0[ZP_LOADFLAGS], 0x01);
        assert_eq!(zp.0[ZP_TYPE_OF_LOADER], 0xff);
        assert_eq!(u32_at(&zp, ZP_CMD_LINE_PTR), CMDLINE_START as u32);
    }

    #[test]
    fn pvh_info_points_at_its_tables() {
        let blocks = pvh_start_info(&inputs());
        let (addr, info) = &blocks[0];
        assert_eq!(*addr, PVH_INFO_START);
        assert_eq!(u32_at(info, 0), PVH_MAGIC);
        assert_eq!(u32_at(info, 0x0c), 1);
        assert_eq!(u32_at(info, 0x28), PVH_MEMMAP_START as u32);
        assert_eq!(u32_at(info, 0x30), 3);
        assert_eq!(u32_at(info, 0x20), super::super::acpi::RSDP_START as u32);
        let modlist = &blocks[2].1;
        assert_eq!(u32_at(modlist, 0), 0x700_0000);
        assert_eq!(u32_at(modlist, 8), 0x1234);
    }

    #[test]
    fn multiboot_info_has_required_flags_and_module() {
        let blocks = multiboot_info(&inputs());
        let info = &blocks.iter().find(|(a, _)| *a == MB_INFO_START).unwrap().1;
        let flags = u32_at(info, 0);
        assert_eq!(flags & MB_FLAG_MMAP, MB_FLAG_MMAP);
        assert_eq!(flags & MB_FLAG_MODS, MB_FLAG_MODS);
        assert_eq!(u32_at(info, 0x14), 1);
        let mods = &blocks.iter().find(|(a, _)| *a == MB_MODS_START).unwrap().1;
        assert_eq!(u32_at(mods, 4), 0x700_0000 + 0x1234);
        let mmap = &blocks.iter().find(|(a, _)| *a == MB_MMAP_START).unwrap().1;
        assert_eq!(u32_at(mmap, 0), 20);
        // No initrd: no MODS flag.
        let none = multiboot_info(&BootInputs {
            initrd: None,
            ..inputs()
        });
        let info = &none.iter().find(|(a, _)| *a == MB_INFO_START).unwrap().1;
        assert_eq!(u32_at(info, 0) & MB_FLAG_MODS, 0);
    }
}
