//! Intel MultiProcessor Specification 1.4 tables, so a guest without ACPI finds every vCPU,
//! the I/O APIC and how ISA interrupts are wired.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{EBDA_START, HIGH_MEMORY_START, MPTABLE_START};

/// Address of the in-kernel I/O APIC.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Address of the local APICs.
pub const APIC_ADDR: u32 = 0xfee0_0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_ID_OFFSET: u8 = 1; // I/O APIC id follows the last CPU's
const ISA_IRQS: u8 = 16;

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// More vCPUs than fit below the BIOS area.
    #[error("{0} vCPUs do not fit in the MP table: use at most 254")]
    TooManyCpus(u8),
    /// Writing guest memory failed.
    #[error("could not write the MP table into guest memory: {0}")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer and configuration table for `cpus` vCPUs; returns the bytes
/// to place at MPTABLE_START.
pub fn build(cpus: u8) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > 254 {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus + IOAPIC_ID_OFFSET - 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let mut e = [0u8; 20];
        e[0] = 0; // processor
        e[1] = id;
        e[2] = APIC_VERSION;
        e[3] = 0x01 | if id == 0 { 0x02 } else { 0 }; // enabled, BSP
        e[4..8].copy_from_slice(&0x0000_0600u32.to_le_bytes()); // family 6 signature
        e[8..12].copy_from_slice(&0x0000_0201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&e);
        count += 1;
    }
    // Bus 0: ISA.
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    // The I/O APIC.
    let mut ioapic = [2u8, ioapic_id, APIC_VERSION, 1, 0, 0, 0, 0];
    ioapic[4..8].copy_from_slice(&IOAPIC_ADDR.to_le_bytes());
    entries.extend_from_slice(&ioapic);
    count += 1;
    // ISA IRQ n -> I/O APIC pin n (conforming polarity and trigger).
    for irq in 0..ISA_IRQS {
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: ExtINT on LINT0, NMI on LINT1 of every CPU.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = MPTABLE_START as u32 + 16;
    let mut header = [0u8; 44];
    header[0..4].copy_from_slice(b"PCMP");
    let length = (header.len() + entries.len()) as u16;
    header[4..6].copy_from_slice(&length.to_le_bytes());
    header[6] = 4; // spec revision 1.4
    header[8..16].copy_from_slice(b"EDGEVSR ");
    header[16..28].copy_from_slice(b"000000000000");
    header[34..36].copy_from_slice(&count.to_le_bytes());
    header[36..40].copy_from_slice(&APIC_ADDR.to_le_bytes());
    let mut table = header.to_vec();
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = [0u8; 16];
    floating[0..4].copy_from_slice(b"_MP_");
    floating[4..8].copy_from_slice(&table_addr.to_le_bytes());
    floating[8] = 1; // length in 16-byte units
    floating[9] = 4;
    floating[10] = checksum(&floating);

    let mut out = floating.to_vec();
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `cpus` vCPUs into guest memory.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(cpus)?;
    debug_assert!(MPTABLE_START + bytes.len() as u64 <= HIGH_MEMORY_START);
    const { assert!(MPTABLE_START >= EBDA_START) };
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MpTableError::GuestMemory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_counts_are_consistent() {
        let t = build(4).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[0..16]), 0);
        let len = u16::from_le_bytes([t[20], t[21]]) as usize;
        assert_eq!(&t[16..20], b"PCMP");
        assert_eq!(len, t.len() - 16);
        assert_eq!(sum(&t[16..16 + len]), 0);
        let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
        // 4 CPUs + bus + I/O APIC + 16 IRQs + 2 local interrupts.
        assert_eq!(count, 4 + 1 + 1 + 16 + 2);
        // Only CPU 0 is the BSP.
        let cpu = |i: usize| &t[16 + 44 + i * 20..16 + 44 + (i + 1) * 20];
        assert_eq!(cpu(0)[3], 3);
        assert_eq!(cpu(1)[3], 1);
        assert_eq!(cpu(3)[1], 3);
    }

    #[test]
    fn rejects_zero_and_too_many_cpus() {
        assert!(build(0).is_err());
        assert!(build(255).is_err());
        assert!(build(254).unwrap().len() < (HIGH_MEMORY_START - MPTABLE_START) as usize);
    }
}
