//! `--device vfio=BDF` on a host without VFIO or an IOMMU (this one): every refusal is one
//! sentence, exit code 2, and nothing is left behind; and the guest's PCI bus itself (the
//! hidden `--pci-bus` gives the bus with only its host bridge), seen by the probe through
//! ports 0xCF8/0xCFC. The passthrough of a real function runs one level down, in the nested
//! test (tests/tests/nested.rs), where QEMU's edu device sits behind an emulated IOMMU.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;
use common::*;

/// The first PCI function of this host, if it has any.
fn a_host_function() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/bus/pci/devices")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next()
}

#[test]
fn a_host_without_vfio_is_told_so_and_nothing_is_left_behind() {
    if std::path::Path::new("/dev/vfio/vfio").exists() {
        eprintln!("this host has VFIO: the missing-VFIO sentence cannot be seen here");
        return;
    }
    let Some(bdf) = a_host_function() else {
        eprintln!("this host has no PCI functions to name");
        return;
    };
    let dir = Scratch::new("vfio-missing");
    let vsock = dir.0.join("v.sock");
    let api = dir.0.join("api.sock");
    let report = dir.0.join("report.json");
    let o = edgevisor(&[
        "run",
        "--device",
        &format!("vfio={bdf}"),
        "--vsock",
        &format!("cid=3,uds={}", vsock.display()),
        "--api-socket",
        api.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let err = stderr(&o);
    assert_eq!(
        err.trim(),
        format!(
            "edgevisor: error: --device vfio={bdf}: no /dev/vfio/vfio: the host has no VFIO \
             (load vfio-pci and enable the IOMMU)"
        ),
        "{}",
        show(&o)
    );
    assert!(stdout(&o).is_empty(), "nothing booted: {}", show(&o));
    for path in [&vsock, &api, &report] {
        assert!(!path.exists(), "{} was left behind", path.display());
    }
}

#[test]
fn a_function_the_host_does_not_have_is_named() {
    let bdf = "0000:7e:1f.6";
    if std::path::Path::new("/sys/bus/pci/devices")
        .join(bdf)
        .exists()
    {
        return;
    }
    let o = edgevisor(&["run", "--device", "vfio=7e:1f.6"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert_eq!(
        stderr(&o).trim(),
        format!(
            "edgevisor: error: --device vfio={bdf}: there is no PCI device {bdf} under \
             /sys/bus/pci/devices: check the address with `lspci -D`"
        )
    );
}

#[test]
fn malformed_device_options_are_refused_before_anything() {
    for (arg, expected) in [
        (
            "vfio=zz",
            "edgevisor: error: --device vfio=zz: `zz` is not a PCI address: write it as \
             DDDD:BB:DD.F, for example 0000:3b:02.0",
        ),
        (
            "usb=1",
            "edgevisor: error: --device \"usb=1\": the only device kind is vfio=BDF (a PCI \
             function bound to vfio-pci)",
        ),
        (
            "vfio=",
            "edgevisor: error: --device \"vfio=\": give one PCI address, e.g. vfio=0000:01:00.1",
        ),
    ] {
        let o = edgevisor(&["run", "--device", arg]);
        assert_eq!(o.status.code(), Some(2), "{arg}: {}", show(&o));
        assert_eq!(stderr(&o).trim(), expected, "{arg}");
    }
    let o = edgevisor(&[
        "run",
        "--device",
        "vfio=00:03.0",
        "--device",
        "vfio=0000:00:03.0",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert_eq!(
        stderr(&o).trim(),
        "edgevisor: error: --device vfio=0000:00:03.0 is given twice: pass each function once"
    );
}

#[test]
fn the_probe_finds_the_host_bridge_only_when_there_is_a_bus() {
    let o = edgevisor(&["run", "--pci-bus", "--cmdline", "probe.pci"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("probe: pci "))
        .collect();
    assert_eq!(
        lines,
        ["probe: pci 00:00.0 8086:0d57 class=060000"],
        "{out}"
    );
    assert!(out.contains("PROBE PASS"), "{out}");

    // The default VM has no PCI bus: nothing answers at 0xCFC.
    let o = edgevisor(&["run", "--cmdline", "probe.pci"]);
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stdout(&o).contains("check=pci no function answers on bus 0"),
        "{}",
        show(&o)
    );
}
