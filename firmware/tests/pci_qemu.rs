//! The probe's PCI code (`probe.pci`, `probe.edu`, firmware/src/virtio/pci.c) against QEMU's
//! own PCI bus and `edu` device, the reference the passthrough test later drives through
//! VFIO: QEMU q35 with `-accel kvm`, SeaBIOS assigning the BARs, the PVH probe as `-kernel`.
//!
//! Needs qemu-system-x86 (scripts/install-test-deps.sh) and /dev/kvm; set
//! EDGEVISOR_SKIP_KVM_TESTS=1 to skip.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn probe_scans_q35_and_drives_qemus_edu_device() {
    if std::env::var_os("EDGEVISOR_SKIP_KVM_TESTS").is_some() {
        eprintln!("EDGEVISOR_SKIP_KVM_TESTS is set: not booting the probe in QEMU");
        return;
    }
    let image = Path::new(env!("OUT_DIR")).join("probe-pvh.elf");
    let output = Command::new("timeout")
        .args(["-k", "5", "120", "qemu-system-x86_64"])
        .args(["-M", "q35", "-accel", "kvm"])
        .args([
            "-cpu",
            "host,-arch-capabilities,+invtsc,vmware-cpuid-freq=on",
        ])
        .args(["-m", "128", "-nodefaults", "-no-user-config", "-nographic"])
        .args(["-serial", "stdio"])
        .args(["-device", "isa-debug-exit,iobase=0x501,iosize=1"])
        .args(["-device", "edu"])
        .arg("-kernel")
        .arg(&image)
        .args(["-append", "probe.pci probe.edu probe.exit=debug=5"])
        .stdin(Stdio::null())
        .output()
        .expect("run qemu-system-x86_64 under timeout (scripts/install-test-deps.sh)");
    let serial = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    assert_eq!(
        output.status.code(),
        Some(11),
        "the probe did not pass:\n{serial}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pci: Vec<&str> = serial
        .lines()
        .filter(|l| l.starts_with("probe: pci "))
        .collect();
    // q35: host bridge 8086:29c0 at 00:00.0, edu, the ISA bridge at 00:1f.0.
    assert!(
        pci[0].starts_with("probe: pci 00:00.0 8086:29c0 class=060000"),
        "{pci:?}"
    );
    let edu = pci
        .iter()
        .find(|l| l.contains(" 1234:11e8 "))
        .unwrap_or_else(|| panic!("no edu line: {pci:?}"));
    assert!(edu.contains("class=00ff00 bar0=mem32@0x"), "{edu}");
    assert!(edu.ends_with("+0x100000"), "edu BAR0 is 1 MiB: {edu}");
    let line = serial
        .lines()
        .find(|l| l.starts_with("probe: edu "))
        .unwrap_or_else(|| panic!("no edu result:\n{serial}"));
    assert_eq!(
        line,
        "probe: edu id=0x010000ed factorial(5)=120 dma=256 msi=0x40"
    );
}
