//! A thin layer over the kernel's VFIO interface (linux/vfio.h, type 1 IOMMU): a container
//! (`/dev/vfio/vfio`) holding the guest's DMA mappings, the IOMMU group of a function
//! (`/dev/vfio/N`) attached to it, and the function's device fd with its regions (BARs,
//! configuration space) and interrupts (MSI, MSI-X through eventfds).
//!
//! Written from the kernel header and `Documentation/driver-api/vfio.rst`; each ioctl is a
//! small wrapper here. Nothing here knows KVM: the VMM routes the eventfds.
//!
//! Drop order undoes setup: the device fd closes, the group leaves the container, and the
//! container's DMA mappings are unmapped before its fd closes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vmm_sys_util::ioctl::{
    ioctl, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref, ioctl_with_val,
};

/// The container node.
pub const VFIO_CONTAINER_PATH: &str = "/dev/vfio/vfio";

/// Region index of BAR 0 (BARs 0..5 are 0..5).
pub const PCI_BAR0_REGION: u32 = 0;
/// Region index of the expansion ROM.
pub const PCI_ROM_REGION: u32 = 6;
/// Region index of the configuration space.
pub const PCI_CONFIG_REGION: u32 = 7;
/// Interrupt index of INTx.
pub const PCI_INTX_IRQ: u32 = 0;
/// Interrupt index of MSI.
pub const PCI_MSI_IRQ: u32 = 1;
/// Interrupt index of MSI-X.
pub const PCI_MSIX_IRQ: u32 = 2;

/// Region flag: readable.
pub const REGION_READ: u32 = 1 << 0;
/// Region flag: writable.
pub const REGION_WRITE: u32 = 1 << 1;
/// Region flag: can be mmap'ed.
pub const REGION_MMAP: u32 = 1 << 2;

mod sys {
    //! Numbers and structures of linux/vfio.h (stable UAPI).
    const VFIO_TYPE: std::os::raw::c_uint = b';' as _;
    vmm_sys_util::ioctl_io_nr!(VFIO_GET_API_VERSION, VFIO_TYPE, 100);
    vmm_sys_util::ioctl_io_nr!(VFIO_CHECK_EXTENSION, VFIO_TYPE, 101);
    vmm_sys_util::ioctl_io_nr!(VFIO_SET_IOMMU, VFIO_TYPE, 102);
    vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_GET_STATUS, VFIO_TYPE, 103);
    vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_SET_CONTAINER, VFIO_TYPE, 104);
    vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_UNSET_CONTAINER, VFIO_TYPE, 105);
    vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_GET_DEVICE_FD, VFIO_TYPE, 106);
    vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE, 107);
    vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE, 108);
    vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, VFIO_TYPE, 109);
    vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE, 110);
    vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE, 111);
    vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE, 113);
    vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO_TYPE, 114);

    pub use self::{
        VFIO_CHECK_EXTENSION as CHECK_EXTENSION, VFIO_DEVICE_GET_INFO as DEVICE_GET_INFO,
        VFIO_DEVICE_GET_IRQ_INFO as DEVICE_GET_IRQ_INFO,
        VFIO_DEVICE_GET_REGION_INFO as DEVICE_GET_REGION_INFO, VFIO_DEVICE_RESET as DEVICE_RESET,
        VFIO_DEVICE_SET_IRQS as DEVICE_SET_IRQS, VFIO_GET_API_VERSION as GET_API_VERSION,
        VFIO_GROUP_GET_DEVICE_FD as GROUP_GET_DEVICE_FD, VFIO_GROUP_GET_STATUS as GROUP_GET_STATUS,
        VFIO_GROUP_SET_CONTAINER as GROUP_SET_CONTAINER,
        VFIO_GROUP_UNSET_CONTAINER as GROUP_UNSET_CONTAINER, VFIO_IOMMU_MAP_DMA as IOMMU_MAP_DMA,
        VFIO_IOMMU_UNMAP_DMA as IOMMU_UNMAP_DMA, VFIO_SET_IOMMU as SET_IOMMU,
    };

    pub const API_VERSION: i32 = 0;
    pub const TYPE1_IOMMU: u64 = 1;
    pub const TYPE1V2_IOMMU: u64 = 3;
    pub const GROUP_FLAGS_VIABLE: u32 = 1 << 0;
    pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;
    pub const DMA_MAP_FLAG_READ: u32 = 1 << 0;
    pub const DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
    pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
    pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
    pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

    #[repr(C)]
    #[derive(Default)]
    pub struct GroupStatus {
        pub argsz: u32,
        pub flags: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct DeviceInfo {
        pub argsz: u32,
        pub flags: u32,
        pub num_regions: u32,
        pub num_irqs: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct RegionInfo {
        pub argsz: u32,
        pub flags: u32,
        pub index: u32,
        pub cap_offset: u32,
        pub size: u64,
        pub offset: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct IrqInfo {
        pub argsz: u32,
        pub flags: u32,
        pub index: u32,
        pub count: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct DmaMap {
        pub argsz: u32,
        pub flags: u32,
        pub vaddr: u64,
        pub iova: u64,
        pub size: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct DmaUnmap {
        pub argsz: u32,
        pub flags: u32,
        pub iova: u64,
        pub size: u64,
    }

    /// `struct vfio_irq_set` header; the eventfds (s32 each) follow it.
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    pub struct IrqSetHeader {
        pub argsz: u32,
        pub flags: u32,
        pub index: u32,
        pub start: u32,
        pub count: u32,
    }
}

/// Why a VFIO step failed. Each names the step and what to do.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// `/dev/vfio/vfio` does not exist.
    #[error("no /dev/vfio/vfio: the host has no VFIO (load vfio-pci and enable the IOMMU)")]
    NoVfio,
    /// A VFIO node could not be opened.
    #[error("cannot open {path}: {source}; run as root or give this user access to it")]
    Open {
        /// The node.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel speaks another VFIO API.
    #[error("/dev/vfio/vfio reports API version {0}, but edgevisor speaks version 0: use a Linux kernel with the standard VFIO API")]
    ApiVersion(i32),
    /// No type 1 IOMMU backend.
    #[error("the host's VFIO has no type 1 IOMMU backend: load vfio_iommu_type1")]
    NoType1,
    /// The group is not viable.
    #[error("IOMMU group {group} is not viable: bind every device in /sys/kernel/iommu_groups/{group}/devices to vfio-pci (or unbind it)")]
    NotViable {
        /// The group.
        group: u32,
    },
    /// SET_IOMMU failed with EPERM: the type 1 IOMMU's answer when there is no interrupt
    /// remapping.
    #[error("VFIO refused to set the type 1 IOMMU (EPERM), which it does when the host's IOMMU has no interrupt remapping (dmesg says so): enable interrupt remapping, or, accepting that the device can forge interrupts, load vfio_iommu_type1 with allow_unsafe_interrupts=1")]
    NoInterruptRemapping,
    /// A VFIO ioctl failed.
    #[error("VFIO refused to {what}: {source}")]
    Ioctl {
        /// What we asked.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The device is not a PCI device.
    #[error("{bdf} is not a vfio-pci device (VFIO reports flags {flags:#x})")]
    NotPci {
        /// The function.
        bdf: String,
        /// Device flags.
        flags: u32,
    },
}

type Result<T> = std::result::Result<T, VfioError>;

fn ioctl_error(what: impl Into<String>) -> VfioError {
    VfioError::Ioctl {
        what: what.into(),
        source: io::Error::last_os_error(),
    }
}

fn open_rw(path: PathBuf) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound && path.as_os_str() == VFIO_CONTAINER_PATH {
                VfioError::NoVfio
            } else {
                VfioError::Open { path, source }
            }
        })
}

/// A VFIO container: one IOMMU address space, shared by the groups attached to it. Holds
/// the DMA mappings (guest RAM at its guest-physical addresses) until dropped.
pub struct Container {
    file: File,
    state: Mutex<ContainerState>,
}

#[derive(Default)]
struct ContainerState {
    /// The IOMMU type set once the first group is attached.
    iommu: Option<u64>,
    /// (iova, size) of every mapping, unmapped on drop.
    mappings: Vec<(u64, u64)>,
}

impl Container {
    /// Opens `/dev/vfio/vfio` and checks the API version and the type 1 IOMMU backend.
    pub fn open() -> Result<Arc<Container>> {
        let file = open_rw(PathBuf::from(VFIO_CONTAINER_PATH))?;
        // SAFETY: VFIO_GET_API_VERSION takes no argument; the fd is a VFIO container.
        let version = unsafe { ioctl(&file, sys::GET_API_VERSION()) };
        if version != sys::API_VERSION {
            return Err(VfioError::ApiVersion(version));
        }
        let container = Container {
            file,
            state: Mutex::new(ContainerState::default()),
        };
        container.iommu_type()?;
        Ok(Arc::new(container))
    }

    /// TYPE1v2 when the kernel has it, else TYPE1.
    fn iommu_type(&self) -> Result<u64> {
        for kind in [sys::TYPE1V2_IOMMU, sys::TYPE1_IOMMU] {
            // SAFETY: VFIO_CHECK_EXTENSION takes the extension number by value.
            if unsafe { ioctl_with_val(&self.file, sys::CHECK_EXTENSION(), kind) } > 0 {
                return Ok(kind);
            }
        }
        Err(VfioError::NoType1)
    }

    /// Opens IOMMU group `group`, checks it is viable and attaches it to this container
    /// (setting the IOMMU type with the first group).
    pub fn attach(self: &Arc<Self>, group: u32) -> Result<Arc<Group>> {
        let file = open_rw(PathBuf::from(format!("/dev/vfio/{group}")))?;
        let mut status = sys::GroupStatus {
            argsz: std::mem::size_of::<sys::GroupStatus>() as u32,
            flags: 0,
        };
        // SAFETY: the kernel writes a vfio_group_status of `argsz` bytes into `status`.
        if unsafe { ioctl_with_mut_ref(&file, sys::GROUP_GET_STATUS(), &mut status) } < 0 {
            return Err(ioctl_error(format!(
                "report the status of IOMMU group {group}"
            )));
        }
        if status.flags & sys::GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::NotViable { group });
        }
        let fd: RawFd = self.file.as_raw_fd();
        // SAFETY: VFIO_GROUP_SET_CONTAINER reads one int (the container fd) from the pointer.
        if unsafe { ioctl_with_ref(&file, sys::GROUP_SET_CONTAINER(), &fd) } < 0 {
            return Err(ioctl_error(format!(
                "attach IOMMU group {group} to the container"
            )));
        }
        let group = Arc::new(Group {
            file,
            id: group,
            container: self.clone(),
        });
        let mut state = self.lock();
        if state.iommu.is_none() {
            let kind = self.iommu_type()?;
            // SAFETY: VFIO_SET_IOMMU takes the IOMMU type by value.
            if unsafe { ioctl_with_val(&self.file, sys::SET_IOMMU(), kind) } < 0 {
                let source = io::Error::last_os_error();
                if source.raw_os_error() == Some(libc::EPERM) {
                    return Err(VfioError::NoInterruptRemapping);
                }
                return Err(VfioError::Ioctl {
                    what: "set the type 1 IOMMU on the container".into(),
                    source,
                });
            }
            state.iommu = Some(kind);
        }
        Ok(group)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ContainerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets devices in this container DMA to `[iova, iova + size)`, which the host sees at
    /// `host_addr` (pinned by the kernel until unmapped). Needs an attached group.
    ///
    /// # Safety
    /// `host_addr..host_addr + size` must stay a valid mapping of this process for as long
    /// as the container (and so the mapping) lives: the device writes there by DMA.
    pub unsafe fn map_dma(&self, iova: u64, size: u64, host_addr: u64) -> Result<()> {
        let map = sys::DmaMap {
            argsz: std::mem::size_of::<sys::DmaMap>() as u32,
            flags: sys::DMA_MAP_FLAG_READ | sys::DMA_MAP_FLAG_WRITE,
            vaddr: host_addr,
            iova,
            size,
        };
        // SAFETY: the kernel reads a vfio_iommu_type1_dma_map; the caller guarantees the
        // host range outlives the mapping.
        if unsafe { ioctl_with_ref(&self.file, sys::IOMMU_MAP_DMA(), &map) } < 0 {
            return Err(ioctl_error(format!(
                "map guest memory {iova:#x}+{size:#x} for DMA (is RLIMIT_MEMLOCK large enough?)"
            )));
        }
        self.lock().mappings.push((iova, size));
        Ok(())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let mappings = std::mem::take(&mut self.lock().mappings);
        for (iova, size) in mappings {
            let unmap = sys::DmaUnmap {
                argsz: std::mem::size_of::<sys::DmaUnmap>() as u32,
                flags: 0,
                iova,
                size,
            };
            // SAFETY: the kernel reads a vfio_iommu_type1_dma_unmap; failure leaves the
            // mapping to be torn down when the fd closes.
            unsafe { ioctl_with_ref(&self.file, sys::IOMMU_UNMAP_DMA(), &unmap) };
        }
    }
}

/// An IOMMU group attached to a container.
pub struct Group {
    file: File,
    id: u32,
    container: Arc<Container>,
}

impl Group {
    /// The group number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The container the group is in.
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }

    /// The raw group fd (for KVM's VFIO pseudo device).
    pub fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Opens the device `bdf` (`DDDD:BB:DD.F`) of this group.
    pub fn device(self: &Arc<Self>, bdf: &str) -> Result<Device> {
        let name = std::ffi::CString::new(bdf).map_err(|_| VfioError::Ioctl {
            what: format!("open device {bdf:?}"),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: VFIO_GROUP_GET_DEVICE_FD reads a NUL-terminated name and returns a new fd.
        let fd = unsafe { ioctl_with_ptr(&self.file, sys::GROUP_GET_DEVICE_FD(), name.as_ptr()) };
        if fd < 0 {
            return Err(ioctl_error(format!(
                "open device {bdf} of IOMMU group {}",
                self.id
            )));
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut info = sys::DeviceInfo {
            argsz: std::mem::size_of::<sys::DeviceInfo>() as u32,
            ..Default::default()
        };
        // SAFETY: the kernel writes a vfio_device_info of at most `argsz` bytes.
        if unsafe { ioctl_with_mut_ref(&file, sys::DEVICE_GET_INFO(), &mut info) } < 0 {
            return Err(ioctl_error(format!("describe device {bdf}")));
        }
        if info.flags & sys::DEVICE_FLAGS_PCI == 0 {
            return Err(VfioError::NotPci {
                bdf: bdf.to_string(),
                flags: info.flags,
            });
        }
        Ok(Device {
            file,
            bdf: bdf.to_string(),
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
            _group: self.clone(),
        })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: VFIO_GROUP_UNSET_CONTAINER takes no argument; every device fd of the group
        // is closed by now (devices hold the group).
        unsafe { ioctl(&self.file, sys::GROUP_UNSET_CONTAINER()) };
    }
}

/// A region of a device (a BAR, the ROM, configuration space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region index.
    pub index: u32,
    /// REGION_READ, REGION_WRITE, REGION_MMAP, ...
    pub flags: u32,
    /// Bytes (0: the region does not exist, e.g. an unused BAR).
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
}

/// One interrupt index of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// Interrupt index (PCI_MSI_IRQ, ...).
    pub index: u32,
    /// Flags (eventfd, maskable, ...).
    pub flags: u32,
    /// Vectors.
    pub count: u32,
}

/// An opened vfio-pci device. Accesses go through pread/pwrite at region offsets.
pub struct Device {
    file: File,
    bdf: String,
    num_regions: u32,
    num_irqs: u32,
    // Declared last: the device fd closes before the group leaves its container.
    _group: Arc<Group>,
}

impl Device {
    /// The PCI address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// Region and interrupt index counts.
    pub fn counts(&self) -> (u32, u32) {
        (self.num_regions, self.num_irqs)
    }

    /// Describes region `index`.
    pub fn region_info(&self, index: u32) -> Result<RegionInfo> {
        let mut info = sys::RegionInfo {
            argsz: std::mem::size_of::<sys::RegionInfo>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: the kernel writes a vfio_region_info of at most `argsz` bytes.
        if unsafe { ioctl_with_mut_ref(&self.file, sys::DEVICE_GET_REGION_INFO(), &mut info) } < 0 {
            return Err(ioctl_error(format!(
                "describe region {index} of {}",
                self.bdf
            )));
        }
        Ok(RegionInfo {
            index,
            flags: info.flags,
            size: info.size,
            offset: info.offset,
        })
    }

    /// Describes interrupt index `index`.
    pub fn irq_info(&self, index: u32) -> Result<IrqInfo> {
        let mut info = sys::IrqInfo {
            argsz: std::mem::size_of::<sys::IrqInfo>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: the kernel writes a vfio_irq_info of `argsz` bytes.
        if unsafe { ioctl_with_mut_ref(&self.file, sys::DEVICE_GET_IRQ_INFO(), &mut info) } < 0 {
            return Err(ioctl_error(format!(
                "describe interrupt {index} of {}",
                self.bdf
            )));
        }
        Ok(IrqInfo {
            index,
            flags: info.flags,
            count: info.count,
        })
    }

    /// Reads `data.len()` bytes at `offset` of `region`.
    pub fn read(&self, region: &RegionInfo, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(data, region.offset + offset)
    }

    /// Writes `data` at `offset` of `region`.
    pub fn write(&self, region: &RegionInfo, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, region.offset + offset)
    }

    /// Has the device signal vectors `0..eventfds.len()` of interrupt `index` on the
    /// eventfds (VFIO enables MSI or MSI-X on the device with that many vectors).
    pub fn enable_irqs(&self, index: u32, eventfds: &[RawFd]) -> Result<()> {
        let header = std::mem::size_of::<sys::IrqSetHeader>();
        let argsz = header + std::mem::size_of_val(eventfds);
        // u32 storage keeps the header and the fds aligned.
        let mut buf = vec![0u32; argsz.div_ceil(4)];
        let head = sys::IrqSetHeader {
            argsz: argsz as u32,
            flags: sys::IRQ_SET_DATA_EVENTFD | sys::IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: eventfds.len() as u32,
        };
        buf[0..5].copy_from_slice(&[head.argsz, head.flags, head.index, head.start, head.count]);
        for (i, fd) in eventfds.iter().enumerate() {
            buf[5 + i] = *fd as u32;
        }
        // SAFETY: `buf` holds a vfio_irq_set of `argsz` bytes (header, then `count` s32s).
        if unsafe { ioctl_with_ptr(&self.file, sys::DEVICE_SET_IRQS(), buf.as_ptr()) } < 0 {
            return Err(ioctl_error(format!(
                "route {} vector(s) of interrupt {index} of {} to eventfds",
                eventfds.len(),
                self.bdf
            )));
        }
        Ok(())
    }

    /// Turns interrupt `index` off on the device.
    pub fn disable_irqs(&self, index: u32) -> Result<()> {
        let head = sys::IrqSetHeader {
            argsz: std::mem::size_of::<sys::IrqSetHeader>() as u32,
            flags: sys::IRQ_SET_DATA_NONE | sys::IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: 0,
        };
        // SAFETY: the kernel reads a vfio_irq_set with no data.
        if unsafe { ioctl_with_ref(&self.file, sys::DEVICE_SET_IRQS(), &head) } < 0 {
            return Err(ioctl_error(format!(
                "turn off interrupt {index} of {}",
                self.bdf
            )));
        }
        Ok(())
    }

    /// Resets the function (function-level reset or what vfio-pci offers); errors ignored
    /// by callers that reset on a best-effort basis.
    pub fn reset(&self) -> Result<()> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument.
        if unsafe { ioctl(&self.file, sys::DEVICE_RESET()) } < 0 {
            return Err(ioctl_error(format!("reset {}", self.bdf)));
        }
        Ok(())
    }

    /// The IOMMU group the device belongs to.
    pub fn group(&self) -> &Arc<Group> {
        &self._group
    }

    /// The device fd (for the seccomp filter's argument checks).
    pub fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // _IO(';', 100 + n) = (0x3b << 8) | (100 + n)
        assert_eq!(sys::GET_API_VERSION(), 0x3b64);
        assert_eq!(sys::GROUP_GET_DEVICE_FD(), 0x3b6a);
        assert_eq!(sys::DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(sys::IOMMU_MAP_DMA(), 0x3b71);
        assert_eq!(sys::IOMMU_UNMAP_DMA(), 0x3b72);
        assert_eq!(std::mem::size_of::<sys::RegionInfo>(), 32);
        assert_eq!(std::mem::size_of::<sys::DmaMap>(), 32);
        assert_eq!(std::mem::size_of::<sys::DmaUnmap>(), 24);
        assert_eq!(std::mem::size_of::<sys::IrqSetHeader>(), 20);
    }

    #[test]
    fn a_host_without_vfio_says_so_in_one_sentence() {
        if std::path::Path::new(VFIO_CONTAINER_PATH).exists() {
            return; // a host with VFIO: nothing to check here
        }
        let err = Container::open().err().expect("no VFIO on this host");
        assert_eq!(
            err.to_string(),
            "no /dev/vfio/vfio: the host has no VFIO (load vfio-pci and enable the IOMMU)"
        );
    }
}
