//! One configuration type for every way of starting a VM: CLI flags, a Firecracker-style
//! `--config` file, or an orchestrator embedding the crate.

use std::path::{Path, PathBuf};

use images::BootProtocol;
use numa::{CpuSpec, HugePages, MemorySpec};
use serde::{Deserialize, Serialize};

use crate::device_config::{
    DeviceConfigError, DiskCache, DiskConfig, NetConfig, VhostUserNetConfig, VsockConfig,
};

/// Largest vCPU count we build tables for.
pub const MAX_VCPUS: u8 = 254;

/// Errors in the configuration itself (before anything is created).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Memory size is zero.
    #[error("guest memory size is zero: give --mem a size such as 64M or 1G")]
    ZeroMemory,
    /// Memory size did not parse.
    #[error("guest memory size {0:?} is not a size: use a number of MiB, or a number with K, M or G (e.g. 64M, 1G)")]
    BadSize(String),
    /// Memory size not a whole number of MiB.
    #[error("guest memory size {0:?} is not a whole number of MiB: round it to a multiple of 1M")]
    NotMib(String),
    /// Memory size above what the host has.
    #[error("guest memory size {mib} MiB is more than this host's {host_mib} MiB of RAM: use a smaller --mem")]
    TooMuchMemory {
        /// Requested.
        mib: u64,
        /// Host total.
        host_mib: u64,
    },
    /// vCPU count out of range.
    #[error("vCPU count {0} is out of range: use 1 to {MAX_VCPUS}")]
    BadVcpus(u64),
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid for our schema.
    #[error("config file {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde reported (names the unknown field and where).
        #[source]
        source: serde_json::Error,
    },
    /// A memory or vCPU option is not valid.
    #[error(transparent)]
    Spec(#[from] numa::SpecError),
    /// A device option is not usable.
    #[error(transparent)]
    Device(#[from] DeviceConfigError),
    /// A vhost-user back end needs guest memory it can map.
    #[error("--net vhost-user={socket} needs guest memory the back end can map, but guest memory is private: add shared=on to --mem (e.g. --mem 256M,shared=on, or 256M,hugepages=2M,shared=on for DPDK)")]
    VhostUserNeedsSharedMemory {
        /// The first vhost-user socket configured.
        socket: PathBuf,
    },
    /// A `--device vfio=` address that does not parse.
    #[error("--device vfio={bdf}: {source}")]
    VfioAddress {
        /// What was given.
        bdf: String,
        /// Why it is not an address.
        #[source]
        source: net_dpdk::sriov::SriovError,
    },
    /// Passthrough asked for on an architecture without it yet.
    #[error("--device vfio= is not supported on this architecture yet (x86_64 only): remove it")]
    VfioUnsupported,
    /// A Firecracker section we do not implement yet.
    #[error("config file {path}: {what} is not supported by edgevisor yet: remove it")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What.
        what: String,
    },
}

/// Which kernel to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KernelSource {
    /// The boot probe built into this binary (firmware crate), via its Linux 64-bit entry.
    #[default]
    BuiltinProbe,
    /// A kernel image file.
    Path(PathBuf),
}

/// Everything needed to build one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel image.
    #[serde(default)]
    pub kernel: KernelSource,
    /// Optional initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Guest RAM in MiB.
    #[serde(default = "default_mem_mib")]
    pub mem_mib: u64,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Boot protocol; `None` picks the image's preferred one.
    #[serde(default)]
    pub boot_protocol: Option<BootProtocol>,
    /// Page size backing guest RAM.
    #[serde(default)]
    pub hugepages: HugePages,
    /// NUMA node to bind guest RAM to (and, by default, to run the vCPUs on).
    #[serde(default)]
    pub numa_node: Option<u32>,
    /// Populate all of guest RAM before the guest starts.
    #[serde(default)]
    pub prefault: bool,
    /// Back guest RAM with a shared memfd (for vhost-user back ends).
    #[serde(default)]
    pub shared_memory: bool,
    /// Host CPU for each vCPU, in order.
    #[serde(default)]
    pub pin: Option<Vec<u32>>,
    /// Install a seccomp filter in each vCPU thread before its first KVM_RUN (the filters
    /// apply to those threads only). Turn off to debug, or where the embedding process
    /// handles SIGSYS itself.
    #[serde(default = "default_seccomp")]
    pub seccomp: bool,
    /// virtio-blk disks, in order (the guest sees vda, vdb, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-net cards on TAP devices.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// virtio-net cards served by vhost-user back ends (placed after the TAP cards).
    #[serde(default)]
    pub vhost_user_nets: Vec<VhostUserNetConfig>,
    /// The virtio-vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// A virtio-rng device.
    #[serde(default)]
    pub rng: bool,
    /// PCI functions passed through with VFIO (`DDDD:BB:DD.F` or `BB:DD.F`), in order.
    #[serde(default)]
    pub vfio: Vec<String>,
    /// Give the guest a PCI bus (host bridge only) even without `vfio` functions. For tests
    /// of the bus itself; `vfio` functions always bring the bus.
    #[serde(default)]
    pub pci: bool,
}

fn default_mem_mib() -> u64 {
    64
}
fn default_vcpus() -> u8 {
    1
}
fn default_seccomp() -> bool {
    true
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: KernelSource::BuiltinProbe,
            initrd: None,
            cmdline: String::new(),
            mem_mib: default_mem_mib(),
            vcpus: default_vcpus(),
            boot_protocol: None,
            hugepages: HugePages::None,
            numa_node: None,
            prefault: false,
            shared_memory: false,
            pin: None,
            seccomp: default_seccomp(),
            disks: Vec::new(),
            nets: Vec::new(),
            vhost_user_nets: Vec::new(),
            vsock: None,
            rng: false,
            vfio: Vec::new(),
            pci: false,
        }
    }
}

impl VmConfig {
    /// The memory part, in the `numa` crate's terms.
    pub fn memory_spec(&self) -> MemorySpec {
        MemorySpec {
            size_mib: self.mem_mib,
            hugepages: self.hugepages,
            node: self.numa_node,
            prefault: self.prefault,
            shared: self.shared_memory,
        }
    }

    /// The vCPU part, in the `numa` crate's terms.
    pub fn cpu_spec(&self) -> CpuSpec {
        CpuSpec {
            count: self.vcpus as u32,
            pin: self.pin.clone(),
        }
    }

    /// Takes size and options from a `--mem` value (`512M,hugepages=2M,node=0,...`).
    pub fn set_memory(&mut self, spec: &MemorySpec) {
        self.mem_mib = spec.size_mib;
        self.hugepages = spec.hugepages;
        self.numa_node = spec.node;
        self.prefault = spec.prefault;
        self.shared_memory = spec.shared;
    }

    /// Whether guest memory or vCPU placement asks for anything beyond the default
    /// (private 4 KiB pages, no binding, no pinning): only then is host topology read.
    pub fn needs_placement(&self) -> bool {
        self.hugepages != HugePages::None
            || self.numa_node.is_some()
            || self.prefault
            || self.shared_memory
            || self.pin.is_some()
    }

    /// Checks the values that need no file system or KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mem_mib == 0 {
            return Err(ConfigError::ZeroMemory);
        }
        if let Some(host_mib) = host_memory_mib() {
            if self.mem_mib > host_mib {
                return Err(ConfigError::TooMuchMemory {
                    mib: self.mem_mib,
                    host_mib,
                });
            }
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::BadVcpus(self.vcpus as u64));
        }
        self.memory_spec().validate()?;
        self.cpu_spec().validate()?;
        for net in &self.nets {
            net.validate()?;
        }
        for net in &self.vhost_user_nets {
            net.validate()?;
        }
        // Decision: vhost-user does not turn shared memory on by itself. shared=on changes
        // how guest RAM is accounted (shmem instead of anonymous memory) and which pages back
        // it, so it is the operator's call, as in Cloud Hypervisor; the error says what to add.
        if let Some(net) = self.vhost_user_nets.first() {
            if !self.shared_memory {
                return Err(ConfigError::VhostUserNeedsSharedMemory {
                    socket: net.socket.clone(),
                });
            }
        }
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
        }
        for bdf in &self.vfio {
            if let Err(source) = bdf.parse::<net_dpdk::sriov::Bdf>() {
                return Err(ConfigError::VfioAddress {
                    bdf: bdf.clone(),
                    source,
                });
            }
        }
        if cfg!(not(target_arch = "x86_64")) && (!self.vfio.is_empty() || self.pci) {
            return Err(ConfigError::VfioUnsupported);
        }
        let count = self.virtio_device_count();
        if count > crate::virtio::MAX_DEVICES {
            return Err(DeviceConfigError::TooMany {
                count,
                max: crate::virtio::MAX_DEVICES,
            }
            .into());
        }
        Ok(())
    }

    /// Whether the guest gets a PCI bus.
    pub fn wants_pci(&self) -> bool {
        self.pci || !self.vfio.is_empty()
    }

    /// How many virtio devices the config asks for.
    pub fn virtio_device_count(&self) -> usize {
        self.disks.len()
            + self.nets.len()
            + self.vhost_user_nets.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.rng)
    }

    /// Reads a Firecracker `--config-file` document (the parts we support).
    pub fn from_firecracker_file(path: &Path) -> Result<VmConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_firecracker_json(&text, path)
    }

    /// Parses a Firecracker config document; `path` only names it in errors.
    pub fn from_firecracker_json(text: &str, path: &Path) -> Result<VmConfig, ConfigError> {
        let fc: FirecrackerConfig =
            serde_json::from_str(text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let unsupported = |what: &str| ConfigError::Unsupported {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        for (name, present) in [
            ("\"balloon\"", fc.balloon.is_some()),
            ("\"logger\"", fc.logger.is_some()),
            ("\"metrics\"", fc.metrics.is_some()),
            ("\"mmds-config\"", fc.mmds_config.is_some()),
            ("\"cpu-config\"", fc.cpu_config.is_some()),
        ] {
            if present {
                return Err(unsupported(name));
            }
        }
        let mc = fc.machine_config.unwrap_or_default();
        if mc.smt == Some(true) {
            return Err(unsupported("machine-config.smt = true"));
        }
        if mc.track_dirty_pages == Some(true) {
            return Err(unsupported("machine-config.track_dirty_pages = true"));
        }
        if mc.cpu_template.is_some() {
            return Err(unsupported("machine-config.cpu_template"));
        }
        let hugepages = match mc.huge_pages.as_deref() {
            None => HugePages::None,
            Some(value) => value.parse::<HugePages>()?,
        };
        let vcpus = mc.vcpu_count.unwrap_or(1);
        let mut cmdline = fc.boot_source.boot_args.unwrap_or_default();
        let disks = firecracker_drives(&fc.drives, &mut cmdline, path)?;
        let nets = fc
            .network_interfaces
            .into_iter()
            .map(|n| NetConfig {
                tap: n.host_dev_name,
                mac: n.guest_mac,
            })
            .collect();
        let config = VmConfig {
            kernel: KernelSource::Path(fc.boot_source.kernel_image_path),
            initrd: fc.boot_source.initrd_path,
            cmdline,
            mem_mib: mc.mem_size_mib.unwrap_or(default_mem_mib()),
            vcpus: u8::try_from(vcpus).map_err(|_| ConfigError::BadVcpus(vcpus))?,
            hugepages,
            disks,
            nets,
            vsock: fc.vsock.map(|v| VsockConfig {
                cid: v.guest_cid,
                uds: v.uds_path,
            }),
            rng: fc.entropy.is_some(),
            ..VmConfig::default()
        };
        config.validate()?;
        Ok(config)
    }
}

/// Host RAM in MiB, from /proc/meminfo.
pub fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FirecrackerConfig {
    #[serde(rename = "boot-source")]
    boot_source: FcBootSource,
    #[serde(rename = "machine-config", default)]
    machine_config: Option<FcMachineConfig>,
    #[serde(default)]
    drives: Vec<FcDrive>,
    #[serde(rename = "network-interfaces", default)]
    network_interfaces: Vec<FcNetworkInterface>,
    #[serde(default)]
    balloon: Option<serde_json::Value>,
    #[serde(default)]
    vsock: Option<FcVsock>,
    #[serde(default)]
    logger: Option<serde_json::Value>,
    #[serde(default)]
    metrics: Option<serde_json::Value>,
    #[serde(rename = "mmds-config", default)]
    mmds_config: Option<serde_json::Value>,
    #[serde(default)]
    entropy: Option<serde_json::Value>,
    #[serde(rename = "cpu-config", default)]
    cpu_config: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FcDrive {
    drive_id: String,
    path_on_host: PathBuf,
    #[serde(default)]
    is_root_device: bool,
    #[serde(default)]
    is_read_only: Option<bool>,
    #[serde(default)]
    cache_type: Option<String>,
    #[serde(default)]
    partuuid: Option<String>,
    #[serde(default)]
    io_engine: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FcNetworkInterface {
    #[allow(dead_code)]
    iface_id: String,
    host_dev_name: String,
    #[serde(default)]
    guest_mac: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FcVsock {
    #[serde(default)]
    #[allow(dead_code)]
    vsock_id: Option<String>,
    guest_cid: u64,
    uds_path: PathBuf,
}

/// Firecracker's drives: disks in order, the root device first (it becomes /dev/vda and
/// `root=` is added to the command line, as Firecracker does).
fn firecracker_drives(
    drives: &[FcDrive],
    cmdline: &mut String,
    path: &Path,
) -> Result<Vec<DiskConfig>, ConfigError> {
    let unsupported = |what: String| ConfigError::Unsupported {
        path: path.to_path_buf(),
        what,
    };
    let mut ordered: Vec<&FcDrive> = drives.iter().filter(|d| d.is_root_device).collect();
    if ordered.len() > 1 {
        return Err(unsupported(
            "more than one drive with is_root_device = true".into(),
        ));
    }
    ordered.extend(drives.iter().filter(|d| !d.is_root_device));
    let mut disks = Vec::with_capacity(ordered.len());
    for d in ordered {
        let cache = match d.cache_type.as_deref() {
            None | Some("Writeback") => DiskCache::Writeback,
            Some("Unsafe") => DiskCache::Unsafe,
            Some(other) => {
                return Err(unsupported(format!(
                    "drives[{}].cache_type = {other:?} (use \"Unsafe\" or \"Writeback\")",
                    d.drive_id
                )))
            }
        };
        if d.partuuid.is_some() {
            return Err(unsupported(format!("drives[{}].partuuid", d.drive_id)));
        }
        if d.io_engine.as_deref().is_some_and(|e| e != "Sync") {
            return Err(unsupported(format!(
                "drives[{}].io_engine other than \"Sync\"",
                d.drive_id
            )));
        }
        let readonly = d.is_read_only.unwrap_or(false);
        if d.is_root_device {
            let mode = if readonly { "ro" } else { "rw" };
            cmdline.push_str(&format!(" root=/dev/vda {mode}"));
        }
        disks.push(DiskConfig {
            path: d.path_on_host.clone(),
            readonly,
            cache,
        });
    }
    Ok(disks)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FcBootSource {
    kernel_image_path: PathBuf,
    #[serde(default)]
    initrd_path: Option<PathBuf>,
    #[serde(default)]
    boot_args: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FcMachineConfig {
    #[serde(default)]
    vcpu_count: Option<u64>,
    #[serde(default)]
    mem_size_mib: Option<u64>,
    #[serde(default)]
    smt: Option<bool>,
    #[serde(default)]
    track_dirty_pages: Option<bool>,
    #[serde(default)]
    huge_pages: Option<String>,
    #[serde(default)]
    cpu_template: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fc(json: &str) -> Result<VmConfig, ConfigError> {
        VmConfig::from_firecracker_json(json, Path::new("vm.json"))
    }

    #[test]
    fn firecracker_config_maps_to_vm_config() {
        let c = fc(r#"{
            "boot-source": {"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 128, "smt": false, "huge_pages": "None"},
            "drives": [], "network-interfaces": []
        }"#)
        .unwrap();
        assert_eq!(c.kernel, KernelSource::Path("/k".into()));
        assert_eq!(c.initrd, Some(PathBuf::from("/i")));
        assert_eq!(c.cmdline, "console=ttyS0");
        assert_eq!((c.vcpus, c.mem_mib), (2, 128));
        assert_eq!(c.hugepages, HugePages::None);
        let c = fc(r#"{"boot-source": {"kernel_image_path": "/k"},
            "machine-config": {"mem_size_mib": 128, "huge_pages": "2M"}}"#)
        .unwrap();
        assert_eq!(c.hugepages, HugePages::Size2M);
        assert!(c.needs_placement());
        let e = fc(r#"{"boot-source": {"kernel_image_path": "/k"},
            "machine-config": {"mem_size_mib": 129, "huge_pages": "2M"}}"#)
        .unwrap_err();
        assert!(e.to_string().contains("129"), "{e}");
    }

    #[test]
    fn unknown_fields_are_errors_naming_the_field() {
        let e =
            fc(r#"{"boot-source": {"kernel_image_path": "/k", "kernel_args": "x"}}"#).unwrap_err();
        assert!(e.to_string().contains("kernel_args"), "{e}");
        let e = fc(r#"{"boot-source": {"kernel_image_path": "/k"}, "machine": {}}"#).unwrap_err();
        assert!(e.to_string().contains("machine"), "{e}");
    }

    #[test]
    fn unsupported_sections_are_named() {
        let e = fc(r#"{"boot-source": {"kernel_image_path": "/k"}, "balloon": {}}"#).unwrap_err();
        assert!(e.to_string().contains("balloon"), "{e}");
        let e =
            fc(r#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [{"drive_id": "a"}]}"#)
                .unwrap_err();
        assert!(e.to_string().contains("path_on_host"), "{e}");
        let e = fc(r#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [
            {"drive_id": "a", "path_on_host": "/a", "is_root_device": false, "cache_type": "None"}]}"#)
        .unwrap_err();
        assert!(e.to_string().contains("cache_type"), "{e}");
        let e = fc(r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"mem_size_mib": 0}}"#)
            .unwrap_err();
        assert!(matches!(e, ConfigError::ZeroMemory));
        let e = fc(r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 300}}"#)
            .unwrap_err();
        assert!(matches!(e, ConfigError::BadVcpus(300)));
    }

    #[test]
    fn firecracker_devices_map_to_virtio_devices() {
        let c = fc(r#"{
            "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
            "drives": [
                {"drive_id": "data", "path_on_host": "/data.img", "is_root_device": false,
                 "is_read_only": true, "cache_type": "Unsafe"},
                {"drive_id": "rootfs", "path_on_host": "/root.img", "is_root_device": true,
                 "is_read_only": false}
            ],
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                                    "guest_mac": "02:00:00:00:00:01"}],
            "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
            "entropy": {}
        }"#)
        .unwrap();
        assert_eq!(c.disks.len(), 2);
        assert_eq!(
            c.disks[0].path,
            PathBuf::from("/root.img"),
            "root device first"
        );
        assert!(!c.disks[0].readonly);
        assert_eq!(c.disks[1].cache, DiskCache::Unsafe);
        assert!(c.disks[1].readonly);
        assert_eq!(c.cmdline, "console=ttyS0 root=/dev/vda rw");
        assert_eq!(c.nets[0].tap, "tap0");
        assert_eq!(c.nets[0].mac_bytes(), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(c.vsock.as_ref().map(|v| v.cid), Some(3));
        assert!(c.rng);
        assert_eq!(c.virtio_device_count(), 5);
    }

    #[test]
    fn native_config_round_trips_through_json() {
        let c = VmConfig {
            kernel: KernelSource::Path("/k".into()),
            cmdline: "a b".into(),
            boot_protocol: Some(BootProtocol::Pvh),
            ..VmConfig::default()
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), c);
    }
}
