//! The DSDT, disassembled by ACPICA's `iasl` (Debian's acpica-tools): the virtio-mmio
//! devices must read back as the ASL a kernel's ACPI interpreter will see.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

use std::process::Command;

use vmm::arch::x86_64::acpi;
use vmm::arch::x86_64::aml::MmioDevice;

#[test]
fn iasl_reads_the_virtio_devices_back() {
    let devices: Vec<MmioDevice> = (0..2u32)
        .map(|i| MmioDevice {
            base: 0xd000_0000 + i * 0x1000,
            len: 0x1000,
            irq: [5, 6][i as usize],
        })
        .collect();
    let tables = acpi::build(2, &devices).unwrap();
    let dsdt = tables
        .iter()
        .find(|(_, t)| &t[..4] == b"DSDT")
        .map(|(_, t)| t.clone())
        .unwrap();
    let dir = std::env::temp_dir().join(format!("edgevisor-iasl-{}", std::process::id()));
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
    let flat: String = dsl.split_whitespace().collect::<Vec<_>>().join(" ");
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
