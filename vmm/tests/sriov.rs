//! `edgevisor node` and `edgevisor sriov` against recorded sysfs trees
//! (net-dpdk/tests/data/sysfs-*): this host has no SR-IOV NIC, no IOMMU and no VFIO, so the
//! sysfs side is checked on copies of synthetic trees laid out like the kernel's, and the
//! kernel's own part (binding the driver, creating the VFs) cannot happen here: the tests
//! check what is written, and that the missing kernel answer is reported as such.

// Runs the edgevisor binary itself, which qemu-user (the arm64 CI runner) cannot exec without
// binfmt; the sysfs code under it is the same on both architectures.
#![cfg(target_arch = "x86_64")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const EDGEVISOR: &str = env!("CARGO_BIN_EXE_edgevisor");

/// A private copy of a recorded tree (symlinks kept), removed on drop.
struct Tree(PathBuf);

impl Tree {
    fn copy(name: &str) -> Tree {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../net-dpdk/tests/data")
            .join(name);
        // Tests run in parallel and several copy the same tree: each copy has its own name.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dst = std::env::temp_dir().join(format!("ev-sriov-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dst);
        let out = Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&dst)
            .output()
            .unwrap();
        assert!(out.status.success(), "cp -a {}: {out:?}", src.display());
        Tree(dst)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.0.join(rel))
            .unwrap()
            .trim()
            .to_string()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn edgevisor(tree: &Tree, args: &[&str]) -> Output {
    Command::new(EDGEVISOR)
        .args(args)
        .arg("--sysfs-root")
        .arg(&tree.0)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn node_lists_pfs_and_vfs_with_drivers_numa_and_iommu_groups() {
    let tree = Tree::copy("sysfs-x710");
    let o = edgevisor(&tree, &["node"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("SR-IOV PF 0000:3b:00.0 8086:1572 driver i40e numa 0 iommu group 40 net ens1f0 VFs 4/32"),
        "{out}"
    );
    assert!(
        out.contains("  VF 2 0000:3b:02.2 8086:154c driver vfio-pci numa 0 iommu group 62"),
        "{out}"
    );
    assert!(out.contains("SR-IOV PF 0000:3b:00.1 "), "{out}");

    let o = edgevisor(&tree, &["node", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let pfs = doc["sriov"]["physical_functions"].as_array().unwrap();
    assert_eq!(pfs.len(), 2);
    assert_eq!(pfs[0]["total_vfs"], 32);
    assert_eq!(pfs[0]["vfs"].as_array().unwrap().len(), 4);
    assert_eq!(pfs[0]["vfs"][1]["net_interfaces"][0], "ens1f0v1");
    assert!(
        doc["nodes"].is_array(),
        "the NUMA topology is still there: {doc}"
    );

    // No IOMMU and no NUMA node: both show as absent, not as 0.
    let tree = Tree::copy("sysfs-noiommu");
    let o = edgevisor(&tree, &["node", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let pf = &doc["sriov"]["physical_functions"][0];
    assert_eq!(pf["iommu_group"], serde_json::Value::Null, "{pf}");
    assert_eq!(pf["numa_node"], serde_json::Value::Null, "{pf}");
    assert_eq!(pf["vfs"].as_array().unwrap().len(), 2);
}

#[test]
fn vfs_are_created_through_zero_and_bounded_by_totalvfs() {
    let tree = Tree::copy("sysfs-x710");
    let numvfs = "sys/bus/pci/devices/0000:3b:00.0/sriov_numvfs";
    let o = edgevisor(&tree, &["sriov", "vfs", "0000:3b:00.0", "8", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("would write 0 to"), "{}", text(&o));
    assert_eq!(tree.read(numvfs), "4", "a dry run writes nothing");

    let o = edgevisor(&tree, &["sriov", "vfs", "0000:3b:00.0", "8"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    let zero = out.find("wrote 0 to").unwrap();
    let eight = out.find("wrote 8 to").unwrap();
    assert!(zero < eight, "{out}");
    assert_eq!(tree.read(numvfs), "8");
    let o = edgevisor(&tree, &["sriov", "vfs", "0000:3b:00.0", "8"]);
    assert!(text(&o).contains("nothing to change"), "{}", text(&o));

    let o = edgevisor(&tree, &["sriov", "vfs", "0000:3b:00.0", "33"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("supports at most 32 VFs"), "{}", text(&o));
    let o = edgevisor(&tree, &["sriov", "vfs", "0000:3b:02.0", "1"]);
    assert!(
        text(&o).contains("is not an SR-IOV physical function"),
        "{}",
        text(&o)
    );
    let o = edgevisor(&tree, &["sriov", "vfs", "0000:99:00.0", "1"]);
    assert!(
        text(&o).contains("there is no PCI device 0000:99:00.0"),
        "{}",
        text(&o)
    );
    let o = edgevisor(&tree, &["sriov", "vfs", "3b:00", "1"]);
    assert!(text(&o).contains("is not a PCI address"), "{}", text(&o));
    assert_eq!(tree.read(numvfs), "8", "refused requests changed nothing");
}

#[test]
fn binding_to_vfio_writes_override_unbind_probe_and_reports_the_kernels_answer() {
    let tree = Tree::copy("sysfs-x710");
    let dev = "sys/bus/pci/devices/0000:3b:02.0";
    let o = edgevisor(&tree, &["sriov", "bind-vfio", "0000:3b:02.0"]);
    let out = text(&o);
    assert_eq!(tree.read(&format!("{dev}/driver_override")), "vfio-pci");
    assert_eq!(tree.read("sys/bus/pci/drivers/iavf/unbind"), "0000:3b:02.0");
    assert_eq!(tree.read("sys/bus/pci/drivers_probe"), "0000:3b:02.0");
    // A recorded tree has no kernel behind it: the driver link stays iavf, and that is said.
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains(
            "the kernel has not made 0000:3b:02.0 usable by VFIO: 0000:3b:02.0 is bound to iavf"
        ),
        "{out}"
    );

    // A VF already on vfio-pci, alone in its group: nothing to write, and ready.
    let o = edgevisor(&tree, &["sriov", "bind-vfio", "0000:3b:02.2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("nothing to change"));
    assert!(
        text(&o).contains("viable IOMMU group 62: /dev/vfio/62"),
        "{}",
        text(&o)
    );

    // No IOMMU: refused before writing anything.
    let tree = Tree::copy("sysfs-noiommu");
    let o = edgevisor(&tree, &["sriov", "bind-vfio", "0000:01:10.0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("has no IOMMU group: enable the IOMMU"),
        "{}",
        text(&o)
    );
    assert_eq!(
        tree.read("sys/bus/pci/devices/0000:01:10.0/driver_override"),
        "(null)"
    );

    // A group shared with a device on another driver is not viable.
    let tree = Tree::copy("sysfs-shared-group");
    let o = edgevisor(&tree, &["sriov", "check", "0000:05:00.0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("IOMMU group 15 of 0000:05:00.0 is not viable: 0000:05:00.1 in the same group is bound to igb"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_vf_mac_and_vlan_go_through_the_pf_interface() {
    let tree = Tree::copy("sysfs-x710");
    let o = edgevisor(
        &tree,
        &[
            "sriov",
            "mac",
            "0000:3b:00.0",
            "1",
            "02:00:00:00:00:07",
            "--vlan",
            "100",
            "--dry-run",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("would run ip link set dev ens1f0 vf 1 mac 02:00:00:00:00:07 vlan 100"),
        "{}",
        text(&o)
    );
    for (args, want) in [
        (
            vec!["0000:3b:00.0", "4", "02:00:00:00:00:07"],
            "has 4 VFs, so there is no VF 4",
        ),
        (
            vec!["0000:3b:00.0", "0", "01:00:00:00:00:07"],
            "is not a unicast MAC address",
        ),
        (
            vec!["0000:3b:00.0", "0", "02:00:00:00:00:07", "--vlan", "4095"],
            "VLAN 4095 is out of range",
        ),
        (vec!["0000:3b:00.1", "0", "02:00:00:00:00:07"], "has 0 VFs"),
    ] {
        let mut full = vec!["sriov", "mac"];
        full.extend(args);
        full.push("--dry-run");
        let o = edgevisor(&tree, &full);
        assert_eq!(o.status.code(), Some(2), "{full:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{full:?}: {}", text(&o));
    }
}
