//! The probe's PCI code (`probe.pci`, `probe.edu`, firmware/src/virtio/pci.c) against QEMU's
//! own PCI bus and `edu` device, the reference the passthrough test later drives through
//! VFIO: QEMU q35 with `-accel kvm`, SeaBIOS assigning the BARs, the PVH probe as `-kernel`.
//!
//! The same run with QEMU's emulated NVMe controller checks the probe's NVMe driver
//! (`probe.nvme`, firmware/src/virtio/nvme.c) and its MSI-X set-up on QEMU's own MSI-X.
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
    let (code, serial) = run_probe(
        &["-device", "edu"],
        "probe.pci probe.edu probe.exit=debug=5",
    );
    assert_eq!(code, Some(11), "the probe did not pass:\n{serial}");
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

/// Boots the PVH probe under QEMU q35 with KVM, SeaBIOS assigning the BARs, `devices` added,
/// and returns (exit code, serial output).
fn run_probe(devices: &[&str], append: &str) -> (Option<i32>, String) {
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
        .args(devices)
        .arg("-kernel")
        .arg(&image)
        .args(["-append", append])
        .stdin(Stdio::null())
        .output()
        .expect("run qemu-system-x86_64 under timeout (scripts/install-test-deps.sh)");
    let serial = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.code(), format!("{serial}\n{stderr}"))
}

/// A 1 MiB raw disk image under OUT_DIR whose first sector starts with `head`.
fn disk_image(name: &str, head: &[u8]) -> std::path::PathBuf {
    let path = Path::new(env!("OUT_DIR")).join(name);
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..head.len()].copy_from_slice(head);
    std::fs::write(&path, bytes).expect("write the NVMe disk image under OUT_DIR");
    path
}

#[test]
fn probe_drives_qemus_nvme_controller_with_msix() {
    if std::env::var_os("EDGEVISOR_SKIP_KVM_TESTS").is_some() {
        eprintln!("EDGEVISOR_SKIP_KVM_TESTS is set: not booting the probe in QEMU");
        return;
    }
    let disk = disk_image("pci-qemu-nvme.img", b"edgevisor-nvme-disk\0");
    let drive = format!("if=none,id=nv0,format=raw,file={}", disk.display());
    let (code, serial) = run_probe(
        &[
            "-drive",
            &drive,
            "-device",
            "nvme,serial=edgevisor,drive=nv0",
        ],
        "probe.pci probe.nvme probe.exit=debug=5",
    );
    assert_eq!(code, Some(11), "the probe did not pass:\n{serial}");
    // QEMU's NVMe controller: 1b36:0010, class 01:08:02, a 64-bit BAR0.
    let pci = serial
        .lines()
        .find(|l| l.starts_with("probe: pci ") && l.contains(" 1b36:0010 "))
        .unwrap_or_else(|| panic!("no NVMe function:\n{serial}"));
    assert!(pci.contains("class=010802 bar0=mem64@0x"), "{pci}");
    let line = serial
        .lines()
        .find(|l| l.starts_with("probe: nvme "))
        .unwrap_or_else(|| panic!("no nvme result:\n{serial}"));
    assert_eq!(
        line,
        "probe: nvme vid=0x1b36 serial=edgevisor admin-msix=0x42 lba0=edgevisor-nvme-disk io-msix=0x43 masked=held"
    );
}
