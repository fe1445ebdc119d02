//! Guest-physical memory layout on x86_64 (docs/GUEST_INTERFACE.md is the contract).

/// Global descriptor table.
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty; the guest loads its own).
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map, right after the start info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// PVH module list.
pub const PVH_MODLIST_START: u64 = 0x6400;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Multiboot information structure.
pub const MB_INFO_START: u64 = 0x8000;
/// Multiboot memory map.
pub const MB_MMAP_START: u64 = 0x8100;
/// Multiboot module list.
pub const MB_MODS_START: u64 = 0x8400;
/// Multiboot boot loader name and module strings.
pub const MB_STRINGS_START: u64 = 0x8800;
/// Initial stack pointer handed to every protocol (a scratch stack below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_START: u64 = 0xa000;
/// First of four page directories (identity map of 0-4 GiB with 2 MiB pages).
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we place (NUL included).
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// MP floating pointer and configuration table.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of conventional memory below the EBDA/BIOS area.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory, where kernels load.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Start of the MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Start of the 32-bit PCI memory window the VMM allocates BARs in (only with a PCI bus).
pub const PCI_MMIO_START: u64 = MMIO_HOLE_START;
/// End (exclusive) of the PCI memory window: where the virtio-mmio windows begin.
pub const PCI_MMIO_END: u64 = 0xd000_0000;
/// First address above 4 GiB.
pub const RAM_ABOVE_4G_START: u64 = 1 << 32;

/// e820 / multiboot / PVH memory type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 / multiboot / PVH memory type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One entry of the guest's memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820_RAM or E820_RESERVED.
    pub kind: u32,
}

/// The host mappings backing `mem_bytes` of guest RAM: one range below the MMIO hole, and
/// one above 4 GiB for what does not fit below it.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    let low = mem_bytes.min(MMIO_HOLE_START);
    let mut ranges = vec![(0, low)];
    if mem_bytes > low {
        ranges.push((RAM_ABOVE_4G_START, mem_bytes - low));
    }
    ranges
}

/// The memory map every boot protocol reports to the guest.
pub fn memory_map(mem_bytes: u64) -> Vec<MemoryMapEntry> {
    let low_end = mem_bytes.min(MMIO_HOLE_START);
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: HIGH_MEMORY_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    if low_end > HIGH_MEMORY_START {
        map.push(MemoryMapEntry {
            addr: HIGH_MEMORY_START,
            size: low_end - HIGH_MEMORY_START,
            kind: E820_RAM,
        });
    }
    if mem_bytes > low_end {
        map.push(MemoryMapEntry {
            addr: RAM_ABOVE_4G_START,
            size: mem_bytes - low_end,
            kind: E820_RAM,
        });
    }
    map
}

/// End (exclusive) of the RAM that is addressable below 4 GiB.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_range_and_three_map_entries() {
        assert_eq!(ram_ranges(64 << 20), vec![(0, 64 << 20)]);
        let map = memory_map(64 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2].addr, HIGH_MEMORY_START);
        assert_eq!(map[2].size, (64 << 20) - HIGH_MEMORY_START);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (64 << 20) - (HIGH_MEMORY_START - EBDA_START));
    }

    #[test]
    fn large_guest_splits_around_the_mmio_hole() {
        let mem = 4u64 << 30;
        assert_eq!(
            ram_ranges(mem),
            vec![(0, MMIO_HOLE_START), (1 << 32, (1 << 30))]
        );
        let map = memory_map(mem);
        assert_eq!(map.last().unwrap().addr, 1 << 32);
        assert_eq!(map.last().unwrap().size, 1 << 30);
        assert!(map
            .iter()
            .all(|e| e.addr + e.size <= MMIO_HOLE_START || e.addr >= 1 << 32));
    }
}
