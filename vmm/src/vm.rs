//! Building and running one VM: `Vm::new` checks the inputs and creates everything,
//! `Vm::start` runs the vCPUs and returns a `VmHandle` to wait for, pause, resume or stop it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use devices::{Bus, ExitSink};
use images::{BootProtocol, ImageFormat, ImageKind, KernelImage};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use serde::Serialize;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{acpi, cpu, cpuid, layout, loader, mptable};
use crate::config::{ConfigError, KernelSource, VmConfig};
use crate::exit::ExitReason;
use crate::passthrough::{self, PassthroughError, PciPlatform};
use crate::seccomp::{self, ThreadKind};
use crate::state::{CountersReport, Shared, VmState};
use crate::timings::{BootTimings, Phase, TimingsReport};
use crate::vcpu::{install_kick_handler, VcpuThread};
use crate::virtio::{self, AttachedDevices, VirtioError};
use devices::virtio::event_loop::{DeviceSubscriber, EventLoop};
use devices::virtio::{VirtioCounterSnapshot, VirtioCounters};

/// Address KVM uses for its TSS on Intel (three pages below the BIOS area).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// ISA IRQ of COM1.
const SERIAL_IRQ: u32 = 4;

/// Everything that can stop a VM from being built.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Bad configuration values.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The kernel image or initrd could not be used.
    #[error(transparent)]
    Image(#[from] images::ImageError),
    /// The initrd path does not exist or cannot be read.
    #[error("cannot read initrd {path}: {source}")]
    Initrd {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// /dev/kvm is missing or not accessible.
    #[error("{0}")]
    KvmUnavailable(String),
    /// A KVM ioctl failed while building the VM.
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        /// What we were doing.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] numa::MemoryError),
    /// Host topology could not be read.
    #[error(transparent)]
    Topology(#[from] numa::TopologyError),
    /// The vCPUs cannot be placed as asked.
    #[error(transparent)]
    Placement(#[from] numa::PlacementError),
    /// Loading the kernel failed.
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    /// vCPU setup failed.
    #[error(transparent)]
    Cpu(#[from] cpu::CpuSetupError),
    /// CPUID table could not be built.
    #[error(transparent)]
    Cpuid(#[from] cpuid::CpuidError),
    /// MP table could not be written.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    /// ACPI tables could not be written.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// A device could not be created or placed.
    #[error("could not set up the {what} device: {detail}")]
    Device {
        /// Which device.
        what: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// A thread could not be started.
    #[error("could not start a vCPU thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The vCPU seccomp filter could not be built or its SIGSYS handler installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// A virtio device could not be set up.
    #[error(transparent)]
    Virtio(#[from] VirtioError),
    /// A `--device vfio=` function could not be passed through.
    #[error(transparent)]
    Passthrough(#[from] PassthroughError),
    /// The device event loop could not start.
    #[error(transparent)]
    EventLoop(#[from] devices::virtio::event_loop::EventLoopError),
}

/// What was booted, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSummary {
    /// The image file, or "builtin probe".
    pub image: String,
    /// Its format.
    pub format: String,
    /// What kind of kernel it looks like.
    pub kind: String,
    /// Protocol used.
    pub protocol: String,
    /// Entry point.
    pub entry: u64,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// vCPU count.
    pub vcpus: u8,
}

/// The result of a VM's run.
#[derive(Debug, Clone, Serialize)]
pub struct ExitReport {
    /// Why it ended.
    pub exit: ExitReason,
    /// The process exit code that stands for it.
    pub exit_code: i32,
    /// One-line description.
    pub message: String,
    /// Boot phases.
    pub timings: TimingsReport,
    /// What was booted.
    pub boot: BootSummary,
    /// VM-wide counters.
    pub counters: CountersReport,
    /// Per-device counters.
    pub devices: BTreeMap<&'static str, devices::CounterSnapshot>,
    /// Bytes the guest wrote to its serial port.
    pub serial_bytes: u64,
    /// Per virtio device counters, by device name (block0, net0, ...).
    pub virtio: BTreeMap<String, VirtioCounterSnapshot>,
}

/// A built VM, not yet running.
pub struct Vm {
    shared: Arc<Shared>,
    vcpus: Vec<VcpuThread>,
    vm_fd: VmFd,
    _kvm: Kvm,
    serial: Arc<Mutex<devices::Serial>>,
    device_counters: devices::LegacyCounters,
    boot_timer: Arc<devices::BootTimerStamp>,
    summary: BootSummary,
    seccomp: bool,
    /// vCPUs serve passed-through functions (their seccomp filter allows it).
    passthrough: bool,
    virtio_subscribers: Vec<DeviceSubscriber>,
    virtio_counters: VirtioCounterList,
}

/// Counters of each virtio device, by name.
type VirtioCounterList = Arc<Vec<(String, Arc<VirtioCounters>)>>;

fn virtio_snapshot(list: &VirtioCounterList) -> BTreeMap<String, VirtioCounterSnapshot> {
    list.iter()
        .map(|(name, counters)| (name.clone(), counters.snapshot()))
        .collect()
}

/// Reads and identifies the kernel the config names.
fn read_kernel(config: &VmConfig) -> Result<(KernelImage, String), VmError> {
    Ok(match &config.kernel {
        KernelSource::BuiltinProbe => (
            KernelImage::from_bytes(firmware::PROBE_LINUX64.to_vec())?,
            "builtin probe".to_string(),
        ),
        KernelSource::Path(p) => (KernelImage::from_file(p)?, p.display().to_string()),
    })
}

fn read_initrd(path: &Option<PathBuf>) -> Result<Option<Vec<u8>>, VmError> {
    path.as_ref()
        .map(|p| images::read_initrd(p).map_err(VmError::from))
        .transpose()
}

fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| {
        VmError::KvmUnavailable(match e.errno() {
            libc::ENOENT => "/dev/kvm does not exist: this host has no KVM (load kvm_intel or kvm_amd, or run on a host that has it)".into(),
            libc::EACCES | libc::EPERM => "no permission to open /dev/kvm: run as root or add your user to the kvm group".into(),
            _ => format!("cannot open /dev/kvm: {e}"),
        })
    })
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn register_memory(vm_fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the VM keeps (through
        // its vCPU threads) for as long as the VM fd exists.
        unsafe { vm_fd.set_user_memory_region(region_desc) }
            .map_err(kvm_err("register guest memory"))?;
    }
    Ok(())
}

/// The user's inputs, read and checked before any KVM object exists.
struct GuestInputs {
    image: KernelImage,
    name: String,
    protocol: BootProtocol,
    initrd: Option<Vec<u8>>,
    cmdline: String,
    mem_bytes: u64,
    virtio_devices: usize,
}

impl GuestInputs {
    fn read(config: &VmConfig) -> Result<GuestInputs, VmError> {
        let (image, name) = read_kernel(config)?;
        let protocol = config.boot_protocol.unwrap_or(image.default_protocol());
        // Asking for the plan validates the protocol before any KVM object exists.
        image.plan(protocol)?;
        let initrd = read_initrd(&config.initrd)?;
        Ok(GuestInputs {
            image,
            name,
            protocol,
            initrd,
            cmdline: virtio::add_tokens(
                &config.cmdline,
                &virtio::cmdline_tokens(config.virtio_device_count()),
            ),
            mem_bytes: config.mem_mib << 20,
            virtio_devices: config.virtio_device_count(),
        })
    }

    /// The name the guest sees as argv[0] under multiboot.
    fn file_name(&self) -> String {
        Path::new(&self.name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "kernel".into())
    }
}

/// The VM with its memory registered and its interrupt controllers in place.
fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, VmError> {
    let vm_fd = kvm.create_vm().map_err(kvm_err("create a VM"))?;
    // Memory slots go in before the irqchip: on this kind of host a slot added after it
    // costs milliseconds more (measured: 4.5 ms against 0.1 ms).
    register_memory(&vm_fd, mem)?;
    vm_fd
        .set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("set the TSS address"))?;
    vm_fd
        .create_irq_chip()
        .map_err(kvm_err("create the in-kernel interrupt controllers"))?;
    Ok(vm_fd)
}

/// Where guest RAM comes from and where each vCPU may run.
struct Placement {
    /// Host topology, read only when the config asks for placement.
    topology: Option<numa::Topology>,
    /// CPU set per vCPU, when placement was asked for.
    vcpu_cpus: Option<Vec<numa::CpuSet>>,
}

impl Placement {
    fn resolve(config: &VmConfig) -> Result<Placement, VmError> {
        if !config.needs_placement() {
            return Ok(Placement {
                topology: None,
                vcpu_cpus: None,
            });
        }
        let topology = numa::Topology::from_host()?;
        let vcpu_cpus = numa::place_vcpus(&topology, &config.cpu_spec(), config.numa_node)?;
        Ok(Placement {
            topology: Some(topology),
            vcpu_cpus: Some(vcpu_cpus),
        })
    }

    /// Maps guest RAM: lazily populated anonymous memory by default, otherwise as the config
    /// asks (hugepages, memfd, node binding, prefault), validated against the host first.
    fn map_memory(&self, config: &VmConfig) -> Result<GuestMemoryMmap, VmError> {
        let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(config.mem_mib << 20)
            .into_iter()
            .map(|(start, size)| (GuestAddress(start), size as usize))
            .collect();
        Ok(match &self.topology {
            None => numa::GuestMemoryBacking::Anonymous.map(&ranges)?,
            Some(topology) => {
                let options = config.memory_spec().options();
                numa::GuestMemory::map(&options, topology, &ranges)?.into_memory()
            }
        })
    }

    fn cpus_for(&self, vcpu: u8) -> Option<numa::CpuSet> {
        self.vcpu_cpus
            .as_ref()
            .and_then(|sets| sets.get(vcpu as usize).cloned())
    }
}

fn create_pit(vm_fd: &VmFd) -> Result<(), VmError> {
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd
        .create_pit2(pit)
        .map_err(kvm_err("create the in-kernel PIT"))
}

/// Guest memory contents, devices and the CPUID KVM offers: everything the vCPUs need.
struct PreparedGuest {
    boot: loader::BootEntry,
    devices: Devices,
    supported_cpuid: kvm_bindings::CpuId,
}

fn prepare_guest(
    kvm: &Kvm,
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    guest: &GuestInputs,
    shared: &Arc<Shared>,
    console: Box<dyn Write + Send>,
    pci: Option<&PciPlatform>,
) -> Result<PreparedGuest, VmError> {
    let supported_cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("report its supported CPUID"))?;
    let file_name = guest.file_name();
    let payload = loader::GuestPayload {
        image: &guest.image,
        protocol: guest.protocol,
        cmdline: &guest.cmdline,
        initrd: guest.initrd.as_deref(),
        image_name: &file_name,
    };
    let boot = loader::load(mem, guest.mem_bytes, &payload)?;
    cpu::write_boot_tables(mem)?;
    let vcpus = shared.vcpu_count() as u8;
    mptable::write(mem, vcpus)?;
    // With a PCI bus, the DSDT names its host bridge so Linux scans bus 0.
    let pci_root = pci.map(|_| crate::arch::x86_64::aml::PciRoot {
        window_start: layout::PCI_MMIO_START as u32,
        window_end: (layout::PCI_MMIO_END - 1) as u32,
    });
    acpi::write(
        mem,
        vcpus,
        &virtio::acpi_devices(guest.virtio_devices),
        pci_root.as_ref(),
    )?;
    let devices = build_devices(vm_fd, shared, console, pci)?;
    Ok(PreparedGuest {
        boot,
        devices,
        supported_cpuid,
    })
}

fn create_vcpus(
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    prepared: &PreparedGuest,
    shared: &Arc<Shared>,
    placement: &Placement,
) -> Result<Vec<VcpuThread>, VmError> {
    let count = shared.vcpu_count() as u8;
    let pio = prepared.devices.pio.clone();
    let mmio = prepared.devices.mmio.clone();
    let mut vcpus = Vec::with_capacity(count as usize);
    for id in 0..count {
        let fd = vm_fd
            .create_vcpu(id as u64)
            .map_err(kvm_err("create a vCPU"))?;
        let table = cpuid::patch(&prepared.supported_cpuid, id, count, host_tsc_khz(&fd))?;
        fd.set_cpuid2(&table)
            .map_err(kvm_err("set the CPUID table"))?;
        cpu::setup_vcpu(&fd, id, prepared.boot.protocol, prepared.boot.entry)?;
        vcpus.push(VcpuThread {
            id,
            cpus: placement.cpus_for(id),
            fd,
            pio: pio.clone(),
            mmio: mmio.clone(),
            mem: mem.clone(),
            shared: shared.clone(),
            seccomp: None,
            seccomp_selftest: false,
        });
    }
    Ok(vcpus)
}

/// Stamps the first serial byte, then forwards to the real console.
struct ConsoleWriter {
    inner: Box<dyn Write + Send>,
    shared: Arc<Shared>,
    first: bool,
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.first && !buf.is_empty() {
            self.shared.timings.stamp(Phase::FirstSerialByte);
            self.first = false;
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn host_tsc_khz(vcpu: &kvm_ioctls::VcpuFd) -> u32 {
    if let Ok(khz) = vcpu.get_tsc_khz() {
        if khz > 0 {
            return khz;
        }
    }
    // Fall back to what the host kernel measured.
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map(|mhz| (mhz * 1000.0) as u32)
        .unwrap_or(1_000_000)
}

impl Vm {
    /// Checks the inputs, then creates the VM, its memory, devices and vCPUs, with the guest
    /// loaded. `console` receives the guest's serial output. Nothing outlives an error.
    pub fn new(
        config: &VmConfig,
        console: Box<dyn Write + Send>,
        start: Instant,
    ) -> Result<Vm, VmError> {
        config.validate()?;
        let guest = GuestInputs::read(config)?;
        // Device back ends (disk images, TAPs, sockets) are opened before anything else is
        // created, so a bad one leaves nothing behind.
        let backends = virtio::open_backends(config)?;
        // Memory and placement are checked and guest RAM is mapped before any KVM object
        // exists: a short hugepage pool or a missing node leaves nothing behind.
        let placement = Placement::resolve(config)?;
        let mem = placement.map_memory(config)?;
        // Passed-through functions are checked, opened and DMA-mapped before KVM exists.
        let functions = passthrough::open(&config.vfio, &mem, Path::new("/"))?;
        let shared = Arc::new(Shared::new(config.vcpus as usize, BootTimings::new(start)));
        let kvm = open_kvm()?;
        let vm_fd = create_vm(&kvm, &mem)?;
        // The PCI bus exists only when asked for: the default boot path does not change.
        let pci = config
            .wants_pci()
            .then(|| passthrough::build_bus(functions, &kvm, &vm_fd))
            .transpose()?;

        // The in-kernel PIT starts a kernel worker thread while holding the VM's lock, which
        // costs milliseconds here; create it while this thread loads the guest and builds
        // the devices, and join before the vCPUs (which need that lock).
        let (pit, prepared) = std::thread::scope(|scope| {
            let pit = scope.spawn(|| create_pit(&vm_fd));
            let prepared =
                prepare_guest(&kvm, &vm_fd, &mem, &guest, &shared, console, pci.as_ref());
            (pit.join(), prepared)
        });
        pit.map_err(|_| VmError::Device {
            what: "PIT",
            detail: "the thread creating it panicked".into(),
        })??;
        let mut prepared = prepared?;
        let AttachedDevices {
            mut mmio,
            subscribers,
            counters,
        } = virtio::attach(backends, &vm_fd, &mem)?;
        if let Some(pci) = &pci {
            let window = devices::pci::PciMmioWindow::new(pci.bus.clone(), layout::PCI_MMIO_START);
            mmio.insert(
                layout::PCI_MMIO_START,
                layout::PCI_MMIO_END - layout::PCI_MMIO_START,
                Arc::new(Mutex::new(window)),
            )
            .map_err(|e| VmError::Device {
                what: "PCI window",
                detail: e.to_string(),
            })?;
        }
        prepared.devices.mmio = Arc::new(mmio);
        shared.timings.stamp(Phase::KvmReady);

        let vcpus = create_vcpus(&vm_fd, &mem, &prepared, &shared, &placement)?;
        shared.timings.stamp(Phase::GuestLoaded);
        let summary = BootSummary {
            image: guest.name,
            format: guest.image.format().to_string(),
            kind: guest.image.kind().to_string(),
            protocol: prepared.boot.protocol.to_string(),
            entry: prepared.boot.entry,
            mem_mib: config.mem_mib,
            vcpus: config.vcpus,
        };
        Ok(Vm {
            shared,
            vcpus,
            vm_fd,
            _kvm: kvm,
            serial: prepared.devices.serial,
            device_counters: prepared.devices.counters,
            boot_timer: prepared.devices.boot_timer,
            summary,
            seccomp: config.seccomp,
            passthrough: !config.vfio.is_empty(),
            virtio_subscribers: subscribers,
            virtio_counters: Arc::new(counters),
        })
    }

    /// What will be booted.
    pub fn summary(&self) -> &BootSummary {
        &self.summary
    }

    /// Starts the vCPU threads.
    pub fn start(mut self) -> Result<VmHandle, VmError> {
        install_kick_handler().map_err(VmError::Thread)?;
        let filter = if self.seccomp {
            seccomp::install_violation_handler()?;
            Some(Arc::new(seccomp::compile_with(
                ThreadKind::Vcpu,
                self.passthrough,
            )?))
        } else {
            None
        };
        let event_loop = self.start_event_loop()?;
        let selftest = seccomp::selftest_requested(ThreadKind::Vcpu);
        for vcpu in &mut self.vcpus {
            vcpu.seccomp = filter.clone();
            vcpu.seccomp_selftest = selftest && vcpu.id == 0;
        }
        let mut threads = Vec::with_capacity(self.vcpus.len());
        for vcpu in self.vcpus {
            let name = format!("vcpu{}", vcpu.id);
            let spawned = std::thread::Builder::new()
                .name(name)
                .spawn(move || vcpu.run());
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.shared.finish(ExitReason::Stopped);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(VmError::Thread(e));
                }
            }
        }
        Ok(VmHandle {
            control: VmControl {
                shared: self.shared.clone(),
                boot_timer: self.boot_timer,
                summary: self.summary,
                virtio_counters: self.virtio_counters,
            },
            shared: self.shared,
            threads,
            _vm_fd: self.vm_fd,
            _kvm: self._kvm,
            serial: self.serial,
            device_counters: self.device_counters,
            event_loop,
        })
    }

    /// Starts the device event loop when the VM has virtio devices; under seccomp the loop's
    /// thread installs its own filter before serving anything.
    fn start_event_loop(&mut self) -> Result<Option<EventLoop>, VmError> {
        let subscribers = std::mem::take(&mut self.virtio_subscribers);
        if subscribers.is_empty() {
            return Ok(None);
        }
        let program = if self.seccomp {
            Some(seccomp::compile(ThreadKind::EventLoop)?)
        } else {
            None
        };
        let selftest = seccomp::selftest_requested(ThreadKind::EventLoop);
        let on_start = Box::new(move || {
            if let Some(program) = &program {
                seccomp::apply(ThreadKind::EventLoop, program).map_err(|e| e.to_string())?;
            }
            if selftest {
                seccomp::run_selftest(ThreadKind::EventLoop);
            }
            Ok(())
        });
        Ok(Some(EventLoop::spawn(subscribers, on_start)?))
    }
}

/// The legacy devices and the handles the VMM keeps on them.
struct Devices {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    serial: Arc<Mutex<devices::Serial>>,
    counters: devices::LegacyCounters,
    boot_timer: Arc<devices::BootTimerStamp>,
}

fn build_devices(
    vm_fd: &VmFd,
    shared: &Arc<Shared>,
    console: Box<dyn Write + Send>,
    pci: Option<&PciPlatform>,
) -> Result<Devices, VmError> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Device {
        what: "serial",
        detail: e.to_string(),
    })?;
    vm_fd
        .register_irqfd(&irq, SERIAL_IRQ)
        .map_err(kvm_err("route the serial interrupt"))?;
    let writer = ConsoleWriter {
        inner: console,
        shared: shared.clone(),
        first: true,
    };
    let sink: Arc<dyn ExitSink> = shared.clone();
    let boot_timer = Arc::new(devices::BootTimerStamp::new());
    let mut legacy = devices::legacy_x86_devices(Box::new(writer), irq, sink, boot_timer.clone())
        .map_err(|e| VmError::Device {
        what: "legacy",
        detail: e.to_string(),
    })?;
    if let Some(pci) = pci {
        let ports = devices::pci::PciConfigIo::new(pci.bus.clone());
        legacy
            .bus
            .insert(
                u64::from(devices::pci::bus::CONFIG_ADDRESS_PORT),
                8,
                Arc::new(Mutex::new(ports)),
            )
            .map_err(|e| VmError::Device {
                what: "PCI configuration ports",
                detail: e.to_string(),
            })?;
    }
    Ok(Devices {
        pio: Arc::new(legacy.bus),
        mmio: Arc::new(Bus::new()),
        serial: legacy.serial,
        counters: legacy.counters,
        boot_timer,
    })
}

fn device_counters(
    c: &devices::LegacyCounters,
) -> BTreeMap<&'static str, devices::CounterSnapshot> {
    [
        ("serial", &c.serial),
        ("i8042", &c.i8042),
        ("rtc", &c.rtc),
        ("post", &c.post),
        ("boot_timer", &c.boot_timer),
        ("debug_exit", &c.debug_exit),
        ("pvpanic", &c.pvpanic),
        ("acpi_pm", &c.acpi_pm),
    ]
    .into_iter()
    .map(|(name, counters)| (name, counters.snapshot()))
    .collect()
}

/// A running VM.
pub struct VmHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    _vm_fd: VmFd,
    _kvm: Kvm,
    serial: Arc<Mutex<devices::Serial>>,
    device_counters: devices::LegacyCounters,
    event_loop: Option<EventLoop>,
    /// State, pause/resume/stop, timings and counters, shared with [`VmHandle::control`].
    control: VmControl,
}

impl VmHandle {
    /// Current state.
    pub fn state(&self) -> VmState {
        self.control.state()
    }

    /// Parks every vCPU; returns once they are all parked. False if the VM had exited.
    pub fn pause(&self) -> bool {
        self.control.pause()
    }

    /// Lets the vCPUs run again. False if the VM had exited.
    pub fn resume(&self) -> bool {
        self.control.resume()
    }

    /// Stops the VM (reason `stopped`); `wait` then returns promptly.
    pub fn stop(&self) {
        self.control.stop()
    }

    /// Boot phases so far.
    pub fn timings(&self) -> TimingsReport {
        self.control.timings()
    }

    /// A cloneable sender for the guest's serial input, usable from another thread.
    pub fn serial_sender(&self) -> SerialInput {
        SerialInput {
            serial: self.serial.clone(),
            shared: self.shared.clone(),
        }
    }

    /// A cloneable way to stop the VM from another thread (e.g. a signal handler thread).
    pub fn stopper(&self) -> VmStopper {
        VmStopper(self.shared.clone())
    }

    /// A cloneable controller for another thread (e.g. a control socket): state, pause,
    /// resume, stop and timings, without owning the VM.
    pub fn control(&self) -> VmControl {
        self.control.clone()
    }

    /// Waits for the VM to end, joins its threads and reports.
    pub fn wait(mut self) -> ExitReport {
        let mut exit = self.shared.wait_exit();
        if let ExitReason::InternalError {
            hardware_virtualization,
            ..
        } = &mut exit
        {
            *hardware_virtualization = crate::exit::host_has_hardware_virtualization();
        }
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
        if let Some(mut event_loop) = self.event_loop.take() {
            event_loop.stop();
        }
        // Also stamps the guest-main phase from the boot timer.
        let timings = self.control.timings();
        let devices = device_counters(&self.device_counters);
        let serial_bytes = devices.get("serial").map(|c| c.bytes_out).unwrap_or(0);
        ExitReport {
            exit_code: exit.exit_code(),
            message: exit.to_string(),
            exit,
            timings,
            boot: self.control.summary.clone(),
            counters: self.control.counters(),
            devices,
            serial_bytes,
            virtio: self.control.virtio_counters(),
        }
    }
}

impl Drop for VmHandle {
    /// A handle dropped without `wait` stops its VM and joins the vCPU threads, so an
    /// embedder never leaves a guest running behind it.
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.shared.finish(ExitReason::Stopped);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

/// Feeds the guest's serial input.
#[derive(Clone)]
pub struct SerialInput {
    serial: Arc<Mutex<devices::Serial>>,
    shared: Arc<Shared>,
}

impl SerialInput {
    /// Queues `bytes` for the guest, waiting while its receive FIFO is full; false once
    /// the VM has exited.
    pub fn send(&self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if matches!(self.shared.state(), VmState::Exited(_)) {
                return false;
            }
            let queued = match self.serial.lock() {
                Ok(mut serial) => match serial.enqueue_input(bytes) {
                    Ok(n) => n,
                    Err(devices::SerialError::Interrupt { queued, .. }) => queued,
                },
                Err(_) => return false,
            };
            bytes = &bytes[queued..];
            if queued == 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        true
    }
}

/// Stops a VM from anywhere.
#[derive(Clone)]
pub struct VmStopper(Arc<Shared>);

impl VmStopper {
    /// Ends the VM with reason `stopped`.
    pub fn stop(&self) {
        self.0.finish(ExitReason::Stopped);
    }
}

/// Controls a running VM from any thread; see [`VmHandle::control`].
#[derive(Clone)]
pub struct VmControl {
    shared: Arc<Shared>,
    boot_timer: Arc<devices::BootTimerStamp>,
    summary: BootSummary,
    virtio_counters: VirtioCounterList,
}

impl VmControl {
    /// Current state.
    pub fn state(&self) -> VmState {
        self.shared.state()
    }

    /// Parks every vCPU; false if the VM had exited.
    pub fn pause(&self) -> bool {
        self.shared.pause()
    }

    /// Lets the vCPUs run again; false if the VM had exited.
    pub fn resume(&self) -> bool {
        self.shared.resume()
    }

    /// Ends the VM with reason `stopped`.
    pub fn stop(&self) {
        self.shared.finish(ExitReason::Stopped);
    }

    /// Boot phases so far.
    pub fn timings(&self) -> TimingsReport {
        if let Some(first) = self.boot_timer.first() {
            self.shared.timings.stamp_at(Phase::GuestMain, first.at);
        }
        self.shared.timings.snapshot()
    }

    /// VM-wide counters so far (exits by kind).
    pub fn counters(&self) -> CountersReport {
        self.shared.counters.snapshot()
    }

    /// What was booted.
    pub fn summary(&self) -> &BootSummary {
        &self.summary
    }

    /// Counters of each virtio device so far, by device name.
    pub fn virtio_counters(&self) -> BTreeMap<String, VirtioCounterSnapshot> {
        virtio_snapshot(&self.virtio_counters)
    }
}

/// Format and kind of an image, without booting it.
pub fn inspect(path: &Path) -> Result<(ImageFormat, ImageKind, Vec<BootProtocol>), VmError> {
    let image = KernelImage::from_file(path)?;
    Ok((image.format(), image.kind(), image.protocols().to_vec()))
}
