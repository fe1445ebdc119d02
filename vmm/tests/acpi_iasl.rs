//! The DSDT, disassembled by ACPICA's `iasl` (Debian's acpica-tools): the virtio-mmio
//! devices (and, with a PCI bus, the host bridge) must read back as the ASL a kernel's ACPI
//! interpreter will see.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

use std::process::Command;

use vmm::arch::x86_64::acpi;
use vmm::arch::x86_64::aml::{MmioDevice, PciRoot};

/// The DSDT of `tables`, disassembled by iasl and flattened to one line.
fn disassembled_dsdt(tables: &[(u64, Vec<u8>)]) -> String {
    let dsdt = tables
        .iter()
        .find(|(_, t)| &t[..4] == b"DSDT")
        .map(|(_, t)| t.clone())
        .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "edgevisor-iasl-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let aml = dir.join("dsdt.aml");
    std::fs::write(&aml, &dsdt).unwrap();
    let out = Command::new("iasl")
        .arg("-d")
        .arg(&aml)
        .current_dir(&dir)
        .output()
        .expect("iasl (acpica-tools) is installed by scripts/install-test-deps.sh");
    let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dsl.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn iasl_reads_the_virtio_devices_back() {
    let devices: Vec<MmioDevice> = (0..2u32)
        .map(|i| MmioDevice {
            base: 0xd000_0000 + i * 0x1000,
            len: 0x1000,
            irq: [5, 6][i as usize],
        })
        .collect();
    let tables = acpi::build(2, &devices, None).unwrap();
    let flat = disassembled_dsdt(&tables);
    let dsl = &flat;
    assert!(flat.contains("Name (_S5, Package (0x04)"), "{dsl}");
    for (i, base, irq) in [
        (0, "0xD0000000", "0x00000005"),
        (1, "0xD0001000", "0x00000006"),
    ] {
        assert!(flat.contains(&format!("Device (VR0{i})")), "{dsl}");
        assert!(
            flat.contains(&format!(
                "Memory32Fixed (ReadWrite, {base}, // Address Base 0x00001000, // Address Length )"
            )),
            "{dsl}"
        );
        assert!(
            flat.contains(&format!(
                "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) {{ {irq}, }}"
            )),
            "{dsl}"
        );
    }
    assert_eq!(
        flat.matches("Name (_HID, \"LNRO0005\")").count(),
        2,
        "{dsl}"
    );
}

#[test]
fn iasl_reads_the_pci_host_bridge_back() {
    let root = PciRoot {
        window_start: 0xc000_0000,
        window_end: 0xcfff_ffff,
    };
    let device = MmioDevice {
        base: 0xd000_0000,
        len: 0x1000,
        irq: 5,
    };
    let flat = disassembled_dsdt(&acpi::build(1, &[device], Some(&root)).unwrap());
    for want in [
        "Device (PCI0)",
        "Name (_HID, EisaId (\"PNP0A03\")",
        "Name (_SEG, Zero)",
        "Name (_BBN, Zero)",
        "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0x0000, // Granularity \
         0x0000, // Range Minimum 0x0000, // Range Maximum 0x0000, // Translation Offset \
         0x0001, // Length",
        "IO (Decode16, 0x0CF8, // Range Minimum 0x0CF8, // Range Maximum 0x01, // Alignment \
         0x08, // Length",
        "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, \
         0x00000000, // Granularity 0xC0000000, // Range Minimum 0xCFFFFFFF, // Range Maximum \
         0x00000000, // Translation Offset 0x10000000, // Length",
        "Device (VR00)",
    ] {
        assert!(flat.contains(want), "{want}\n{flat}");
    }
    let without = disassembled_dsdt(&acpi::build(1, &[device], None).unwrap());
    assert!(!without.contains("PCI0"), "{without}");
}
