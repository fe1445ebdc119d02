//! The capability list of a configuration space, and the two interrupt capabilities a VMM
//! must emulate: MSI (ID 0x05) and MSI-X (ID 0x11), PCI Local Bus 3.0 section 6.8.
//!
//! [`MsiState`] keeps the guest's view of the MSI capability registers (only the bits the
//! specification makes writable change); [`MsixState`] keeps the Message Control enable and
//! mask bits and the vector table. Both answer "which vectors are live, with which address
//! and data", which is what the VMM turns into interrupt routes.

use super::{
    le_value, merge_dword, CAPABILITY_POINTER, CONFIG_SPACE_SIZE, STATUS, STATUS_CAPABILITIES,
};

/// Capability ID of MSI.
pub const CAP_ID_MSI: u8 = 0x05;
/// Capability ID of PCI Express.
pub const CAP_ID_PCIE: u8 = 0x10;
/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

/// One entry of the capability list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// Capability ID.
    pub id: u8,
    /// Offset of its first byte in configuration space.
    pub offset: usize,
}

/// The capability list of `config` (the first 256 bytes of a configuration space), in list
/// order. A list that loops, points below 0x40 or past the end stops there: it comes from
/// a device, so it is not trusted.
pub fn capabilities(config: &[u8]) -> Vec<Capability> {
    let mut out = Vec::new();
    if config.len() < CONFIG_SPACE_SIZE {
        return out;
    }
    let status = u16::from_le_bytes([config[STATUS], config[STATUS + 1]]);
    if status & STATUS_CAPABILITIES == 0 {
        return out;
    }
    let mut ptr = usize::from(config[CAPABILITY_POINTER] & !3);
    // 48 capabilities of 4 bytes fill 0x40..0x100: more means a loop.
    while ptr >= 0x40 && ptr + 1 < CONFIG_SPACE_SIZE && out.len() < 48 {
        out.push(Capability {
            id: config[ptr],
            offset: ptr,
        });
        ptr = usize::from(config[ptr + 1] & !3);
    }
    out
}

/// Where an MSI capability's registers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCap {
    /// Offset of the capability.
    pub offset: usize,
    /// Message Address is 64 bits.
    pub is_64bit: bool,
    /// Per-vector Mask and Pending registers exist.
    pub per_vector_mask: bool,
    /// log2 of the vectors the function can use (Multiple Message Capable, 0..=5).
    pub log2_vectors: u8,
}

impl MsiCap {
    /// Reads the capability at `offset` of `config`.
    pub fn parse(config: &[u8], offset: usize) -> Option<MsiCap> {
        let control = u16::from_le_bytes([*config.get(offset + 2)?, *config.get(offset + 3)?]);
        let cap = MsiCap {
            offset,
            is_64bit: control & (1 << 7) != 0,
            per_vector_mask: control & (1 << 8) != 0,
            log2_vectors: ((control >> 1) & 7).min(5) as u8,
        };
        (offset + cap.len() <= config.len()).then_some(cap)
    }

    /// Bytes the capability takes.
    pub fn len(&self) -> usize {
        10 + if self.is_64bit { 4 } else { 0 } + if self.per_vector_mask { 10 } else { 0 }
    }

    /// Never empty (it is at least 10 bytes); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn data_offset(&self) -> usize {
        if self.is_64bit {
            0xc
        } else {
            0x8
        }
    }

    fn mask_offset(&self) -> Option<usize> {
        self.per_vector_mask.then(|| self.data_offset() + 4)
    }
}

/// The guest's view of an MSI capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsiState {
    cap: MsiCap,
    /// The capability's bytes from its first byte (ID) on, rounded up to dwords.
    regs: [u8; 24],
}

impl MsiState {
    /// Starts from the device's bytes with MSI off.
    pub fn new(config: &[u8], cap: MsiCap) -> MsiState {
        let mut regs = [0u8; 24];
        let end = (cap.offset + cap.len()).min(config.len());
        regs[..end - cap.offset].copy_from_slice(&config[cap.offset..end]);
        // Enable and Multiple Message Enable start cleared, as after reset.
        regs[2] &= !0x71;
        MsiState { cap, regs }
    }

    /// The capability's layout.
    pub fn cap(&self) -> &MsiCap {
        &self.cap
    }

    /// Whether `offset` (in configuration space) is one of the capability's bytes.
    pub fn contains(&self, offset: usize) -> bool {
        (self.cap.offset..self.cap.offset + self.cap.len()).contains(&offset)
    }

    /// The dword at configuration-space offset `reg` (inside the capability).
    pub fn read(&self, reg: usize) -> u32 {
        let rel = reg.saturating_sub(self.cap.offset) & !3;
        match self.regs.get(rel..rel + 4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        }
    }

    /// Which bits of the byte at `rel` (from the capability's start) the guest may change.
    fn writable(&self, rel: usize) -> u8 {
        let data = self.cap.data_offset();
        match rel {
            2 => 0x71, // Enable, Multiple Message Enable
            4 => 0xfc, // Message Address is dword aligned
            5..=7 => 0xff,
            8..=11 if self.cap.is_64bit => 0xff,
            r if r == data || r == data + 1 => 0xff,
            r => match self.cap.mask_offset() {
                Some(m) if (m..m + 4).contains(&r) => {
                    let vectors = 1u32 << self.cap.log2_vectors;
                    let bits = if vectors >= 32 {
                        u32::MAX
                    } else {
                        (1 << vectors) - 1
                    };
                    bits.to_le_bytes()[r - m]
                }
                _ => 0,
            },
        }
    }

    /// The guest writes `data` at configuration-space `offset`; returns whether anything
    /// that decides interrupt delivery changed.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        let before = self.regs;
        for (i, byte) in data.iter().enumerate() {
            let Some(rel) = (offset + i).checked_sub(self.cap.offset) else {
                continue;
            };
            if rel >= self.cap.len() {
                continue;
            }
            let w = self.writable(rel);
            self.regs[rel] = (self.regs[rel] & !w) | (byte & w);
        }
        // Multiple Message Enable never goes above what the function can do.
        let mme = (self.regs[2] >> 4) & 7;
        if mme > self.cap.log2_vectors {
            self.regs[2] = (self.regs[2] & !0x70) | (self.cap.log2_vectors << 4);
        }
        before != self.regs
    }

    /// MSI Enable.
    pub fn enabled(&self) -> bool {
        self.regs[2] & 1 != 0
    }

    /// Vectors the guest enabled (1 << Multiple Message Enable).
    pub fn enabled_vectors(&self) -> usize {
        1 << ((self.regs[2] >> 4) & 7)
    }

    /// Message address and data of each enabled vector; `None` for a masked one. Empty
    /// when MSI is off.
    pub fn vectors(&self) -> Vec<Option<(u64, u32)>> {
        if !self.enabled() {
            return Vec::new();
        }
        let lo = u64::from(self.read(self.cap.offset + 4));
        let hi = if self.cap.is_64bit {
            u64::from(self.read(self.cap.offset + 8))
        } else {
            0
        };
        let addr = (hi << 32) | lo;
        let d = self.cap.data_offset();
        let data = u32::from(u16::from_le_bytes([self.regs[d], self.regs[d + 1]]));
        let mask = self
            .cap
            .mask_offset()
            .map(|m| self.read(self.cap.offset + m))
            .unwrap_or(0);
        let n = self.enabled_vectors();
        (0..n)
            .map(|i| {
                // With n vectors the function puts the vector number in data's low bits.
                let data = (data & !(n as u32 - 1)) | i as u32;
                (mask & (1 << i) == 0).then_some((addr, data))
            })
            .collect()
    }
}

/// Where an MSI-X capability's table and pending bits are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCap {
    /// Offset of the capability.
    pub offset: usize,
    /// Table entries (Table Size + 1, 1..=2048).
    pub table_size: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR.
    pub table_offset: u32,
    /// BAR holding the Pending Bit Array.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR.
    pub pba_offset: u32,
}

/// Bytes of one MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;

impl MsixCap {
    /// Reads the capability at `offset` of `config`.
    pub fn parse(config: &[u8], offset: usize) -> Option<MsixCap> {
        let b = config.get(offset..offset + 12)?;
        let control = u16::from_le_bytes([b[2], b[3]]);
        let table = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let pba = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        Some(MsixCap {
            offset,
            table_size: (control & 0x7ff) + 1,
            table_bar: (table & 7) as u8,
            table_offset: table & !7,
            pba_bar: (pba & 7) as u8,
            pba_offset: pba & !7,
        })
    }

    /// Bytes of the table.
    pub fn table_len(&self) -> u64 {
        u64::from(self.table_size) * MSIX_ENTRY_SIZE
    }

    /// Bytes of the Pending Bit Array: one bit per entry, in whole qwords.
    pub fn pba_len(&self) -> u64 {
        u64::from(self.table_size).div_ceil(64) * 8
    }
}

/// The guest's view of an MSI-X capability and its vector table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsixState {
    cap: MsixCap,
    /// Message Control as the guest sees it (Table Size as offered, enable and mask bits).
    control: u16,
    /// Per entry: address low, address high, data, vector control.
    table: Vec<[u32; 4]>,
}

impl MsixState {
    /// Offers the guest at most `max_vectors` of the capability's table (the table size it
    /// reads is cut to that), every vector masked, MSI-X off.
    pub fn new(cap: MsixCap, max_vectors: u16) -> MsixState {
        let size = cap.table_size.min(max_vectors.max(1));
        MsixState {
            cap: MsixCap {
                table_size: size,
                ..cap
            },
            control: size - 1,
            table: vec![[0, 0, 0, 1]; usize::from(size)],
        }
    }

    /// The capability as offered to the guest.
    pub fn cap(&self) -> &MsixCap {
        &self.cap
    }

    /// Whether `offset` (in configuration space) is one of the capability's 12 bytes.
    pub fn contains(&self, offset: usize) -> bool {
        (self.cap.offset..self.cap.offset + 12).contains(&offset)
    }

    /// The Message Control register as the guest reads it.
    pub fn control(&self) -> u16 {
        self.control
    }

    /// The guest writes `data` at configuration-space `offset`: only the enable and function
    /// mask bits of Message Control change. Returns whether either did.
    pub fn write_config(&mut self, offset: usize, data: &[u8]) -> bool {
        let reg = self.cap.offset & !3;
        let shift = offset.wrapping_sub(reg);
        if self.cap.offset % 4 != 0 || shift > 3 {
            return false;
        }
        let old = u32::from(self.control) << 16;
        let new = (merge_dword(old, shift, data) >> 16) as u16;
        let before = self.control;
        self.control = (self.control & 0x3fff) | (new & 0xc000);
        before != self.control
    }

    /// MSI-X Enable.
    pub fn enabled(&self) -> bool {
        self.control & (1 << 15) != 0
    }

    /// Function Mask.
    pub fn function_masked(&self) -> bool {
        self.control & (1 << 14) != 0
    }

    /// Whether `[offset, offset + len)` of BAR `bar` touches the table.
    pub fn in_table(&self, bar: usize, offset: u64, len: u64) -> bool {
        let start = u64::from(self.cap.table_offset);
        bar == usize::from(self.cap.table_bar)
            && offset < start + self.cap.table_len()
            && offset + len > start
    }

    /// Whether `[offset, offset + len)` of BAR `bar` touches the Pending Bit Array.
    pub fn in_pba(&self, bar: usize, offset: u64, len: u64) -> bool {
        let start = u64::from(self.cap.pba_offset);
        bar == usize::from(self.cap.pba_bar)
            && offset < start + self.cap.pba_len()
            && offset + len > start
    }

    /// The guest reads the Pending Bit Array at `offset` of its BAR: bit i is `pending[i]`
    /// (vectors past `pending` or the table read 0). Dword or qword accesses; others read
    /// all ones.
    pub fn read_pba(&self, offset: u64, data: &mut [u8], pending: &[bool]) {
        data.fill(0xff);
        let rel = offset.wrapping_sub(u64::from(self.cap.pba_offset));
        if !(data.len() == 4 || data.len() == 8) || rel % 4 != 0 {
            return;
        }
        let size = usize::from(self.cap.table_size);
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let first = (rel / 4 + i as u64) as usize * 32;
            let mut word = 0u32;
            for bit in 0..32 {
                let v = first + bit;
                if v < size && pending.get(v).copied().unwrap_or(false) {
                    word |= 1 << bit;
                }
            }
            chunk.copy_from_slice(&word.to_le_bytes());
        }
    }

    /// The guest reads the table at `offset` of its BAR (dword or qword accesses; others
    /// read all ones).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let rel = offset.wrapping_sub(u64::from(self.cap.table_offset));
        if !(data.len() == 4 || data.len() == 8) || rel % 4 != 0 {
            return;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let word = rel / 4 + i as u64;
            let (entry, field) = ((word / 4) as usize, (word % 4) as usize);
            if let Some(e) = self.table.get(entry) {
                chunk.copy_from_slice(&e[field].to_le_bytes());
            }
        }
    }

    /// The guest writes the table at `offset` of its BAR; returns the entries that changed.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Vec<usize> {
        let rel = offset.wrapping_sub(u64::from(self.cap.table_offset));
        let mut changed = Vec::new();
        if !(data.len() == 4 || data.len() == 8) || rel % 4 != 0 {
            return changed;
        }
        for (i, chunk) in data.chunks(4).enumerate() {
            let word = rel / 4 + i as u64;
            let (entry, field) = ((word / 4) as usize, (word % 4) as usize);
            if let Some(e) = self.table.get_mut(entry) {
                let mut value = le_value(chunk) as u32;
                if field == 3 {
                    value &= 1; // only the mask bit is defined
                }
                if e[field] != value {
                    e[field] = value;
                    if !changed.contains(&entry) {
                        changed.push(entry);
                    }
                }
            }
        }
        changed
    }

    /// Message address and data of every table entry; `None` when it cannot fire (MSI-X
    /// off, the function masked, or the entry masked). Empty when MSI-X is off.
    pub fn vectors(&self) -> Vec<Option<(u64, u32)>> {
        if !self.enabled() {
            return Vec::new();
        }
        self.table
            .iter()
            .map(|e| {
                let live = !self.function_masked() && e[3] & 1 == 0;
                live.then(|| ((u64::from(e[1]) << 32) | u64::from(e[0]), e[2]))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(caps: &[(usize, &[u8])]) -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[STATUS] = STATUS_CAPABILITIES as u8;
        let mut prev = CAPABILITY_POINTER;
        for (offset, bytes) in caps {
            c[*offset..*offset + bytes.len()].copy_from_slice(bytes);
            if prev == CAPABILITY_POINTER {
                c[prev] = *offset as u8;
            } else {
                c[prev + 1] = *offset as u8;
            }
            prev = *offset;
        }
        c
    }

    #[test]
    fn a_looping_or_low_list_stops() {
        let mut c = config_with(&[(0x40, &[0x05, 0]), (0x50, &[0x11, 0])]);
        assert_eq!(
            capabilities(&c),
            vec![
                Capability {
                    id: 5,
                    offset: 0x40
                },
                Capability {
                    id: 0x11,
                    offset: 0x50
                }
            ]
        );
        c[0x51] = 0x40; // loop back
        assert_eq!(capabilities(&c).len(), 48);
        c[0x51] = 0x10; // into the header
        assert_eq!(capabilities(&c).len(), 2);
        c[STATUS] = 0;
        assert!(capabilities(&c).is_empty());
        assert!(capabilities(&[0u8; 16]).is_empty());
    }

    #[test]
    fn msi_with_four_vectors_and_masking() {
        // 64-bit, per-vector mask, Multiple Message Capable = 2 (4 vectors).
        let c = config_with(&[(0x48, &[0x05, 0, 0x84, 0x01])]);
        let cap = MsiCap::parse(&c, 0x48).unwrap();
        assert_eq!(
            (cap.is_64bit, cap.per_vector_mask, cap.log2_vectors),
            (true, true, 2)
        );
        assert_eq!(cap.len(), 24);
        let mut msi = MsiState::new(&c, cap);
        assert!(msi.vectors().is_empty());
        msi.write(0x4c, &0xfee0_0000u32.to_le_bytes());
        msi.write(0x50, &0u32.to_le_bytes());
        msi.write(0x54, &0x4041u16.to_le_bytes());
        msi.write(0x58, &0b0100u32.to_le_bytes());
        // Enable with MME = 7: clamped to 2.
        assert!(msi.write(0x4a, &0x0071u16.to_le_bytes()));
        assert_eq!(msi.enabled_vectors(), 4);
        assert_eq!(
            msi.vectors(),
            vec![
                Some((0xfee0_0000, 0x4040)),
                Some((0xfee0_0000, 0x4041)),
                None,
                Some((0xfee0_0000, 0x4043))
            ]
        );
        assert_eq!(msi.read(0x48) >> 16, 0x01a5, "control reads back clamped");
        // Read-only bits: the 64-bit flag and the capability ID stay.
        msi.write(0x48, &[0xff, 0xff, 0x00, 0x00]);
        assert_eq!(msi.read(0x48) & 0xffff, 0x0005);
        assert!(!msi.write(0x70, &[1]), "outside the capability");
    }

    #[test]
    fn msix_table_and_control() {
        let c = config_with(&[(
            0x70,
            &[0x11, 0, 0x07, 0x00, 0x01, 0x20, 0, 0, 0x01, 0x30, 0, 0],
        )]);
        let cap = MsixCap::parse(&c, 0x70).unwrap();
        assert_eq!(cap.table_size, 8);
        assert_eq!((cap.table_bar, cap.table_offset), (1, 0x2000));
        assert_eq!((cap.pba_bar, cap.pba_offset), (1, 0x3000));
        let mut msix = MsixState::new(cap, 4);
        assert_eq!(msix.control(), 3, "table cut to 4");
        assert!(msix.in_table(1, 0x2030, 4));
        assert!(!msix.in_table(1, 0x2040, 4));
        assert!(!msix.in_table(0, 0x2000, 4));
        assert_eq!(
            msix.write_table(0x2010, &0xfee0_1000u64.to_le_bytes()),
            vec![1]
        );
        assert_eq!(
            msix.write_table(0x2018, &0x0000_0031u32.to_le_bytes()),
            vec![1]
        );
        let mut back = [0u8; 8];
        msix.read_table(0x2010, &mut back);
        assert_eq!(u64::from_le_bytes(back), 0xfee0_1000);
        msix.read_table(0x201c, &mut back[..4]);
        assert_eq!(back[..4], [1, 0, 0, 0], "masked after reset");
        assert!(msix.write_config(0x72, &0x8000u16.to_le_bytes()));
        assert_eq!(msix.vectors(), vec![None; 4]);
        msix.write_table(0x201c, &0u32.to_le_bytes());
        assert_eq!(msix.vectors()[1], Some((0xfee0_1000, 0x31)));
        msix.write_config(0x70, &0xc000_0000u32.to_le_bytes());
        assert!(msix.function_masked());
        assert_eq!(msix.vectors()[1], None);
        assert_eq!(msix.control(), 0xc003, "table size is read-only");
    }

    #[test]
    fn msix_pending_bits_come_from_the_caller() {
        // 70 entries: the PBA is two qwords at 0x800 of BAR 0.
        let c = config_with(&[(
            0x70,
            &[0x11, 0, 69, 0x00, 0x00, 0x00, 0, 0, 0x00, 0x08, 0, 0],
        )]);
        let msix = MsixState::new(MsixCap::parse(&c, 0x70).unwrap(), 70);
        assert_eq!(msix.cap().pba_len(), 16);
        assert!(msix.in_pba(0, 0x800, 8));
        assert!(msix.in_pba(0, 0x80c, 4));
        assert!(!msix.in_pba(0, 0x810, 4));
        assert!(!msix.in_pba(0, 0x7fc, 4));
        assert!(!msix.in_pba(1, 0x800, 4));
        let mut pending = vec![false; 70];
        pending[1] = true;
        pending[33] = true;
        pending[69] = true;
        let mut q = [0u8; 8];
        msix.read_pba(0x800, &mut q, &pending);
        assert_eq!(u64::from_le_bytes(q), (1 << 1) | (1 << 33));
        let mut d = [0u8; 4];
        msix.read_pba(0x808, &mut d, &pending);
        assert_eq!(u32::from_le_bytes(d), 1 << 5, "vector 69");
        msix.read_pba(0x80c, &mut d, &pending);
        assert_eq!(u32::from_le_bytes(d), 0, "past the table");
        msix.read_pba(0x804, &mut d, &[]);
        assert_eq!(u32::from_le_bytes(d), 0, "nothing pending");
        let mut b = [0u8; 2];
        msix.read_pba(0x800, &mut b, &pending);
        assert_eq!(b, [0xff, 0xff], "a word access reads all ones");
    }
}
