//! Capabilities read from recorded /proc and /sys trees (tests/data) and from this host.

use std::path::{Path, PathBuf};

use agent::capabilities::{collect, collect_from, Capabilities};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[test]
fn raspberry_pi_4_tree() {
    let caps = collect_from(&data("rpi4"));
    assert_eq!(caps.arch, "aarch64");
    assert_eq!(caps.board.source, "device-tree");
    assert_eq!(caps.board.model, "Raspberry Pi 4 Model B Rev 1.4");
    assert!(caps.board.raspberry_pi);
    assert_eq!(caps.cpu.model, "Cortex-A72");
    assert_eq!(caps.cpu.vendor, "ARM");
    assert_eq!(caps.cpu.logical_cpus, 4);
    assert!(caps.cpu.flags.iter().any(|f| f == "asimd"));
    // No NUMA directory: one fallback node with every online CPU and /proc/meminfo.
    assert_eq!(caps.numa_nodes.len(), 1);
    assert_eq!(caps.numa_nodes[0].cpus, "0-3");
    assert_eq!(caps.numa_nodes[0].memory_total_bytes, 7_998_536 * 1024);
    assert_eq!(caps.allocatable.cpus, 4);
    assert_eq!(caps.allocatable.memory_bytes, 7_500_000 * 1024);
    assert_eq!(caps.allocatable.hugepages.len(), 1);
    assert_eq!(caps.allocatable.hugepages[0].page_size_bytes, 2 << 20);
    assert_eq!(caps.allocatable.hugepages[0].free, 6);
    // The recorded tree has no /dev: no KVM and no TAP, and the note says why.
    assert!(!caps.kvm.available);
    assert!(!caps.kvm.hardware_backed);
    assert!(caps.notes.iter().any(|n| n.contains("dev/kvm")));
    assert!(!caps.network.tap);
    assert!(caps.network.vhost_user);
    assert!(caps.sriov.is_empty());
    assert!(caps.iommu_groups.is_empty());
}

#[test]
fn x86_tree_with_sriov() {
    let caps = collect_from(&data("x86-sriov"));
    assert_eq!(caps.arch, "x86_64");
    assert_eq!(caps.board.source, "dmi");
    assert_eq!(caps.board.model, "Supermicro SYS-E300-9D-8CN8TP");
    assert_eq!(caps.board.board_name.as_deref(), Some("X11SDV-8C-TP8F"));
    assert!(!caps.board.raspberry_pi);
    assert_eq!(caps.cpu.model, "Intel(R) Xeon(R) D-2146NT CPU @ 2.30GHz");
    assert_eq!(caps.cpu.logical_cpus, 8);
    assert!(caps.cpu.flags.iter().any(|f| f == "vmx"));
    assert!(caps.network.tap);
    assert_eq!(caps.numa_nodes.len(), 1);
    assert_eq!(caps.numa_nodes[0].distances.get(&0), Some(&10));
    assert_eq!(caps.numa_nodes[0].hugepages[0].page_size_bytes, 1 << 30);
    assert_eq!(caps.numa_nodes[0].hugepages[0].free, 3);

    assert_eq!(caps.sriov.len(), 1, "{:?}", caps.sriov);
    let pf = &caps.sriov[0];
    assert_eq!(pf.address, "0000:65:00.0");
    assert_eq!(pf.driver.as_deref(), Some("i40e"));
    assert_eq!(pf.numa_node, Some(0));
    assert_eq!(pf.iommu_group, Some(20));
    assert_eq!((pf.total_vfs, pf.num_vfs), (64, 2));
    let vfs: Vec<_> = pf.vfs.iter().map(|v| v.address.as_str()).collect();
    assert_eq!(vfs, ["0000:65:02.0", "0000:65:02.1"]);
    assert_eq!(pf.vfs[0].driver.as_deref(), Some("vfio-pci"));
    assert_eq!(pf.vfs[1].driver, None);
    assert_eq!(pf.vfs[1].iommu_group, Some(22));

    let ids: Vec<u32> = caps.iommu_groups.iter().map(|g| g.id).collect();
    assert_eq!(ids, [3, 20, 21, 22]);
    assert_eq!(caps.iommu_groups[0].devices, ["0000:00:1f.6"]);
}

#[test]
fn document_round_trips_through_json() {
    let caps = collect_from(&data("x86-sriov"));
    let json = serde_json::to_string(&caps).unwrap();
    let back: Capabilities = serde_json::from_str(&json).unwrap();
    assert_eq!(back, caps);
}

#[test]
fn real_host() {
    let caps = collect();
    assert_eq!(caps.arch, std::env::consts::ARCH);
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let cpus = numa::CpuSet::parse(online.trim()).unwrap();
    assert_eq!(caps.allocatable.cpus as usize, cpus.len());
    assert!(!caps.cpu.model.is_empty());
    assert!(caps.allocatable.memory_bytes > 0);
    assert!(!caps.numa_nodes.is_empty());
    assert_eq!(
        caps.boot_protocols,
        images::BootProtocol::ALL
            .iter()
            .map(|p| p.name().to_string())
            .collect::<Vec<_>>()
    );
    if Path::new("/dev/kvm").exists() {
        assert!(caps.kvm.available, "notes: {:?}", caps.notes);
        assert_eq!(caps.kvm.api_version, Some(12));
        let rec = caps.kvm.recommended_vcpus.unwrap();
        let max = caps.kvm.max_vcpus.unwrap();
        assert!(rec >= 1 && max >= rec, "recommended {rec}, max {max}");
        assert_eq!(caps.kvm.extensions.get("user_memory"), Some(&true));
        assert_eq!(caps.kvm.extensions.get("irqfd"), Some(&true));
        assert_eq!(caps.kvm.extensions.get("ioeventfd"), Some(&true));
        // Hardware-backed exactly when the CPU flags show vmx or svm (this PVM host: no).
        let hw = caps.cpu.flags.iter().any(|f| f == "vmx" || f == "svm");
        assert_eq!(caps.kvm.hardware_backed, hw);
    }
    assert_eq!(caps.network.tap, Path::new("/dev/net/tun").exists());
}
