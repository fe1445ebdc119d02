//! Minimal ACPI tables, so guests without MP-table support (Debian's cloud kernels are built
//! without CONFIG_X86_MPPARSE) find every vCPU and the I/O APIC: RSDP -> XSDT -> FADT + MADT,
//! with a FACS and a DSDT that holds only `\_S5`.
//!
//! The FADT describes a legacy PC, not "hardware-reduced" ACPI: Linux drops the 8259 PIC and
//! every ISA IRQ on hardware-reduced platforms, which leaves COM1's IRQ 4 unrouted (userspace
//! console output then stalls; seen with Debian 6.1). Its PM1a blocks are our ACPI PM device
//! (event block 0x600, control block 0x604), so Linux's ACPI poweroff (SLP_TYP 0 from `\_S5`,
//! SLP_EN) lands on 0x604 as 0x2000 and ends the VM; its reset register is the i8042.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::aml::{self, MmioDevice, PciRoot};
use super::mptable::{APIC_ADDR, IOAPIC_ADDR};

/// Where the RSDP goes: the BIOS area Linux scans (0xE0000-0xFFFFF), reserved in the e820.
pub const RSDP_START: u64 = 0xe_0000;
const TABLES_END: u64 = 0x10_0000;
const OEM_ID: &[u8; 6] = b"EDGEVS";
const OEM_TABLE_ID: &[u8; 8] = b"EDGEVISR";
const CREATOR_ID: &[u8; 4] = b"EDGV";

/// Errors while writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables would not fit below 1 MiB.
    #[error("ACPI tables for {0} vCPUs do not fit in the BIOS area")]
    TooLarge(u8),
    /// Writing guest memory failed.
    #[error("could not write the ACPI tables into guest memory: {0}")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A system description table: header plus body; `finish` fills length and checksum.
struct Table(Vec<u8>);

impl Table {
    fn new(signature: &[u8; 4], revision: u8) -> Table {
        let mut t = Vec::with_capacity(64);
        t.extend_from_slice(signature);
        t.extend_from_slice(&[0; 4]); // length
        t.push(revision);
        t.push(0); // checksum
        t.extend_from_slice(OEM_ID);
        t.extend_from_slice(OEM_TABLE_ID);
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(CREATOR_ID);
        t.extend_from_slice(&1u32.to_le_bytes());
        Table(t)
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[4..8].copy_from_slice(&len.to_le_bytes());
        self.0[9] = checksum(&self.0);
        self.0
    }
}

/// A generic address structure for one byte of I/O port space.
fn gas_io8(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = 8; // bit width
    g[3] = 1; // byte access
    g[4..6].copy_from_slice(&port.to_le_bytes());
    g
}

const FADT_LEN: usize = 276;
const FADT_FLAG_WBINVD: u32 = 1 << 0;
const FADT_FLAG_PWR_BUTTON: u32 = 1 << 4; // no fixed power button
const FADT_FLAG_SLP_BUTTON: u32 = 1 << 5; // no fixed sleep button
const FADT_FLAG_RESET_REG_SUP: u32 = 1 << 10;
const IAPC_BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// SCI interrupt (nothing raises it: no fixed events are enabled).
const SCI_IRQ: u16 = 9;
/// PM1a event block (status, enable): reads as zero on our ACPI PM device.
const PM1A_EVT_BLK: u32 = 0x600;
/// PM1a control block: the ACPI PM device's poweroff register.
const PM1A_CNT_BLK: u32 = 0x604;

fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let mut body = vec![0u8; FADT_LEN - 36];
    let mut put =
        |off: usize, bytes: &[u8]| body[off - 36..off - 36 + bytes.len()].copy_from_slice(bytes);
    put(36, &(facs as u32).to_le_bytes()); // FIRMWARE_CTRL
    put(40, &(dsdt as u32).to_le_bytes()); // DSDT
    put(46, &SCI_IRQ.to_le_bytes());
    // SMI_CMD (48) stays 0: ACPI is always enabled, no SMM handshake.
    put(56, &PM1A_EVT_BLK.to_le_bytes());
    put(64, &PM1A_CNT_BLK.to_le_bytes());
    put(88, &[4]); // PM1_EVT_LEN
    put(89, &[2]); // PM1_CNT_LEN
                   // PM_TMR_LEN (91) stays 0: no ACPI PM timer (kvm-clock and the TSC serve).
    let boot_arch =
        IAPC_BOOT_ARCH_LEGACY_DEVICES | IAPC_BOOT_ARCH_8042 | IAPC_BOOT_ARCH_VGA_NOT_PRESENT;
    put(109, &boot_arch.to_le_bytes());
    let flags =
        FADT_FLAG_WBINVD | FADT_FLAG_PWR_BUTTON | FADT_FLAG_SLP_BUTTON | FADT_FLAG_RESET_REG_SUP;
    put(112, &flags.to_le_bytes());
    put(116, &gas_io8(0x64)); // RESET_REG: i8042 command port
    put(128, &[0xfe]); // RESET_VALUE: pulse reset
    put(131, &[0]); // FADT minor version (6.0)
    put(132, &facs.to_le_bytes()); // X_FIRMWARE_CTRL
    put(140, &dsdt.to_le_bytes()); // X_DSDT
    let mut t = Table::new(b"FACP", 6);
    t.bytes(&body);
    t.finish()
}

/// The FACS: no checksum, 64 bytes, 64-byte aligned.
fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[32] = 2; // version
    f
}

/// DSDT body: `Name (_S5, Package (4) { Zero, Zero, Zero, Zero })`, so S5 is SLP_TYP 0.
const DSDT_S5: [u8; 12] = [
    0x08, b'_', b'S', b'5', b'_', // NameOp "_S5_"
    0x12, 0x06, 0x04, // PackageOp, PkgLength 6, 4 elements
    0x00, 0x00, 0x00, 0x00, // ZeroOp x4
];

fn madt(cpus: u8) -> Vec<u8> {
    let mut t = Table::new(b"APIC", 5);
    t.bytes(&APIC_ADDR.to_le_bytes());
    t.bytes(&1u32.to_le_bytes()); // PCAT_COMPAT: dual 8259s present
    for id in 0..cpus {
        // Processor local APIC: ACPI processor id, APIC id, enabled.
        t.bytes(&[0, 8, id, id]).bytes(&1u32.to_le_bytes());
    }
    // I/O APIC id 0 at its address, GSIs from 0 (KVM routes GSI n to pin n).
    t.bytes(&[1, 12, 0, 0])
        .bytes(&IOAPIC_ADDR.to_le_bytes())
        .bytes(&0u32.to_le_bytes());
    // Local APIC NMI on LINT1 of every processor.
    t.bytes(&[4, 6, 0xff, 0, 0, 1]);
    t.finish()
}

/// The tables and where each goes: RSDP first, at RSDP_START.
pub fn build(
    cpus: u8,
    virtio: &[MmioDevice],
    pci: Option<&PciRoot>,
) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let align = |a: u64, to: u64| a.next_multiple_of(to);
    let xsdt_addr = RSDP_START + 64;
    let xsdt_len = 36 + 2 * 8; // two pointers: FADT, MADT
    let facs_addr = align(xsdt_addr + xsdt_len, 64);
    let facs = facs();
    let dsdt = {
        let mut t = Table::new(b"DSDT", 2);
        t.bytes(&DSDT_S5);
        t.bytes(&aml::system_bus_scope(virtio, pci));
        t.finish()
    };
    let dsdt_addr = align(facs_addr + facs.len() as u64, 16);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64, 16);
    let fadt = fadt(facs_addr, dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64, 16);
    let madt = madt(cpus);
    if madt_addr + madt.len() as u64 > TABLES_END {
        return Err(AcpiError::TooLarge(cpus));
    }
    let mut xsdt = Table::new(b"XSDT", 1);
    xsdt.bytes(&fadt_addr.to_le_bytes())
        .bytes(&madt_addr.to_le_bytes());
    let xsdt = xsdt.finish();

    let mut rsdp = vec![0u8; 36];
    rsdp[0..8].copy_from_slice(b"RSD PTR ");
    rsdp[9..15].copy_from_slice(OEM_ID);
    rsdp[15] = 2; // ACPI 2.0+: use the XSDT
    rsdp[20..24].copy_from_slice(&36u32.to_le_bytes());
    rsdp[24..32].copy_from_slice(&xsdt_addr.to_le_bytes());
    rsdp[8] = checksum(&rsdp[0..20]);
    rsdp[32] = checksum(&rsdp);

    Ok(vec![
        (RSDP_START, rsdp),
        (xsdt_addr, xsdt),
        (facs_addr, facs),
        (dsdt_addr, dsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
    ])
}

/// Writes the tables for `cpus` vCPUs; returns the RSDP's address.
pub fn write(
    mem: &GuestMemoryMmap,
    cpus: u8,
    virtio: &[MmioDevice],
    pci: Option<&PciRoot>,
) -> Result<u64, AcpiError> {
    for (addr, bytes) in build(cpus, virtio, pci)? {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(AcpiError::GuestMemory)?;
    }
    Ok(RSDP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_is_well_formed_and_linked() {
        let tables = build(4, &[], None).unwrap();
        let find = |addr: u64| &tables.iter().find(|(a, _)| *a == addr).unwrap().1;
        let rsdp = find(RSDP_START);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[0..20]), 0);
        assert_eq!(sum(rsdp), 0);
        let xsdt = find(u64_at(rsdp, 24));
        assert_eq!(&xsdt[0..4], b"XSDT");
        for (_, t) in tables.iter().skip(1) {
            assert_eq!(u32_at(t, 4) as usize, t.len(), "{:?}", &t[0..4]);
            if &t[0..4] != b"FACS" {
                assert_eq!(sum(t), 0, "checksum of {:?}", std::str::from_utf8(&t[0..4]));
            }
        }
        let fadt = find(u64_at(xsdt, 36));
        assert_eq!(&fadt[0..4], b"FACP");
        assert_eq!(fadt.len(), FADT_LEN);
        // Not hardware-reduced (bit 20): Linux would drop the PIC and the ISA IRQs.
        assert_eq!(u32_at(fadt, 112) & (1 << 20), 0);
        assert_eq!(u32_at(fadt, 64), 0x604, "PM1a_CNT is the ACPI PM device");
        assert_eq!(fadt[89], 2);
        let facs_addr = u64_at(fadt, 132);
        assert_eq!(facs_addr % 64, 0);
        assert_eq!(&find(facs_addr)[0..4], b"FACS");
        let dsdt = find(u64_at(fadt, 140));
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert_eq!(&dsdt[36..41], b"\x08_S5_");
        assert_eq!(fadt[128], 0xfe);
        let madt = find(u64_at(xsdt, 44));
        assert_eq!(&madt[0..4], b"APIC");
        assert_eq!(u32_at(madt, 36), APIC_ADDR);
    }

    #[test]
    fn madt_lists_each_cpu_once_and_one_ioapic() {
        let tables = build(3, &[], None).unwrap();
        let madt = &tables.iter().find(|(_, t)| &t[0..4] == b"APIC").unwrap().1;
        let mut off = 44;
        let (mut cpus, mut ioapics) = (Vec::new(), 0);
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            match kind {
                0 => cpus.push(madt[off + 3]),
                1 => {
                    ioapics += 1;
                    assert_eq!(u32_at(madt, off + 4), IOAPIC_ADDR);
                }
                _ => {}
            }
            off += len;
        }
        assert_eq!(off, madt.len());
        assert_eq!(cpus, vec![0, 1, 2]);
        assert_eq!(ioapics, 1);
    }

    fn full_virtio() -> Vec<MmioDevice> {
        (0..9u32)
            .map(|i| MmioDevice {
                base: 0xd000_0000 + i * 0x1000,
                len: 0x1000,
                irq: 5 + i,
            })
            .collect()
    }

    #[test]
    fn virtio_devices_are_described_in_the_dsdt() {
        let tables = build(1, &full_virtio()[..2], None).unwrap();
        let dsdt = &tables[3].1;
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert_eq!(u32_at(dsdt, 4) as usize, dsdt.len());
        assert_eq!(sum(dsdt), 0);
        let body = &dsdt[36..];
        assert_eq!(&body[..5], b"\x08_S5_");
        assert_eq!(body.windows(8).filter(|w| *w == b"LNRO0005").count(), 2);
    }

    #[test]
    fn a_pci_bus_puts_its_host_bridge_in_the_dsdt() {
        let root = PciRoot {
            window_start: 0xc000_0000,
            window_end: 0xcfff_ffff,
        };
        let tables = build(1, &full_virtio()[..1], Some(&root)).unwrap();
        let dsdt = &tables[3].1;
        assert_eq!(u32_at(dsdt, 4) as usize, dsdt.len());
        assert_eq!(sum(dsdt), 0);
        assert_eq!(dsdt.windows(4).filter(|w| *w == b"PCI0").count(), 1);
        assert_eq!(dsdt.windows(8).filter(|w| *w == b"LNRO0005").count(), 1);
        let without = build(1, &full_virtio()[..1], None).unwrap();
        assert!(!without[3].1.windows(4).any(|w| w == b"PCI0"));
    }

    #[test]
    fn the_largest_guest_still_fits() {
        let tables = build(254, &full_virtio(), None).unwrap();
        let (addr, last) = tables.last().unwrap();
        assert!(addr + last.len() as u64 <= TABLES_END);
    }
}
