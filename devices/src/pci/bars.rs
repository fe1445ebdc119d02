//! BAR registers: what the guest reads and writes at 0x10..0x28 of a type 0 header.
//!
//! An address register keeps only the bits above the BAR's size (the rest are hard-wired
//! zero), so writing all ones and reading back yields the size mask, as on hardware. A
//! 64-bit BAR takes two registers; the second holds the upper half.

/// The kind of a memory BAR. I/O BARs are not offered (see docs/GUEST_INTERFACE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// Memory anywhere below 4 GiB (type 00).
    Mem32,
    /// Memory anywhere in 64 bits (type 10), taking this register and the next.
    Mem64,
}

/// One memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// 32- or 64-bit.
    pub kind: BarKind,
    /// Size in bytes: a power of two, at least 16.
    pub size: u64,
    /// The prefetchable bit.
    pub prefetchable: bool,
    /// Address as the guest last programmed it (bits below `size` are zero).
    pub address: u64,
}

impl Bar {
    /// The low bits of the first register: type and prefetchable.
    fn flags(&self) -> u32 {
        let kind = match self.kind {
            BarKind::Mem32 => 0,
            BarKind::Mem64 => 0b100,
        };
        kind | if self.prefetchable { 1 << 3 } else { 0 }
    }

    /// Whether `[addr, addr + len)` lies inside the BAR; the offset into it if so.
    pub fn offset_of(&self, addr: u64, len: u64) -> Option<u64> {
        let offset = addr.checked_sub(self.address)?;
        (offset.checked_add(len)? <= self.size).then_some(offset)
    }
}

/// Why a BAR cannot be declared or placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BarError {
    /// Index out of 0..6, or a 64-bit BAR in register 5, or on top of another BAR.
    #[error("BAR {index} cannot be declared there (out of range, 64-bit in BAR 5, or overlapping another BAR)")]
    BadIndex {
        /// The index.
        index: usize,
    },
    /// Not a power of two of at least 16 bytes, or a 32-bit BAR of 4 GiB or more.
    #[error("BAR {index} has size {size:#x}: a BAR is a power of two of at least 16 bytes (below 4 GiB for a 32-bit BAR)")]
    BadSize {
        /// The index.
        index: usize,
        /// The size.
        size: u64,
    },
    /// The window has no room left.
    #[error("no room for a {size:#x}-byte BAR in the PCI window {start:#x}..{end:#x}: pass through fewer devices")]
    WindowFull {
        /// The size asked for.
        size: u64,
        /// Window start.
        start: u64,
        /// Window end (exclusive).
        end: u64,
    },
}

/// The six BAR registers of a type 0 header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BarSet {
    bars: [Option<Bar>; 6],
}

impl BarSet {
    /// No BARs: every register reads 0 and ignores writes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares BAR `index` with address 0.
    pub fn declare(
        &mut self,
        index: usize,
        kind: BarKind,
        size: u64,
        prefetchable: bool,
    ) -> Result<(), BarError> {
        let regs = match kind {
            BarKind::Mem32 => 1,
            BarKind::Mem64 => 2,
        };
        if index + regs > 6
            || self.bars[index].is_some()
            || self.upper_half_of(index).is_some()
            || (regs == 2 && self.bars[index + 1].is_some())
        {
            return Err(BarError::BadIndex { index });
        }
        if !size.is_power_of_two() || size < 16 || (kind == BarKind::Mem32 && size > 1 << 31) {
            return Err(BarError::BadSize { index, size });
        }
        self.bars[index] = Some(Bar {
            kind,
            size,
            prefetchable,
            address: 0,
        });
        Ok(())
    }

    /// BAR `index`, if declared.
    pub fn get(&self, index: usize) -> Option<&Bar> {
        self.bars.get(index)?.as_ref()
    }

    /// The declared BARs with their indices.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Bar)> {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().map(|b| (i, b)))
    }

    /// Places BAR `index` at `address` (the VMM's allocation, before the guest runs).
    pub fn set_address(&mut self, index: usize, address: u64) {
        if let Some(Some(bar)) = self.bars.get_mut(index) {
            bar.address = address & !(bar.size - 1);
        }
    }

    /// The 64-bit BAR whose upper half is register `index`.
    fn upper_half_of(&self, index: usize) -> Option<&Bar> {
        let lower = self.bars.get(index.checked_sub(1)?)?.as_ref()?;
        (lower.kind == BarKind::Mem64).then_some(lower)
    }

    /// The value of BAR register `index` (0..6).
    pub fn read(&self, index: usize) -> u32 {
        if let Some(Some(bar)) = self.bars.get(index) {
            return (bar.address as u32 & !0xf) | bar.flags();
        }
        match self.upper_half_of(index) {
            Some(bar) => (bar.address >> 32) as u32,
            None => 0,
        }
    }

    /// The guest writes `value` to BAR register `index`: the address bits the size leaves
    /// writable take it, the rest stay as they are (the size probe reads back the mask).
    pub fn write(&mut self, index: usize, value: u32) {
        if let Some(Some(bar)) = self.bars.get_mut(index) {
            let mask = !(bar.size - 1) & 0xffff_ffff;
            bar.address = (bar.address & !0xffff_ffff) | (u64::from(value) & mask);
            return;
        }
        if index == 0 || index >= 6 {
            return;
        }
        if let Some(Some(bar)) = self.bars.get_mut(index - 1) {
            if bar.kind == BarKind::Mem64 {
                let mask = !(bar.size - 1) >> 32;
                bar.address = (bar.address & 0xffff_ffff) | ((u64::from(value) & mask) << 32);
            }
        }
    }

    /// The BAR holding `[addr, addr + len)` and the offset into it.
    pub fn find(&self, addr: u64, len: u64) -> Option<(usize, u64)> {
        self.iter()
            .find_map(|(i, bar)| bar.offset_of(addr, len).map(|off| (i, off)))
    }
}

/// Hands out naturally aligned ranges of a window, lowest first.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    start: u64,
    next: u64,
    end: u64,
}

impl BarAllocator {
    /// A window `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        BarAllocator {
            start,
            next: start,
            end,
        }
    }

    /// The next free address aligned to `size` (a power of two) with room for it.
    pub fn allocate(&mut self, size: u64) -> Result<u64, BarError> {
        let full = BarError::WindowFull {
            size,
            start: self.start,
            end: self.end,
        };
        let aligned = self
            .next
            .checked_add(size - 1)
            .map(|v| v & !(size - 1))
            .ok_or(full.clone())?;
        let after = aligned.checked_add(size).ok_or(full.clone())?;
        if after > self.end {
            return Err(full);
        }
        self.next = after;
        Ok(aligned)
    }

    /// Places every BAR of `bars`, largest first (which wastes no space on alignment).
    pub fn place(&mut self, bars: &mut BarSet) -> Result<(), BarError> {
        let mut order: Vec<(usize, u64)> = bars.iter().map(|(i, b)| (i, b.size)).collect();
        order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (index, size) in order {
            let addr = self.allocate(size)?;
            bars.set_address(index, addr);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_probe_reads_back_the_mask_then_the_address_is_restored() {
        let mut bars = BarSet::new();
        bars.declare(0, BarKind::Mem32, 1 << 20, false).unwrap();
        bars.set_address(0, 0xc010_0000);
        assert_eq!(bars.read(0), 0xc010_0000);
        bars.write(0, 0xffff_ffff);
        assert_eq!(bars.read(0), 0xfff0_0000, "1 MiB, 32-bit, not prefetchable");
        bars.write(0, 0xc010_0000);
        assert_eq!(bars.read(0), 0xc010_0000);
        assert_eq!(bars.find(0xc010_0004, 4), Some((0, 4)));
        assert_eq!(bars.find(0xc01f_fffe, 4), None, "straddles the end");
    }

    #[test]
    fn a_64_bit_prefetchable_bar_sizes_through_both_registers() {
        let mut bars = BarSet::new();
        bars.declare(2, BarKind::Mem64, 16 << 10, true).unwrap();
        assert_eq!(bars.read(2), 0b1100);
        bars.write(2, 0xffff_ffff);
        bars.write(3, 0xffff_ffff);
        assert_eq!(bars.read(2), 0xffff_c00c);
        assert_eq!(bars.read(3), 0xffff_ffff);
        bars.write(2, 0xc000_4000);
        bars.write(3, 0x1);
        assert_eq!(bars.get(2).unwrap().address, 0x1_c000_4000);
        assert_eq!((bars.read(2), bars.read(3)), (0xc000_400c, 1));
        // Unused registers read 0 and ignore writes.
        for i in [0, 1, 4, 5] {
            bars.write(i, 0xffff_ffff);
            assert_eq!(bars.read(i), 0);
        }
    }

    #[test]
    fn declarations_are_checked() {
        let mut bars = BarSet::new();
        assert!(bars.declare(5, BarKind::Mem64, 4096, false).is_err());
        assert!(bars.declare(6, BarKind::Mem32, 4096, false).is_err());
        assert!(bars.declare(0, BarKind::Mem32, 4095, false).is_err());
        assert!(bars.declare(0, BarKind::Mem32, 8, false).is_err());
        bars.declare(0, BarKind::Mem64, 4096, false).unwrap();
        assert!(
            bars.declare(1, BarKind::Mem32, 4096, false).is_err(),
            "upper half"
        );
        assert!(
            bars.declare(0, BarKind::Mem32, 4096, false).is_err(),
            "twice"
        );
    }

    #[test]
    fn allocation_aligns_each_bar_to_its_size_largest_first() {
        let mut bars = BarSet::new();
        bars.declare(0, BarKind::Mem32, 0x1000, false).unwrap();
        bars.declare(1, BarKind::Mem32, 0x10_0000, false).unwrap();
        bars.declare(2, BarKind::Mem64, 0x4000, true).unwrap();
        let mut alloc = BarAllocator::new(0xc000_0000, 0xd000_0000);
        alloc.allocate(0x10).unwrap();
        alloc.place(&mut bars).unwrap();
        let addr = |i| bars.get(i).unwrap().address;
        assert_eq!(addr(1), 0xc010_0000);
        assert_eq!(addr(2), 0xc020_0000);
        assert_eq!(addr(0), 0xc020_4000);
        let mut small = BarAllocator::new(0xc000_0000, 0xc000_1000);
        assert!(matches!(
            small.allocate(0x2000),
            Err(BarError::WindowFull { .. })
        ));
    }
}
