//! What this node can do: the document behind `GET /v1/node/capabilities`, the NFD feature
//! file ([`crate::nfd`]) and the `_info` metrics ([`crate::metrics`]).
//!
//! Everything is read from /proc, /sys and /dev under a root directory, so tests can point
//! [`collect_from`] at a recorded tree; [`collect`] reads the live host. Nothing here fails:
//! a fact that cannot be read is left empty and explained in [`Capabilities::notes`].

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Devices this build of edgevisor can give a guest.
pub const DEVICES: [&str; 4] = ["serial", "virtio-net", "virtio-blk", "virtio-rng"];

/// Everything a control plane needs to know before placing guests on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Version of the agent that wrote this document.
    pub agent_version: String,
    /// CPU architecture: "x86_64" or "aarch64".
    pub arch: String,
    /// The board or machine.
    pub board: Board,
    /// The CPU model and feature flags.
    pub cpu: Cpu,
    /// NUMA nodes (one node on machines without NUMA).
    pub numa_nodes: Vec<NumaNode>,
    /// The KVM device.
    pub kvm: Kvm,
    /// IOMMU groups and the PCI devices in each.
    pub iommu_groups: Vec<IommuGroup>,
    /// SR-IOV physical functions and their virtual functions.
    pub sriov: Vec<SriovPf>,
    /// Host networking back ends.
    pub network: Network,
    /// Boot protocols the image loader supports ("linux64", "pvh", "multiboot").
    pub boot_protocols: Vec<String>,
    /// Devices this build can give a guest.
    pub devices: Vec<String>,
    /// What is still free for new guests.
    pub allocatable: Allocatable,
    /// Facts that could not be read, one sentence each.
    pub notes: Vec<String>,
}

/// The board: a Raspberry Pi model from the device tree, else the DMI names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Board {
    /// Where the model came from: "device-tree", "dmi" or "unknown".
    pub source: String,
    /// A one-line model name ("Raspberry Pi 4 Model B Rev 1.4", "QEMU Standard PC").
    pub model: String,
    /// Whether this is a Raspberry Pi.
    pub raspberry_pi: bool,
    /// DMI sys_vendor.
    pub vendor: Option<String>,
    /// DMI product_name.
    pub product: Option<String>,
    /// DMI board_name.
    pub board_name: Option<String>,
}

/// The CPU as /proc/cpuinfo describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    /// Model name ("Intel(R) Xeon(R) ...", "Cortex-A72").
    pub model: String,
    /// Vendor ("GenuineIntel", "AuthenticAMD", "ARM").
    pub vendor: String,
    /// Logical CPUs listed in /proc/cpuinfo.
    pub logical_cpus: u32,
    /// Feature flags ("flags" on x86, "Features" on arm64), sorted.
    pub flags: Vec<String>,
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    /// Node id.
    pub id: u32,
    /// Its CPUs as a list ("0-3,8").
    pub cpus: String,
    /// Memory on the node in bytes.
    pub memory_total_bytes: u64,
    /// Free memory on the node in bytes.
    pub memory_free_bytes: u64,
    /// Distance to every node, by node id.
    pub distances: BTreeMap<u32, u32>,
    /// Hugepage pools on the node.
    pub hugepages: Vec<HugepagePool>,
}

/// One hugepage pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugepagePool {
    /// Page size in bytes.
    pub page_size_bytes: u64,
    /// Pages in the pool.
    pub total: u64,
    /// Pages not in use.
    pub free: u64,
}

/// The KVM device and the extensions edgevisor uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kvm {
    /// Whether /dev/kvm could be opened.
    pub available: bool,
    /// KVM_GET_API_VERSION (12 on every kernel since 2.6.22).
    pub api_version: Option<i32>,
    /// KVM_CAP_NR_VCPUS: the recommended vCPU count per VM.
    pub recommended_vcpus: Option<u32>,
    /// KVM_CAP_MAX_VCPUS: the vCPU limit per VM.
    pub max_vcpus: Option<u32>,
    /// Each extension edgevisor uses and whether the kernel has it.
    pub extensions: BTreeMap<String, bool>,
    /// Whether KVM runs on hardware virtualisation (vmx/svm on x86; EL2 on arm64) rather
    /// than a paravirtual or emulated KVM such as PVM.
    pub hardware_backed: bool,
}

/// One IOMMU group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IommuGroup {
    /// Group number.
    pub id: u32,
    /// PCI addresses of the devices in the group.
    pub devices: Vec<String>,
}

/// One SR-IOV physical function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SriovPf {
    /// PCI address ("0000:03:00.0").
    pub address: String,
    /// Bound driver, if any.
    pub driver: Option<String>,
    /// NUMA node of the device, if the firmware says.
    pub numa_node: Option<u32>,
    /// IOMMU group, if the IOMMU is on.
    pub iommu_group: Option<u32>,
    /// sriov_totalvfs.
    pub total_vfs: u32,
    /// sriov_numvfs: VFs currently enabled.
    pub num_vfs: u32,
    /// The enabled VFs.
    pub vfs: Vec<SriovVf>,
}

/// One SR-IOV virtual function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SriovVf {
    /// PCI address.
    pub address: String,
    /// Bound driver, if any ("vfio-pci" when ready for a guest).
    pub driver: Option<String>,
    /// IOMMU group, if the IOMMU is on.
    pub iommu_group: Option<u32>,
}

/// Host networking back ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// /dev/net/tun exists.
    pub tap: bool,
    /// vhost-user back ends can be used (needs only memfd, always true).
    pub vhost_user: bool,
    /// DPDK is installed (dpdk-testpmd in PATH or librte_eal present).
    pub dpdk: bool,
}

/// What is still free for new guests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocatable {
    /// Online CPUs.
    pub cpus: u32,
    /// Online CPUs as a list ("0-55").
    pub cpu_list: String,
    /// MemAvailable from /proc/meminfo, in bytes.
    pub memory_bytes: u64,
    /// Free hugepages per host-wide pool.
    pub hugepages: Vec<HugepagePool>,
}

/// Reads the live host's capabilities.
pub fn collect() -> Capabilities {
    let mut caps = collect_from(Path::new("/"));
    caps.arch = std::env::consts::ARCH.to_string();
    caps
}

/// Reads capabilities from the /proc, /sys and /dev trees under `root`.
pub fn collect_from(root: &Path) -> Capabilities {
    let mut notes = Vec::new();
    let cpuinfo = read_text(&root.join("proc/cpuinfo"));
    if cpuinfo.is_none() {
        notes.push(format!(
            "{} is not readable: no CPU facts",
            root.join("proc/cpuinfo").display()
        ));
    }
    let cpuinfo = cpuinfo.unwrap_or_default();
    let arch = arch_of(&cpuinfo).to_string();
    let cpu = parse_cpuinfo(&cpuinfo);
    let (numa_nodes, allocatable) = numa_and_allocatable(root, &mut notes);
    let mut kvm = read_kvm(&root.join("dev/kvm"), &mut notes);
    kvm.hardware_backed = kvm.available && hardware_backed(&arch, &cpu.flags);
    Capabilities {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        arch,
        board: read_board(root),
        cpu,
        numa_nodes,
        kvm,
        iommu_groups: read_iommu_groups(root),
        sriov: read_sriov(root),
        network: Network {
            tap: root.join("dev/net/tun").exists(),
            vhost_user: true,
            dpdk: dpdk_installed(root),
        },
        boot_protocols: images::BootProtocol::ALL
            .iter()
            .map(|p| p.name().to_string())
            .collect(),
        devices: DEVICES.iter().map(|d| d.to_string()).collect(),
        allocatable,
        notes,
    }
}

fn read_text(path: &Path) -> Option<String> {
    fs::read(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A sysfs/device-tree string: trimmed, NULs (device-tree terminators) removed.
fn read_trimmed(path: &Path) -> Option<String> {
    let text = read_text(path)?.replace('\0', "");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn read_number(path: &Path) -> Option<i64> {
    read_trimmed(path)?.parse().ok()
}

fn link_name(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

fn sorted_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn arch_of(cpuinfo: &str) -> &'static str {
    let has = |key: &str| {
        cpuinfo
            .lines()
            .any(|l| l.split(':').next().map(str::trim) == Some(key))
    };
    if has("vendor_id") || has("flags") {
        "x86_64"
    } else if has("CPU implementer") || has("Features") {
        "aarch64"
    } else {
        std::env::consts::ARCH
    }
}

/// Parses /proc/cpuinfo in its x86 ("model name", "flags") or arm64 ("CPU implementer",
/// "CPU part", "Features") form.
pub fn parse_cpuinfo(text: &str) -> Cpu {
    let mut cpu = Cpu::default();
    let mut implementer = None;
    let mut part = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => cpu.logical_cpus += 1,
            "model name" if cpu.model.is_empty() => cpu.model = value.to_string(),
            "vendor_id" if cpu.vendor.is_empty() => cpu.vendor = value.to_string(),
            "flags" | "Features" if cpu.flags.is_empty() => {
                cpu.flags = value.split_whitespace().map(str::to_string).collect();
            }
            "CPU implementer" if implementer.is_none() => implementer = parse_hex(value),
            "CPU part" if part.is_none() => part = parse_hex(value),
            _ => {}
        }
    }
    cpu.flags.sort();
    cpu.flags.dedup();
    if let Some(imp) = implementer {
        if cpu.vendor.is_empty() {
            cpu.vendor = arm_implementer(imp);
        }
        if cpu.model.is_empty() {
            cpu.model = arm_part(imp, part.unwrap_or(0));
        }
    }
    cpu
}

fn parse_hex(value: &str) -> Option<u64> {
    u64::from_str_radix(value.trim_start_matches("0x"), 16).ok()
}

fn arm_implementer(imp: u64) -> String {
    match imp {
        0x41 => "ARM".into(),
        0x42 => "Broadcom".into(),
        0x51 => "Qualcomm".into(),
        0x61 => "Apple".into(),
        0xc0 => "Ampere".into(),
        other => format!("implementer {other:#x}"),
    }
}

fn arm_part(imp: u64, part: u64) -> String {
    let name = match (imp, part) {
        (0x41, 0xd03) => "Cortex-A53",
        (0x41, 0xd04) => "Cortex-A35",
        (0x41, 0xd05) => "Cortex-A55",
        (0x41, 0xd07) => "Cortex-A57",
        (0x41, 0xd08) => "Cortex-A72",
        (0x41, 0xd09) => "Cortex-A73",
        (0x41, 0xd0a) => "Cortex-A75",
        (0x41, 0xd0b) => "Cortex-A76",
        (0x41, 0xd0c) => "Neoverse-N1",
        (0x41, 0xd40) => "Neoverse-V1",
        (0x41, 0xd49) => "Neoverse-N2",
        _ => return format!("{} part {part:#x}", arm_implementer(imp)),
    };
    name.to_string()
}

/// x86: KVM needs vmx or svm in the flags, which a PVM or TCG-only host lacks. arm64: the
/// kernel only offers /dev/kvm when it booted at EL2, i.e. with hardware virtualisation.
fn hardware_backed(arch: &str, flags: &[String]) -> bool {
    match arch {
        "x86_64" => flags.iter().any(|f| f == "vmx" || f == "svm"),
        _ => true,
    }
}

fn read_board(root: &Path) -> Board {
    for name in [
        "proc/device-tree/model",
        "sys/firmware/devicetree/base/model",
    ] {
        if let Some(model) = read_trimmed(&root.join(name)) {
            return Board {
                source: "device-tree".into(),
                raspberry_pi: model.starts_with("Raspberry Pi"),
                model,
                ..Board::default()
            };
        }
    }
    let dmi = root.join("sys/class/dmi/id");
    let vendor = read_trimmed(&dmi.join("sys_vendor"));
    let product = read_trimmed(&dmi.join("product_name"));
    let board_name = read_trimmed(&dmi.join("board_name"));
    let parts: Vec<&str> = [&vendor, &product]
        .into_iter()
        .filter_map(|s| s.as_deref())
        .collect();
    if parts.is_empty() && board_name.is_none() {
        return Board {
            source: "unknown".into(),
            model: "unknown".into(),
            ..Board::default()
        };
    }
    let model = if parts.is_empty() {
        board_name.clone().unwrap_or_default()
    } else {
        parts.join(" ")
    };
    Board {
        source: "dmi".into(),
        model,
        raspberry_pi: false,
        vendor,
        product,
        board_name,
    }
}

fn pools(list: &[numa::HugePagePool]) -> Vec<HugepagePool> {
    list.iter()
        .map(|p| HugepagePool {
            page_size_bytes: p.page_size_kib * 1024,
            total: p.total,
            free: p.free,
        })
        .collect()
}

fn numa_and_allocatable(root: &Path, notes: &mut Vec<String>) -> (Vec<NumaNode>, Allocatable) {
    let mut allocatable = Allocatable {
        memory_bytes: mem_available(&root.join("proc/meminfo")).unwrap_or(0),
        ..Allocatable::default()
    };
    let topology = match numa::Topology::from_root(root) {
        Ok(t) => t,
        Err(e) => {
            notes.push(format!("NUMA topology unavailable: {e}"));
            return (Vec::new(), allocatable);
        }
    };
    allocatable.cpus = u32::try_from(topology.online_cpus.len()).unwrap_or(u32::MAX);
    allocatable.cpu_list = topology.online_cpus.to_string();
    allocatable.hugepages = pools(&topology.hugepages);
    let nodes = topology
        .nodes
        .iter()
        .map(|n| NumaNode {
            id: n.id,
            cpus: n.cpus.to_string(),
            memory_total_bytes: n.memory_total_kib * 1024,
            memory_free_bytes: n.memory_free_kib * 1024,
            distances: n.distances.iter().map(|d| (d.node, d.distance)).collect(),
            hugepages: pools(&n.hugepages),
        })
        .collect();
    (nodes, allocatable)
}

fn mem_available(path: &Path) -> Option<u64> {
    let text = read_text(path)?;
    let mut free = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let key = words.next();
        let value: Option<u64> = words.next().and_then(|v| v.parse().ok());
        match key {
            Some("MemAvailable:") => return value.map(|v| v * 1024),
            Some("MemFree:") => free = value.map(|v| v * 1024),
            _ => {}
        }
    }
    free
}

fn read_kvm(dev: &Path, notes: &mut Vec<String>) -> Kvm {
    let mut out = Kvm::default();
    if !dev.exists() {
        notes.push(format!(
            "{} does not exist: load kvm_intel/kvm_amd/kvm",
            dev.display()
        ));
        return out;
    }
    let Ok(path) = CString::new(dev.as_os_str().as_bytes()) else {
        return out;
    };
    let kvm = match kvm_ioctls::Kvm::new_with_path(&path) {
        Ok(k) => k,
        Err(e) => {
            notes.push(format!(
                "{} cannot be opened ({e}): run as a user in group kvm",
                dev.display()
            ));
            return out;
        }
    };
    use kvm_ioctls::Cap;
    out.available = true;
    out.api_version = Some(kvm.get_api_version());
    out.recommended_vcpus = u32::try_from(kvm.get_nr_vcpus()).ok();
    out.max_vcpus = u32::try_from(kvm.get_max_vcpus()).ok();
    // Extended below on x86_64 only.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut caps: Vec<(&str, Cap)> = vec![
        ("user_memory", Cap::UserMemory),
        ("irqchip", Cap::Irqchip),
        ("irqfd", Cap::Irqfd),
        ("ioeventfd", Cap::Ioeventfd),
        ("immediate_exit", Cap::ImmediateExit),
        ("mp_state", Cap::MpState),
    ];
    #[cfg(target_arch = "x86_64")]
    caps.extend([
        ("ext_cpuid", Cap::ExtCpuid),
        ("set_tss_addr", Cap::SetTssAddr),
        ("pit2", Cap::Pit2),
        ("tsc_deadline_timer", Cap::TscDeadlineTimer),
        ("split_irqchip", Cap::SplitIrqchip),
    ]);
    for (name, cap) in caps {
        out.extensions
            .insert(name.to_string(), kvm.check_extension(cap));
    }
    out
}

fn read_iommu_groups(root: &Path) -> Vec<IommuGroup> {
    let dir = root.join("sys/kernel/iommu_groups");
    let mut groups: Vec<IommuGroup> = sorted_entries(&dir)
        .into_iter()
        .filter_map(|name| {
            let id = name.parse().ok()?;
            Some(IommuGroup {
                id,
                devices: sorted_entries(&dir.join(&name).join("devices")),
            })
        })
        .collect();
    groups.sort_by_key(|g| g.id);
    groups
}

fn iommu_group_of(dev: &Path) -> Option<u32> {
    link_name(&dev.join("iommu_group"))?.parse().ok()
}

fn read_sriov(root: &Path) -> Vec<SriovPf> {
    let dir = root.join("sys/bus/pci/devices");
    let mut pfs = Vec::new();
    for address in sorted_entries(&dir) {
        let dev = dir.join(&address);
        let Some(total) = read_number(&dev.join("sriov_totalvfs")) else {
            continue;
        };
        let num = read_number(&dev.join("sriov_numvfs")).unwrap_or(0);
        let vfs = (0..num.max(0))
            .filter_map(|i| link_name(&dev.join(format!("virtfn{i}"))))
            .map(|vf| {
                let vf_dev: PathBuf = dir.join(&vf);
                SriovVf {
                    driver: link_name(&vf_dev.join("driver")),
                    iommu_group: iommu_group_of(&vf_dev),
                    address: vf,
                }
            })
            .collect();
        pfs.push(SriovPf {
            driver: link_name(&dev.join("driver")),
            numa_node: read_number(&dev.join("numa_node")).and_then(|n| u32::try_from(n).ok()),
            iommu_group: iommu_group_of(&dev),
            total_vfs: u32::try_from(total).unwrap_or(0),
            num_vfs: u32::try_from(num).unwrap_or(0),
            vfs,
            address,
        });
    }
    pfs
}

fn dpdk_installed(root: &Path) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let in_path = std::env::split_paths(&path).any(|dir| {
        let rel = dir.strip_prefix("/").unwrap_or(&dir);
        root.join(rel).join("dpdk-testpmd").exists()
    });
    let lib_dirs = [
        "usr/lib",
        "usr/lib64",
        "usr/local/lib",
        "usr/lib/x86_64-linux-gnu",
        "usr/lib/aarch64-linux-gnu",
    ];
    in_path
        || lib_dirs.iter().any(|d| {
            sorted_entries(&root.join(d))
                .iter()
                .any(|n| n.starts_with("librte_eal.so"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU\nflags\t\t: fpu vmx sse2 hypervisor\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU\nflags\t\t: fpu vmx sse2 hypervisor\n";
    const ARM: &str = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\nprocessor\t: 1\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n";

    #[test]
    fn x86_cpuinfo() {
        let cpu = parse_cpuinfo(X86);
        assert_eq!(cpu.logical_cpus, 2);
        assert_eq!(cpu.model, "Intel(R) Xeon(R) CPU");
        assert_eq!(cpu.vendor, "GenuineIntel");
        assert_eq!(cpu.flags, ["fpu", "hypervisor", "sse2", "vmx"]);
        assert_eq!(arch_of(X86), "x86_64");
        assert!(hardware_backed("x86_64", &cpu.flags));
    }

    #[test]
    fn arm64_cpuinfo() {
        let cpu = parse_cpuinfo(ARM);
        assert_eq!(cpu.logical_cpus, 2);
        assert_eq!(cpu.model, "Cortex-A72");
        assert_eq!(cpu.vendor, "ARM");
        assert!(cpu.flags.contains(&"asimd".to_string()));
        assert_eq!(arch_of(ARM), "aarch64");
    }

    #[test]
    fn no_vmx_means_not_hardware_backed() {
        let cpu = parse_cpuinfo(&X86.replace(" vmx", ""));
        assert!(!hardware_backed("x86_64", &cpu.flags));
    }

    #[test]
    fn unknown_arm_part_is_named_by_number() {
        assert_eq!(arm_part(0x41, 0x123), "ARM part 0x123");
    }

    #[test]
    fn mem_available_prefers_available() {
        let dir = std::env::temp_dir().join(format!("agentobs-meminfo-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("meminfo");
        fs::write(
            &f,
            "MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable: 50 kB\n",
        )
        .unwrap();
        assert_eq!(mem_available(&f), Some(50 * 1024));
        fs::write(&f, "MemTotal: 100 kB\nMemFree: 10 kB\n").unwrap();
        assert_eq!(mem_available(&f), Some(10 * 1024));
        fs::remove_dir_all(&dir).unwrap();
    }
}
