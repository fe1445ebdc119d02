//! SR-IOV inventory and VF lifecycle, read from and written to a sysfs tree.
//!
//! Everything takes the root under which `sys/` lives (`/` on a real host, a recorded
//! tree in tests), so the same code runs against `/sys` and against the trees in
//! `tests/data/sysfs-*`. Layout and meaning of every file read here:
//! Linux `Documentation/ABI/testing/sysfs-bus-pci` (see `tests/data/sysfs-recipes/README.md`).
//!
//! What is read: PFs (`sriov_totalvfs`, `sriov_numvfs`, `sriov_vf_device`, `net/`), their VFs
//! (`virtfn*` links) and per function vendor/device/class, driver, NUMA node and IOMMU group.
//! What is written: `sriov_numvfs` ([`set_num_vfs`]), `driver_override`, `unbind`,
//! `drivers_probe` ([`bind_vfio`]). Each writer has a `plan_*` twin that returns the writes
//! without doing them, so callers (and tests) can show or check them first.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// The driver VFIO passthrough needs a function bound to.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";

/// Drivers that do not make an IOMMU group unusable for VFIO: `pci-stub` holds a device
/// without doing DMA and `pcieport` (bridges) declares its DMA as driver managed.
const VIABLE_FOREIGN_DRIVERS: &[&str] = &["pci-stub", "pcieport"];

/// Errors of the SR-IOV helpers. Each names the input and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SriovError {
    /// A PCI address that does not parse.
    #[error("`{input}` is not a PCI address: write it as DDDD:BB:DD.F, for example 0000:3b:02.0")]
    InvalidBdf {
        /// What was given.
        input: String,
    },
    /// No such device under the sysfs root.
    #[error("there is no PCI device {bdf} under {dir}: check the address with `lspci -D`")]
    NoSuchDevice {
        /// The address asked for.
        bdf: Bdf,
        /// The directory looked in.
        dir: PathBuf,
    },
    /// The function has no SR-IOV capability.
    #[error("{bdf} is not an SR-IOV physical function (it has no sriov_totalvfs): give the PF that owns the VFs")]
    NotAPf {
        /// The address given.
        bdf: Bdf,
    },
    /// More VFs asked for than the PF supports.
    #[error("{pf} supports at most {total} VFs but {requested} were asked for: ask for {total} or fewer")]
    TooManyVfs {
        /// The PF.
        pf: Bdf,
        /// The count asked for.
        requested: u32,
        /// `sriov_totalvfs` of the PF.
        total: u32,
    },
    /// The function is bound to a driver other than vfio-pci.
    #[error("{bdf} is bound to {driver}, not vfio-pci: bind it to vfio-pci first with `edgevisor sriov bind-vfio {bdf}`")]
    BoundElsewhere {
        /// The function.
        bdf: Bdf,
        /// Its current driver.
        driver: String,
    },
    /// The function is bound to no driver at all where vfio-pci is needed.
    #[error("{bdf} is bound to no driver, not vfio-pci: bind it to vfio-pci first with `edgevisor sriov bind-vfio {bdf}`")]
    Unbound {
        /// The function.
        bdf: Bdf,
    },
    /// The function has no IOMMU group (IOMMU off or absent).
    #[error("{bdf} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel command line) and reboot")]
    NoIommuGroup {
        /// The function.
        bdf: Bdf,
    },
    /// Another function in the same IOMMU group is bound to a non-VFIO driver.
    #[error("IOMMU group {group} of {bdf} is not viable: {other} in the same group is bound to {driver}; bind {other} to vfio-pci too or unbind it")]
    GroupNotViable {
        /// The group number.
        group: u32,
        /// The function being passed through.
        bdf: Bdf,
        /// The function that blocks the group.
        other: Bdf,
        /// Its driver.
        driver: String,
    },
    /// A sysfs file could not be read.
    #[error("could not read {path}: {source}")]
    Read {
        /// The file or link.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A sysfs file could not be written.
    #[error("could not write `{value}` to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A sysfs file holds something that is not what the kernel writes there.
    #[error(
        "{path} holds `{content}`, which is not {expected}: the tree is not a Linux PCI sysfs"
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// Its content.
        content: String,
        /// What was expected, e.g. "a decimal number".
        expected: &'static str,
    },
    /// A network interface name the kernel would not accept.
    #[error("`{name}` is not a network interface name: use 1 to 15 characters without '/', ':' or spaces")]
    InvalidIfname {
        /// What was given.
        name: String,
    },
    /// A MAC address that does not parse or cannot be a VF's address.
    #[error("`{input}` is not a unicast MAC address: write six hex bytes like 02:00:00:00:00:01 (not multicast, not all zero)")]
    InvalidMac {
        /// What was given.
        input: String,
    },
    /// A VLAN id outside 1..=4094.
    #[error("VLAN {vlan} is out of range: use 1 to 4094, or none for untagged")]
    InvalidVlan {
        /// What was given.
        vlan: u16,
    },
    /// `ip` could not be started.
    #[error("could not run `{command}`: {source}; install iproute2")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `ip` ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

type Result<T> = std::result::Result<T, SriovError>;

/// A PCI address, domain:bus:device.function, always printed as `DDDD:BB:DD.F` in lower case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    domain: u16,
    bus: u8,
    device: u8,
    function: u8,
}

impl Bdf {
    /// The parts: domain, bus, device (0..=31), function (0..=7).
    pub fn parts(&self) -> (u16, u8, u8, u8) {
        (self.domain, self.bus, self.device, self.function)
    }
}

impl FromStr for Bdf {
    type Err = SriovError;

    /// Parses `DDDD:BB:DD.F`, or `BB:DD.F` meaning domain 0.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || SriovError::InvalidBdf {
            input: s.to_string(),
        };
        let fields: Vec<&str> = s.split(':').collect();
        let (domain, bus, devfn) = match fields.as_slice() {
            [d, b, df] if d.len() == 4 => (*d, *b, *df),
            [b, df] => ("0000", *b, *df),
            _ => return Err(bad()),
        };
        let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
        if bus.len() != 2 || dev.len() != 2 || func.len() != 1 {
            return Err(bad());
        }
        let domain = u16::from_str_radix(domain, 16).map_err(|_| bad())?;
        let bus = u8::from_str_radix(bus, 16).map_err(|_| bad())?;
        let device = u8::from_str_radix(dev, 16).map_err(|_| bad())?;
        let function = func.parse::<u8>().map_err(|_| bad())?;
        if device > 31 || function > 7 {
            return Err(bad());
        }
        Ok(Bdf {
            domain,
            bus,
            device,
            function,
        })
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Serialize for Bdf {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One PCI function as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciFunction {
    /// Its address.
    pub bdf: Bdf,
    /// PCI vendor ID (`vendor`).
    pub vendor: u16,
    /// PCI device ID (`device`).
    pub device: u16,
    /// PCI class code (`class`), e.g. 0x020000 for Ethernet.
    pub class: u32,
    /// Name of the bound driver (`driver` link), none when unbound.
    pub driver: Option<String>,
    /// NUMA node (`numa_node`), none when the kernel reports -1.
    pub numa_node: Option<u32>,
    /// IOMMU group (`iommu_group` link), none without an IOMMU.
    pub iommu_group: Option<u32>,
    /// Network interfaces of the function (`net/*`), sorted.
    pub net_interfaces: Vec<String>,
}

/// A virtual function of a PF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualFunction {
    /// Its VF number on the PF (the N of `virtfnN`).
    pub index: u32,
    /// The function itself.
    #[serde(flatten)]
    pub function: PciFunction,
}

/// An SR-IOV physical function and its VFs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhysicalFunction {
    /// The PF itself.
    #[serde(flatten)]
    pub function: PciFunction,
    /// `sriov_totalvfs`: the most VFs it can have.
    pub total_vfs: u32,
    /// `sriov_numvfs`: how many are enabled now.
    pub num_vfs: u32,
    /// `sriov_vf_device`: the device ID its VFs have.
    pub vf_device: u16,
    /// Its VFs, by VF number.
    pub vfs: Vec<VirtualFunction>,
}

/// All SR-IOV PFs of a host and their VFs: what `edgevisor node` lists and the agent
/// reports as capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inventory {
    /// The PFs, sorted by address.
    pub physical_functions: Vec<PhysicalFunction>,
}

impl Inventory {
    /// Reads every PCI function under `root/sys/bus/pci/devices` and keeps those with
    /// SR-IOV capability, with their VFs. `root` is `/` on a real host.
    pub fn from_sysfs(root: &Path) -> Result<Inventory> {
        let devices = devices_dir(root);
        let entries = fs::read_dir(&devices).map_err(|source| SriovError::Read {
            path: devices.clone(),
            source,
        })?;
        let mut bdfs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SriovError::Read {
                path: devices.clone(),
                source,
            })?;
            // Not every entry has to be a PCI address (a stray file in a recorded tree).
            if let Ok(bdf) = entry.file_name().to_string_lossy().parse::<Bdf>() {
                bdfs.push(bdf);
            }
        }
        bdfs.sort();
        let mut physical_functions = Vec::new();
        for bdf in bdfs {
            if device_dir(root, &bdf).join("sriov_totalvfs").exists() {
                physical_functions.push(read_physical_function(root, &bdf)?);
            }
        }
        Ok(Inventory { physical_functions })
    }

    /// The PF or VF with this address, if the inventory has it.
    pub fn function(&self, bdf: &Bdf) -> Option<&PciFunction> {
        self.physical_functions.iter().find_map(|pf| {
            if &pf.function.bdf == bdf {
                return Some(&pf.function);
            }
            pf.vfs
                .iter()
                .find(|vf| &vf.function.bdf == bdf)
                .map(|vf| &vf.function)
        })
    }
}

fn devices_dir(root: &Path) -> PathBuf {
    root.join("sys/bus/pci/devices")
}

fn device_dir(root: &Path, bdf: &Bdf) -> PathBuf {
    devices_dir(root).join(bdf.to_string())
}

/// `root/sys/bus/pci/devices/BDF`, checked to exist.
fn existing_device_dir(root: &Path, bdf: &Bdf) -> Result<PathBuf> {
    let dir = device_dir(root, bdf);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(SriovError::NoSuchDevice {
            bdf: bdf.clone(),
            dir: devices_dir(root),
        })
    }
}

fn read_trimmed(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| SriovError::Read {
            path: path.to_path_buf(),
            source,
        })
}

fn parse_hex<T: TryFrom<u64>>(path: &Path) -> Result<T> {
    let content = read_trimmed(path)?;
    let digits = content.strip_prefix("0x").unwrap_or(&content);
    u64::from_str_radix(digits, 16)
        .ok()
        .and_then(|v| T::try_from(v).ok())
        .ok_or(SriovError::Parse {
            path: path.to_path_buf(),
            content,
            expected: "a hexadecimal ID",
        })
}

fn parse_dec(path: &Path) -> Result<u32> {
    let content = read_trimmed(path)?;
    content.parse().map_err(|_| SriovError::Parse {
        path: path.to_path_buf(),
        content,
        expected: "a decimal count",
    })
}

/// The last component of the target of `link`, or none when the link does not exist.
fn link_name(link: &Path) -> Result<Option<String>> {
    match fs::read_link(link) {
        Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SriovError::Read {
            path: link.to_path_buf(),
            source,
        }),
    }
}

/// Reads one function's identity, driver, NUMA node, IOMMU group and interfaces.
pub fn read_function(root: &Path, bdf: &Bdf) -> Result<PciFunction> {
    let dir = existing_device_dir(root, bdf)?;
    let numa_path = dir.join("numa_node");
    let numa_node = if numa_path.exists() {
        let content = read_trimmed(&numa_path)?;
        let node: i64 = content.parse().map_err(|_| SriovError::Parse {
            path: numa_path.clone(),
            content,
            expected: "a NUMA node number or -1",
        })?;
        u32::try_from(node).ok()
    } else {
        None
    };
    let iommu_group = match link_name(&dir.join("iommu_group"))? {
        Some(name) => Some(name.parse::<u32>().map_err(|_| SriovError::Parse {
            path: dir.join("iommu_group"),
            content: name,
            expected: "a link to an IOMMU group number",
        })?),
        None => None,
    };
    let mut net_interfaces = Vec::new();
    if let Ok(entries) = fs::read_dir(dir.join("net")) {
        for entry in entries.flatten() {
            net_interfaces.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    net_interfaces.sort();
    Ok(PciFunction {
        bdf: bdf.clone(),
        vendor: parse_hex(&dir.join("vendor"))?,
        device: parse_hex(&dir.join("device"))?,
        class: parse_hex(&dir.join("class"))?,
        driver: link_name(&dir.join("driver"))?,
        numa_node,
        iommu_group,
        net_interfaces,
    })
}

/// Reads a PF, its SR-IOV counters and its VFs; [`SriovError::NotAPf`] when it has no SR-IOV.
pub fn read_physical_function(root: &Path, pf: &Bdf) -> Result<PhysicalFunction> {
    let function = read_function(root, pf)?;
    let dir = device_dir(root, pf);
    if !dir.join("sriov_totalvfs").exists() {
        return Err(SriovError::NotAPf { bdf: pf.clone() });
    }
    let total_vfs = parse_dec(&dir.join("sriov_totalvfs"))?;
    let num_vfs = parse_dec(&dir.join("sriov_numvfs"))?;
    let vf_device = parse_hex(&dir.join("sriov_vf_device"))?;
    let mut vfs = Vec::new();
    let entries = fs::read_dir(&dir).map_err(|source| SriovError::Read {
        path: dir.clone(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(index) = name
            .strip_prefix("virtfn")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let link = dir.join(&name);
        let target = link_name(&link)?.unwrap_or_default();
        let vf_bdf = target.parse::<Bdf>().map_err(|_| SriovError::Parse {
            path: link,
            content: target,
            expected: "a link to a PCI function",
        })?;
        vfs.push(VirtualFunction {
            index,
            function: read_function(root, &vf_bdf)?,
        });
    }
    vfs.sort_by_key(|vf| vf.index);
    Ok(PhysicalFunction {
        function,
        total_vfs,
        num_vfs,
        vf_device,
        vfs,
    })
}

/// One write to a sysfs file, as planned or as done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SysfsWrite {
    /// The file.
    pub path: PathBuf,
    /// What is written (without a trailing newline).
    pub value: String,
}

impl SysfsWrite {
    fn new(path: PathBuf, value: impl Into<String>) -> Self {
        SysfsWrite {
            path,
            value: value.into(),
        }
    }

    /// Does the write: opens the existing file (never creates one) and writes the value.
    pub fn apply(&self) -> Result<()> {
        let err = |source| SriovError::Write {
            path: self.path.clone(),
            value: self.value.clone(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.path)
            .map_err(err)?;
        file.write_all(self.value.as_bytes()).map_err(err)
    }
}

fn apply_all(writes: Vec<SysfsWrite>) -> Result<Vec<SysfsWrite>> {
    for write in &writes {
        write.apply()?;
    }
    Ok(writes)
}

/// The writes that make `pf` have `n` VFs: none when it has `n` already; `0` then `n` when
/// changing a non-zero count (the kernel refuses to change it directly).
pub fn plan_num_vfs(root: &Path, pf: &Bdf, n: u32) -> Result<Vec<SysfsWrite>> {
    let dir = existing_device_dir(root, pf)?;
    if !dir.join("sriov_totalvfs").exists() {
        return Err(SriovError::NotAPf { bdf: pf.clone() });
    }
    let total = parse_dec(&dir.join("sriov_totalvfs"))?;
    if n > total {
        return Err(SriovError::TooManyVfs {
            pf: pf.clone(),
            requested: n,
            total,
        });
    }
    let path = dir.join("sriov_numvfs");
    let current = parse_dec(&path)?;
    let mut writes = Vec::new();
    if current == n {
        return Ok(writes);
    }
    if current != 0 && n != 0 {
        writes.push(SysfsWrite::new(path.clone(), "0"));
    }
    writes.push(SysfsWrite::new(path, n.to_string()));
    Ok(writes)
}

/// Makes `pf` have `n` VFs (see [`plan_num_vfs`]); returns the writes done.
pub fn set_num_vfs(root: &Path, pf: &Bdf, n: u32) -> Result<Vec<SysfsWrite>> {
    apply_all(plan_num_vfs(root, pf, n)?)
}

/// The IOMMU group of `bdf`; [`SriovError::NoIommuGroup`] without one.
pub fn iommu_group(root: &Path, bdf: &Bdf) -> Result<u32> {
    read_function(root, bdf)?
        .iommu_group
        .ok_or_else(|| SriovError::NoIommuGroup { bdf: bdf.clone() })
}

/// The functions of IOMMU group `group` (`root/sys/kernel/iommu_groups/N/devices`), sorted.
pub fn group_members(root: &Path, group: u32) -> Result<Vec<Bdf>> {
    let dir = root.join(format!("sys/kernel/iommu_groups/{group}/devices"));
    let entries = fs::read_dir(&dir).map_err(|source| SriovError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut members: Vec<Bdf> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    members.sort();
    Ok(members)
}

/// Checks from sysfs that `bdf` can be opened through VFIO: it has an IOMMU group, it is
/// bound to vfio-pci, and every other function of its group is on vfio-pci, on no driver,
/// or on a driver that does no DMA of its own (pci-stub, pcieport). Returns the group.
pub fn check_vfio_ready(root: &Path, bdf: &Bdf) -> Result<u32> {
    let function = read_function(root, bdf)?;
    let group = function
        .iommu_group
        .ok_or_else(|| SriovError::NoIommuGroup { bdf: bdf.clone() })?;
    match function.driver.as_deref() {
        Some(VFIO_PCI_DRIVER) => {}
        Some(other) => {
            return Err(SriovError::BoundElsewhere {
                bdf: bdf.clone(),
                driver: other.to_string(),
            })
        }
        None => return Err(SriovError::Unbound { bdf: bdf.clone() }),
    }
    for other in group_members(root, group)? {
        if &other == bdf {
            continue;
        }
        let driver = link_name(&device_dir(root, &other).join("driver"))?;
        if let Some(driver) = driver {
            if driver != VFIO_PCI_DRIVER && !VIABLE_FOREIGN_DRIVERS.contains(&driver.as_str()) {
                return Err(SriovError::GroupNotViable {
                    group,
                    bdf: bdf.clone(),
                    other,
                    driver,
                });
            }
        }
    }
    Ok(group)
}

/// The writes that move `bdf` to vfio-pci: set `driver_override`, unbind it from its current
/// driver, ask the kernel to probe it again. None when it is on vfio-pci already.
/// Fails with [`SriovError::NoIommuGroup`] first, since vfio-pci cannot take such a device.
pub fn plan_bind_vfio(root: &Path, bdf: &Bdf) -> Result<Vec<SysfsWrite>> {
    let function = read_function(root, bdf)?;
    if function.iommu_group.is_none() {
        return Err(SriovError::NoIommuGroup { bdf: bdf.clone() });
    }
    if function.driver.as_deref() == Some(VFIO_PCI_DRIVER) {
        return Ok(Vec::new());
    }
    let dir = device_dir(root, bdf);
    let mut writes = vec![SysfsWrite::new(
        dir.join("driver_override"),
        VFIO_PCI_DRIVER,
    )];
    if let Some(driver) = &function.driver {
        writes.push(SysfsWrite::new(
            root.join("sys/bus/pci/drivers").join(driver).join("unbind"),
            bdf.to_string(),
        ));
    }
    writes.push(SysfsWrite::new(
        root.join("sys/bus/pci/drivers_probe"),
        bdf.to_string(),
    ));
    Ok(writes)
}

/// Moves `bdf` to vfio-pci (see [`plan_bind_vfio`]); returns the writes done. Check the
/// result with [`check_vfio_ready`]: whether the kernel bound it is the kernel's answer.
pub fn bind_vfio(root: &Path, bdf: &Bdf) -> Result<Vec<SysfsWrite>> {
    apply_all(plan_bind_vfio(root, bdf)?)
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl FromStr for MacAddress {
    type Err = SriovError;

    /// Parses `aa:bb:cc:dd:ee:ff` (or with `-`); rejects multicast and all-zero addresses,
    /// which a VF cannot be given.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || SriovError::InvalidMac {
            input: s.to_string(),
        };
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut bytes = [0u8; 6];
        for (byte, part) in bytes.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if bytes[0] & 1 != 0 || bytes == [0; 6] {
            return Err(bad());
        }
        Ok(MacAddress(bytes))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// `ip link set dev PF vf N mac MAC vlan V`, built and checked, run only by [`Self::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfLinkCommand {
    argv: Vec<String>,
}

impl VfLinkCommand {
    /// The command line, program first.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// Runs it; fails with `ip`'s own message when it fails.
    pub fn run(&self) -> Result<()> {
        let command = self.argv.join(" ");
        let (program, args) = self.argv.split_first().ok_or_else(|| SriovError::Spawn {
            command: command.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
        })?;
        let output = Command::new(program)
            .args(args)
            .output()
            .map_err(|source| SriovError::Spawn {
                command: command.clone(),
                source,
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(SriovError::CommandFailed {
                command,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }
}

/// Checks a network interface name as the kernel does (`dev_valid_name`).
fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(SriovError::InvalidIfname {
            name: name.to_string(),
        })
    }
}

/// Builds the command that gives VF `vf` of the PF interface `pf_ifname` the MAC `mac` and
/// the port VLAN `vlan` (1..=4094); `None` writes `vlan 0`, which clears a port VLAN, so the
/// command always sets the whole state. Nothing runs until [`VfLinkCommand::run`].
pub fn set_vf_mac_vlan(
    pf_ifname: &str,
    vf: u32,
    mac: MacAddress,
    vlan: Option<u16>,
) -> Result<VfLinkCommand> {
    check_ifname(pf_ifname)?;
    let vlan = match vlan {
        Some(v) if (1..=4094).contains(&v) => v,
        Some(v) => return Err(SriovError::InvalidVlan { vlan: v }),
        None => 0,
    };
    let argv = [
        "ip",
        "link",
        "set",
        "dev",
        pf_ifname,
        "vf",
        &vf.to_string(),
        "mac",
        &mac.to_string(),
        "vlan",
        &vlan.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Ok(VfLinkCommand { argv })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_parses_and_prints_canonically() {
        let bdf: Bdf = "0000:3B:02.1".parse().unwrap();
        assert_eq!(bdf.parts(), (0, 0x3b, 2, 1));
        assert_eq!(bdf.to_string(), "0000:3b:02.1");
        let short: Bdf = "af:00.0".parse().unwrap();
        assert_eq!(short.to_string(), "0000:af:00.0");
        for bad in [
            "",
            "0000:3b:02",
            "0000:3b:20.0",
            "0000:3b:02.8",
            "zz:00.0",
            "0:3b:02.0",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn mac_rejects_multicast_zero_and_garbage() {
        let mac: MacAddress = "02:AA:00:00:00:01".parse().unwrap();
        assert_eq!(mac.to_string(), "02:aa:00:00:00:01");
        for bad in [
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "02:00:00:00:00",
            "02:00:00:00:00:0g",
        ] {
            assert!(bad.parse::<MacAddress>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn ifname_rules_match_the_kernel() {
        assert!(check_ifname("ens1f0").is_ok());
        assert!(check_ifname("abcdefghijklmno").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "abcdefghijklmnop"] {
            assert!(check_ifname(bad).is_err(), "{bad} accepted");
        }
    }
}
