//! `--device vfio=BDF`: PCI functions passed through with VFIO, on a PCI bus the guest
//! reaches through ports 0xCF8/0xCFC, with BARs in a 32-bit window below the virtio-mmio
//! area (docs/GUEST_INTERFACE.md, "PCI").
//!
//! * Before any KVM object exists, [`open`] checks each function in sysfs (it exists, VFIO
//!   is there, IOMMU group, vfio-pci, a viable group), opens the VFIO container, groups and
//!   devices, and maps all of guest RAM for DMA. An error leaves nothing behind: dropping
//!   what was opened unmaps and closes it.
//! * [`build_bus`] puts a host bridge at 00:00.0 and each function after it, allocates their
//!   BARs in the window, and gives each interrupt vector an eventfd registered as a KVM
//!   irqfd on its own GSI.
//! * At run time the vCPU that traps an access does the work: configuration space and BAR
//!   accesses become pread/pwrite on the device fd (trap and forward; no BAR is mmap'ed into
//!   a memory slot), and a guest write that changes an MSI or MSI-X vector rewrites the GSI
//!   routing table (KVM_SET_GSI_ROUTING) and, when MSI or MSI-X is turned on or off, tells
//!   VFIO which eventfds to signal (VFIO_DEVICE_SET_IRQS).
//! * A vector the guest masks is held, not dropped: its irqfd is taken off KVM (KVM_IRQFD
//!   deassign) before its route goes, so what the device signals meanwhile waits in the
//!   eventfd; the MSI-X Pending Bit Array reads those vectors as pending, and unmasking puts
//!   the route back, re-registers the irqfd and delivers what waited.
//! * Not done: INTx (the interrupt pin reads 0, so drivers use MSI or MSI-X), I/O BARs (not
//!   offered), the expansion ROM (reads 0), mmap'ed BARs.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::log::RateLimited;
use devices::pci::{
    caps, merge_dword, BarAllocator, BarKind, BarSet, HostBridge, MsiCap, MsiState, MsixCap,
    MsixState, PciBus, PciFunction, BAR0, COMMAND, COMMAND_MEMORY, CONFIG_SPACE_SIZE,
    INTERRUPT_LINE, ROM_BAR,
};
use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_VFIO, kvm_irq_routing_entry,
    KvmIrqRouting, KVM_DEV_VFIO_GROUP, KVM_DEV_VFIO_GROUP_ADD, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{DeviceFd, Kvm, VmFd};
use net_dpdk::sriov::{self, Bdf, SriovError};
use net_dpdk::vfio::{self, Container, Device, Group, RegionInfo, VfioError};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{PCI_MMIO_END, PCI_MMIO_START};

/// Most MSI-X vectors offered per function (the table size the guest reads is cut to it).
pub const MAX_MSIX_VECTORS: u16 = 64;
/// First GSI given to MSI vectors (0..23 are the IOAPIC pins).
const FIRST_MSI_GSI: u32 = 24;
/// IOAPIC pins of the in-kernel irqchip, which the routing table must keep.
const IOAPIC_PINS: u32 = 24;

static LOG: RateLimited = RateLimited::new();

fn log(line: std::fmt::Arguments) {
    if let Some(text) = LOG.admit(Instant::now(), line) {
        eprintln!("{text}");
    }
}

/// Why passthrough could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    /// The sysfs checks failed (no such device, no IOMMU group, wrong driver, ...).
    #[error("--device vfio={bdf}: {source}")]
    Sysfs {
        /// The function.
        bdf: String,
        /// What sysfs showed.
        #[source]
        source: SriovError,
    },
    /// A VFIO step failed.
    #[error("--device vfio={bdf}: {source}")]
    Vfio {
        /// The function.
        bdf: String,
        /// The failing step.
        #[source]
        source: VfioError,
    },
    /// The device's configuration space could not be read.
    #[error("--device vfio={bdf}: cannot read its configuration space: {source}")]
    Config {
        /// The function.
        bdf: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A BAR does not fit or cannot be described.
    #[error("--device vfio={bdf}: {source}")]
    Bar {
        /// The function.
        bdf: String,
        /// Why.
        #[source]
        source: devices::pci::BarError,
    },
    /// The same function given twice.
    #[error("--device vfio={0} is given twice: pass each function once")]
    Duplicate(String),
    /// More functions than slots on bus 0.
    #[error("more than 31 --device vfio= functions: bus 0 has 31 free slots")]
    BusFull,
    /// KVM refused an eventfd or route.
    #[error("--device vfio={bdf}: KVM refused to {what}: {source}")]
    Kvm {
        /// The function.
        bdf: String,
        /// What we asked.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An eventfd could not be made.
    #[error("--device vfio={bdf}: cannot create an interrupt eventfd: {source}")]
    EventFd {
        /// The function.
        bdf: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A function opened through VFIO, not yet on a bus.
pub struct OpenedFunction {
    device: Device,
    config: Vec<u8>,
    config_region: RegionInfo,
    bar_regions: [Option<RegionInfo>; 6],
    bars: BarSet,
    mem: GuestMemoryMmap,
}

/// Checks and opens every `--device vfio=` function, in order, and maps guest RAM for DMA.
/// `sysfs_root` is `/` on a real host.
pub fn open(
    bdfs: &[String],
    mem: &GuestMemoryMmap,
    sysfs_root: &Path,
) -> Result<Vec<OpenedFunction>, PassthroughError> {
    if bdfs.is_empty() {
        return Ok(Vec::new());
    }
    let mut parsed: Vec<Bdf> = Vec::new();
    for text in bdfs {
        let bdf: Bdf = text.parse().map_err(|source| PassthroughError::Sysfs {
            bdf: text.clone(),
            source,
        })?;
        if parsed.contains(&bdf) {
            return Err(PassthroughError::Duplicate(bdf.to_string()));
        }
        parsed.push(bdf);
    }
    if parsed.len() > 31 {
        return Err(PassthroughError::BusFull);
    }
    let mut groups = Vec::new();
    for bdf in &parsed {
        let sysfs_err = |source| PassthroughError::Sysfs {
            bdf: bdf.to_string(),
            source,
        };
        // The function must exist before anything else is worth saying about it.
        sriov::read_function(sysfs_root, bdf).map_err(sysfs_err)?;
        if !Path::new(vfio::VFIO_CONTAINER_PATH).exists() {
            return Err(PassthroughError::Vfio {
                bdf: bdf.to_string(),
                source: VfioError::NoVfio,
            });
        }
        groups.push(sriov::check_vfio_ready(sysfs_root, bdf).map_err(sysfs_err)?);
    }
    let first = parsed[0].to_string();
    let container = Container::open().map_err(|source| PassthroughError::Vfio {
        bdf: first.clone(),
        source,
    })?;
    let mut attached: BTreeMap<u32, Arc<Group>> = BTreeMap::new();
    let mut devices = Vec::new();
    for (bdf, group) in parsed.iter().zip(groups) {
        let name = bdf.to_string();
        let vfio_err = |source| PassthroughError::Vfio {
            bdf: name.clone(),
            source,
        };
        let group = match attached.get(&group) {
            Some(g) => g.clone(),
            None => {
                let g = container.attach(group).map_err(vfio_err)?;
                attached.insert(group, g.clone());
                g
            }
        };
        devices.push(group.device(&name).map_err(vfio_err)?);
    }
    for region in mem.iter() {
        // SAFETY: the region is a live mapping of guest RAM, and every OpenedFunction keeps
        // a clone of `mem` declared after its device, so the mapping outlives the container
        // (dropped with the last device) and with it the DMA mapping.
        unsafe { container.map_dma(region.start_addr().0, region.len(), region.as_ptr() as u64) }
            .map_err(|source| PassthroughError::Vfio {
            bdf: first.clone(),
            source,
        })?;
    }
    devices
        .into_iter()
        .map(|d| OpenedFunction::describe(d, mem.clone()))
        .collect()
}

impl OpenedFunction {
    /// Reads the configuration space and the BAR regions of `device`.
    fn describe(device: Device, mem: GuestMemoryMmap) -> Result<OpenedFunction, PassthroughError> {
        let bdf = device.bdf().to_string();
        let vfio_err = |source| PassthroughError::Vfio {
            bdf: bdf.clone(),
            source,
        };
        let config_region = device
            .region_info(vfio::PCI_CONFIG_REGION)
            .map_err(vfio_err)?;
        let mut config = vec![0u8; CONFIG_SPACE_SIZE];
        device
            .read(&config_region, 0, &mut config)
            .map_err(|source| PassthroughError::Config {
                bdf: bdf.clone(),
                source,
            })?;
        let mut bars = BarSet::new();
        let mut bar_regions = [None; 6];
        let mut index = 0;
        while index < 6 {
            let reg = u32::from_le_bytes(
                config[BAR0 + index * 4..BAR0 + index * 4 + 4]
                    .try_into()
                    .unwrap_or([0; 4]),
            );
            let region = device.region_info(index as u32).map_err(vfio_err)?;
            let is_64 = reg & 1 == 0 && (reg >> 1) & 3 == 2;
            // I/O BARs are not offered; empty BARs have no region.
            if region.size > 0 && reg & 1 == 0 {
                let kind = if is_64 {
                    BarKind::Mem64
                } else {
                    BarKind::Mem32
                };
                let size = region.size.next_power_of_two().max(16);
                bars.declare(index, kind, size, reg & 8 != 0)
                    .map_err(|source| PassthroughError::Bar {
                        bdf: bdf.clone(),
                        source,
                    })?;
                bar_regions[index] = Some(region);
            }
            index += if is_64 { 2 } else { 1 };
        }
        Ok(OpenedFunction {
            device,
            config,
            config_region,
            bar_regions,
            bars,
            mem,
        })
    }
}

/// The guest's PCI bus, ready for the port and MMIO buses.
pub struct PciPlatform {
    /// Bus 0.
    pub bus: Arc<PciBus>,
}

/// Builds bus 0: the host bridge, then each function with its BARs placed in the window
/// and its vectors wired to KVM.
pub fn build_bus(
    functions: Vec<OpenedFunction>,
    kvm: &Kvm,
    vm_fd: &VmFd,
) -> Result<PciPlatform, PassthroughError> {
    let mut bus = PciBus::new();
    bus.add(Arc::new(Mutex::new(HostBridge::new())))
        .ok_or(PassthroughError::BusFull)?;
    let mut allocator = BarAllocator::new(PCI_MMIO_START, PCI_MMIO_END);
    let router = if functions.is_empty() {
        None
    } else {
        Some(Arc::new(GsiRouter::new(kvm, vm_fd).map_err(|source| {
            PassthroughError::Kvm {
                bdf: functions[0].device.bdf().to_string(),
                what: "share the VM fd for interrupt routing",
                source,
            }
        })?))
    };
    let kvm_vfio = kvm_vfio_device(&functions, vm_fd)?;
    for mut opened in functions {
        let bdf = opened.device.bdf().to_string();
        allocator
            .place(&mut opened.bars)
            .map_err(|source| PassthroughError::Bar {
                bdf: bdf.clone(),
                source,
            })?;
        let Some(router) = &router else { break };
        let mut function = VfioPciFunction::new(opened, router.clone(), vm_fd)?;
        function._kvm_vfio = kvm_vfio.clone();
        bus.add(Arc::new(Mutex::new(function)))
            .ok_or(PassthroughError::BusFull)?;
    }
    Ok(PciPlatform { bus: Arc::new(bus) })
}

/// KVM's VFIO pseudo device with every group added: KVM then knows the VM does DMA through
/// VFIO (on an IOMMU without snoop control it honours the guest's WBINVD, and it lets
/// VFIO and KVM share the IOMMU group's state). Kept open as long as the functions live.
fn kvm_vfio_device(
    functions: &[OpenedFunction],
    vm_fd: &VmFd,
) -> Result<Option<Arc<DeviceFd>>, PassthroughError> {
    let Some(first) = functions.first() else {
        return Ok(None);
    };
    let kvm_err = |what, source| PassthroughError::Kvm {
        bdf: first.device.bdf().to_string(),
        what,
        source,
    };
    let mut create = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    let device = vm_fd
        .create_device(&mut create)
        .map_err(|e| kvm_err("create its VFIO pseudo device", e))?;
    let mut added: Vec<u32> = Vec::new();
    for f in functions {
        let group = f.device.group();
        if added.contains(&group.id()) {
            continue;
        }
        let fd: i32 = group.as_raw_fd();
        let attr = kvm_device_attr {
            flags: 0,
            group: KVM_DEV_VFIO_GROUP,
            attr: u64::from(KVM_DEV_VFIO_GROUP_ADD),
            addr: &fd as *const i32 as u64,
        };
        device
            .set_device_attr(&attr)
            .map_err(|e| kvm_err("add an IOMMU group to its VFIO pseudo device", e))?;
        added.push(group.id());
    }
    Ok(Some(Arc::new(device)))
}

/// The GSI routing table: the irqchip's default routes plus one MSI route per live vector.
/// KVM_SET_GSI_ROUTING replaces the whole table, so every update sends all of it.
pub struct GsiRouter {
    vm: VmFd,
    state: Mutex<RouterState>,
}

struct RouterState {
    next_gsi: u32,
    msi: BTreeMap<u32, (u64, u32)>,
}

impl GsiRouter {
    /// A router on a duplicate of `vm_fd` (so vCPU threads can own it).
    fn new(kvm: &Kvm, vm_fd: &VmFd) -> Result<GsiRouter, kvm_ioctls::Error> {
        // SAFETY: dup of a valid fd; the new fd is owned by the VmFd built from it.
        let fd = unsafe { libc::dup(vm_fd.as_raw_fd()) };
        if fd < 0 {
            return Err(kvm_ioctls::Error::last());
        }
        // SAFETY: `fd` is a VM fd we own (just duplicated).
        let vm = unsafe { kvm.create_vmfd_from_rawfd(fd) }?;
        Ok(GsiRouter {
            vm,
            state: Mutex::new(RouterState {
                next_gsi: FIRST_MSI_GSI,
                msi: BTreeMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `n` consecutive unused GSIs.
    fn allocate(&self, n: u32) -> u32 {
        let mut s = self.lock();
        let first = s.next_gsi;
        s.next_gsi += n;
        first
    }

    /// Sets (or with `None` removes) the MSI route of each GSI, then sends the table.
    fn update(&self, routes: &[(u32, Option<(u64, u32)>)]) -> Result<(), kvm_ioctls::Error> {
        let mut s = self.lock();
        for (gsi, route) in routes {
            match route {
                Some(r) => s.msi.insert(*gsi, *r),
                None => s.msi.remove(gsi),
            };
        }
        let table = routing_table(&s.msi);
        let mut routing =
            KvmIrqRouting::new(0).map_err(|_| kvm_ioctls::Error::new(libc::ENOMEM))?;
        for entry in table {
            routing
                .push(entry)
                .map_err(|_| kvm_ioctls::Error::new(libc::ENOSPC))?;
        }
        self.vm.set_gsi_routing(&routing)
    }

    /// Registers `fd` as the irqfd of `gsi`, or with `on` false takes it off.
    fn irqfd(&self, fd: &EventFd, gsi: u32, on: bool) -> Result<(), kvm_ioctls::Error> {
        if on {
            self.vm.register_irqfd(fd, gsi)
        } else {
            self.vm.unregister_irqfd(fd, gsi)
        }
    }
}

/// KVM's default routes (GSI 0..15 to both PICs and the IOAPIC, 16..23 to the IOAPIC)
/// followed by the MSI routes.
fn routing_table(msi: &BTreeMap<u32, (u64, u32)>) -> Vec<kvm_irq_routing_entry> {
    let mut table = Vec::new();
    let irqchip = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    };
    for gsi in 0..IOAPIC_PINS {
        if gsi < 16 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            table.push(irqchip(gsi, chip, gsi % 8));
        }
        table.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for (gsi, (addr, data)) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi: *gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = *addr as u32;
        e.u.msi.address_hi = (*addr >> 32) as u32;
        e.u.msi.data = *data;
        table.push(e);
    }
    table
}

/// A passed-through function as the guest sees it: configuration space from the device,
/// except the BARs, ROM, interrupt pin and the MSI/MSI-X control, which are emulated.
pub struct VfioPciFunction {
    device: Device,
    config_region: RegionInfo,
    bar_regions: [Option<RegionInfo>; 6],
    bars: BarSet,
    command: u16,
    msi: Option<MsiState>,
    msix: Option<MsixState>,
    /// One eventfd and GSI per vector (shared by MSI and MSI-X: only one is on at a time).
    vectors: Vec<(EventFd, u32)>,
    /// Per vector: whether its eventfd is a registered irqfd (exactly when it has a route).
    armed: Vec<bool>,
    /// Per vector: a signal taken out of a disarmed vector's eventfd, still to be delivered.
    held: Vec<bool>,
    /// The VFIO interrupt index now routed to the eventfds, and how many vectors.
    active: Option<(u32, usize)>,
    router: Arc<GsiRouter>,
    /// KVM's VFIO pseudo device, shared by the VM's functions.
    _kvm_vfio: Option<Arc<DeviceFd>>,
    // Declared after `device`: guest RAM stays mapped until the DMA mapping is gone.
    _mem: GuestMemoryMmap,
}

impl VfioPciFunction {
    fn new(
        opened: OpenedFunction,
        router: Arc<GsiRouter>,
        vm_fd: &VmFd,
    ) -> Result<VfioPciFunction, PassthroughError> {
        let OpenedFunction {
            device,
            config,
            config_region,
            bar_regions,
            bars,
            mem,
        } = opened;
        let bdf = device.bdf().to_string();
        let list = caps::capabilities(&config);
        let msi = list
            .iter()
            .find(|c| c.id == caps::CAP_ID_MSI)
            .and_then(|c| MsiCap::parse(&config, c.offset))
            .map(|cap| MsiState::new(&config, cap));
        let msix = list
            .iter()
            .find(|c| c.id == caps::CAP_ID_MSIX)
            .and_then(|c| MsixCap::parse(&config, c.offset))
            .map(|cap| MsixState::new(cap, MAX_MSIX_VECTORS));
        let count = msi
            .as_ref()
            .map(|m| 1usize << m.cap().log2_vectors)
            .unwrap_or(0)
            .max(
                msix.as_ref()
                    .map(|m| usize::from(m.cap().table_size))
                    .unwrap_or(0),
            );
        let first = router.allocate(count as u32);
        let mut vectors = Vec::with_capacity(count);
        for i in 0..count as u32 {
            let fd =
                EventFd::new(libc::EFD_NONBLOCK).map_err(|source| PassthroughError::EventFd {
                    bdf: bdf.clone(),
                    source,
                })?;
            vm_fd
                .register_irqfd(&fd, first + i)
                .map_err(|source| PassthroughError::Kvm {
                    bdf: bdf.clone(),
                    what: "register an MSI irqfd",
                    source,
                })?;
            vectors.push((fd, first + i));
        }
        Ok(VfioPciFunction {
            device,
            config_region,
            bar_regions,
            bars,
            command: 0,
            msi,
            msix,
            armed: vec![true; vectors.len()],
            held: vec![false; vectors.len()],
            vectors,
            active: None,
            router,
            _kvm_vfio: None,
            _mem: mem,
        })
    }

    fn device_read(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        match self.device.read(&self.config_region, offset as u64, &mut b) {
            Ok(()) => u32::from_le_bytes(b),
            Err(_) => u32::MAX,
        }
    }

    /// Whether vector `i` has a signal waiting: one held earlier, or one in its eventfd
    /// (taken out and held). Only a disarmed vector's eventfd keeps signals.
    fn take_pending(&mut self, i: usize) -> bool {
        if !self.armed[i] && self.vectors[i].0.read().is_ok() {
            self.held[i] = true;
        }
        self.held[i]
    }

    /// Makes VFIO signal the vectors of `index` (or nothing) and the routing table match
    /// `vectors` (address and data per live vector). A vector that loses its route is
    /// disarmed first, so a signal in between waits instead of meeting no route; one that
    /// gets a route is armed after, and what it held is delivered then.
    fn apply_interrupts(&mut self, index: u32, vectors: Vec<Option<(u64, u32)>>) {
        let bdf = self.device.bdf().to_string();
        let n = vectors.len().min(self.vectors.len());
        let wanted = (n > 0).then_some((index, n));
        if self.active != wanted {
            if let Some((old, _)) = self.active.take() {
                if let Err(e) = self.device.disable_irqs(old) {
                    log(format_args!("edgevisor: {bdf}: {e}"));
                }
            }
            // Whatever the old setting left waiting is not the new one's to deliver.
            for (i, (fd, _)) in self.vectors.iter().enumerate() {
                let _ = fd.read(); // an eventfd read takes the whole count
                self.held[i] = false;
            }
            if let Some((index, n)) = wanted {
                let fds: Vec<RawFd> = self.vectors[..n]
                    .iter()
                    .map(|(fd, _)| fd.as_raw_fd())
                    .collect();
                match self.device.enable_irqs(index, &fds) {
                    Ok(()) => self.active = wanted,
                    Err(e) => log(format_args!("edgevisor: {bdf}: {e}")),
                }
            }
        }
        let routes: Vec<(u32, Option<(u64, u32)>)> = self
            .vectors
            .iter()
            .enumerate()
            .map(|(i, (_, gsi))| (*gsi, vectors.get(i).copied().flatten()))
            .collect();
        for (i, (_, route)) in routes.iter().enumerate() {
            if self.armed[i] && route.is_none() {
                let (fd, gsi) = &self.vectors[i];
                match self.router.irqfd(fd, *gsi, false) {
                    Ok(()) => self.armed[i] = false,
                    Err(e) => log(format_args!(
                        "edgevisor: {bdf}: KVM refused to take off irqfd {gsi}: {e}"
                    )),
                }
            }
        }
        if let Err(e) = self.router.update(&routes) {
            log(format_args!(
                "edgevisor: {bdf}: KVM refused the MSI routes: {e}"
            ));
        }
        for (i, (_, route)) in routes.iter().enumerate() {
            if !self.armed[i] && route.is_some() {
                let waiting = self.take_pending(i);
                let (fd, gsi) = &self.vectors[i];
                if let Err(e) = self.router.irqfd(fd, *gsi, true) {
                    log(format_args!(
                        "edgevisor: {bdf}: KVM refused irqfd {gsi}: {e}"
                    ));
                    continue;
                }
                self.armed[i] = true;
                self.held[i] = false;
                // A write to an armed irqfd is an interrupt on its new route.
                if waiting {
                    if let Err(e) = fd.write(1) {
                        log(format_args!(
                            "edgevisor: {bdf}: could not deliver held vector {i}: {e}"
                        ));
                    }
                }
            }
        }
    }

    fn msi_changed(&mut self) {
        let vectors = self.msi.as_ref().map(|m| m.vectors()).unwrap_or_default();
        self.apply_interrupts(vfio::PCI_MSI_IRQ, vectors);
    }

    fn msix_changed(&mut self) {
        let vectors = self.msix.as_ref().map(|m| m.vectors()).unwrap_or_default();
        self.apply_interrupts(vfio::PCI_MSIX_IRQ, vectors);
    }
}

impl PciFunction for VfioPciFunction {
    fn read_config(&mut self, reg: usize) -> u32 {
        match reg {
            r if (BAR0..BAR0 + 24).contains(&r) => self.bars.read((r - BAR0) / 4),
            ROM_BAR => 0,
            // INTx is not offered: Interrupt Pin reads 0.
            INTERRUPT_LINE => self.device_read(reg) & !0xff00,
            r if self.msi.as_ref().is_some_and(|m| m.contains(r)) => {
                self.msi.as_ref().map(|m| m.read(r)).unwrap_or(0)
            }
            r if self.msix.as_ref().is_some_and(|m| m.cap().offset == r) => {
                let control = self.msix.as_ref().map(|m| m.control()).unwrap_or(0);
                (self.device_read(r) & 0xffff) | (u32::from(control) << 16)
            }
            r if r < CONFIG_SPACE_SIZE => self.device_read(r),
            _ => u32::MAX,
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let reg = offset & !3;
        let shift = offset & 3;
        if (BAR0..BAR0 + 24).contains(&reg) {
            let index = (reg - BAR0) / 4;
            let merged = merge_dword(self.bars.read(index), shift, data);
            self.bars.write(index, merged);
            return;
        }
        if reg == ROM_BAR || offset >= CONFIG_SPACE_SIZE {
            return;
        }
        if self.msi.as_ref().is_some_and(|m| m.contains(offset)) {
            if self.msi.as_mut().is_some_and(|m| m.write(offset, data)) {
                self.msi_changed();
            }
            return;
        }
        if self.msix.as_ref().is_some_and(|m| m.contains(offset)) {
            if self
                .msix
                .as_mut()
                .is_some_and(|m| m.write_config(offset, data))
            {
                self.msix_changed();
            }
            return;
        }
        if reg == COMMAND {
            let merged = merge_dword(u32::from(self.command), shift, data);
            self.command = merged as u16;
        }
        if let Err(e) = self.device.write(&self.config_region, offset as u64, data) {
            log(format_args!(
                "edgevisor: {}: configuration write at {offset:#x} failed: {e}",
                self.device.bdf()
            ));
        }
    }

    fn bars(&self) -> &BarSet {
        &self.bars
    }

    fn memory_enabled(&self) -> bool {
        self.command & COMMAND_MEMORY != 0
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if let Some(msix) = &self.msix {
            if msix.in_table(bar, offset, data.len() as u64) {
                msix.read_table(offset, data);
                return;
            }
        }
        if self
            .msix
            .as_ref()
            .is_some_and(|m| m.in_pba(bar, offset, data.len() as u64))
        {
            // MSI-X on: a vector is pending while it is disarmed (masked) with a signal
            // waiting. (The device's own PBA stays clear: the host keeps its vectors open.)
            let on = matches!(self.active, Some((vfio::PCI_MSIX_IRQ, _)));
            let pending: Vec<bool> = (0..self.vectors.len())
                .map(|i| on && self.take_pending(i))
                .collect();
            if let Some(msix) = &self.msix {
                msix.read_pba(offset, data, &pending);
            }
            return;
        }
        let ok = match self.bar_regions.get(bar).copied().flatten() {
            Some(region) => self.device.read(&region, offset, data).is_ok(),
            None => false,
        };
        if !ok {
            data.fill(0xff);
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if let Some(msix) = &mut self.msix {
            if msix.in_table(bar, offset, data.len() as u64) {
                if !msix.write_table(offset, data).is_empty() && msix.enabled() {
                    self.msix_changed();
                }
                return;
            }
            if msix.in_pba(bar, offset, data.len() as u64) {
                return; // read-only
            }
        }
        if let Some(region) = self.bar_regions.get(bar).copied().flatten() {
            if let Err(e) = self.device.write(&region, offset, data) {
                log(format_args!(
                    "edgevisor: {}: BAR {bar} write at {offset:#x} failed: {e}",
                    self.device.bdf()
                ));
            }
        }
    }
}

impl Drop for VfioPciFunction {
    fn drop(&mut self) {
        if let Some((index, _)) = self.active.take() {
            let _ = self.device.disable_irqs(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_table_keeps_the_irqchip_routes() {
        let mut msi = BTreeMap::new();
        msi.insert(24, (0xfee0_0000u64, 0x4041u32));
        let table = routing_table(&msi);
        // 16 PIC + 24 IOAPIC entries, then the MSI route.
        assert_eq!(table.len(), 41);
        let serial: Vec<_> = table.iter().filter(|e| e.gsi == 4).collect();
        assert_eq!(serial.len(), 2);
        // SAFETY: irqchip entries were written through the irqchip member.
        let chips: Vec<_> = serial
            .iter()
            .map(|e| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        assert_eq!(
            chips,
            vec![(KVM_IRQCHIP_PIC_MASTER, 4), (KVM_IRQCHIP_IOAPIC, 4)]
        );
        let last = table.last().unwrap();
        assert_eq!((last.gsi, last.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the MSI entry was written through the msi member.
        let (lo, hi, data) = unsafe {
            (
                last.u.msi.address_lo,
                last.u.msi.address_hi,
                last.u.msi.data,
            )
        };
        assert_eq!((lo, hi, data), (0xfee0_0000, 0, 0x4041));
    }
}
