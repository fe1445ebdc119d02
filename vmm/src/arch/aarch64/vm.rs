//! Building and running one aarch64 VM. On aarch64 hosts this module *is* `crate::vm`
//! (lib.rs re-exports it under that name), with the same public surface as the x86_64 one:
//! `Vm::new` checks the inputs and creates everything, `Vm::start` runs the vCPUs and
//! returns a `VmHandle` to wait for, pause, resume or stop.
//!
//! The steps: map RAM at 0x4000_0000 (host-page checked), create the VM and register the
//! memory, create the vCPUs (KVM_ARM_VCPU_INIT with PSCI 0.2; secondaries powered off), the
//! GIC (v3, else v2) and initialise it, put the PL011 and the virtio-mmio transports on the
//! MMIO bus with irqfds, load the Image and initrd, write the FDT, set the boot vCPU's
//! registers. The vCPU loop is the shared one in `crate::vcpu` (MMIO exits; PSCI SYSTEM_OFF
//! and SYSTEM_RESET arrive as KVM system events).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use devices::virtio::event_loop::{DeviceSubscriber, EventLoop};
use devices::virtio::{VirtioCounterSnapshot, VirtioCounters};
use devices::{Bus, Pl011};
use images::{Arm64Image, BootProtocol, ImageFormat, ImageKind};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use serde::Serialize;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::fdt::VirtioMmioNode;
use super::gic::{self, Gic};
use super::layout::{self, LayoutError, PL011_BASE, PL011_SIZE, PL011_SPI};
use super::loader::{self, Payload};
use super::regs;
use crate::config::{ConfigError, KernelSource, VmConfig};
use crate::exit::ExitReason;
use crate::seccomp::{self, ThreadKind};
use crate::state::{CountersReport, Shared, VmState};
use crate::timings::{BootTimings, Phase, TimingsReport};
use crate::vcpu::{install_kick_handler, VcpuThread};
use crate::virtio::{self, AttachedDevices, VirtioError};

/// Command line used when the config gives none: the PL011 as console.
pub const DEFAULT_CMDLINE: &str = "console=ttyAMA0";

/// Everything that can stop a VM from being built.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Bad configuration values.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The kernel Image could not be used.
    #[error(transparent)]
    Image(#[from] images::Arm64FileError),
    /// The initrd could not be read.
    #[error(transparent)]
    Initrd(#[from] images::ImageError),
    /// The built-in probe is an x86_64 guest.
    #[error(
        "the built-in boot probe is an x86_64 guest and cannot run on this aarch64 host: pass \
         an arm64 kernel Image with --kernel"
    )]
    NoBuiltinProbe,
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
    /// The memory layout does not fit the request.
    #[error(transparent)]
    Layout(#[from] LayoutError),
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
    /// The GIC could not be set up.
    #[error(transparent)]
    Gic(#[from] gic::GicError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
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
    /// The device event loop could not start.
    #[error(transparent)]
    EventLoop(#[from] devices::virtio::event_loop::EventLoopError),
}

/// What was booted, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSummary {
    /// The image file.
    pub image: String,
    /// Its format.
    pub format: String,
    /// What kind of kernel it looks like.
    pub kind: String,
    /// Protocol used ("linux-arm64").
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
    /// Per virtio device counters, by device name.
    pub virtio: BTreeMap<String, VirtioCounterSnapshot>,
}

/// Counters of each virtio device, by name.
type VirtioCounterList = Arc<Vec<(String, Arc<VirtioCounters>)>>;

fn virtio_snapshot(list: &VirtioCounterList) -> BTreeMap<String, VirtioCounterSnapshot> {
    list.iter()
        .map(|(name, counters)| (name.clone(), counters.snapshot()))
        .collect()
}

fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| {
        VmError::KvmUnavailable(match e.errno() {
            libc::ENOENT => "/dev/kvm does not exist: this host has no KVM (boot the host kernel at EL2 with KVM enabled)".into(),
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

/// Guest RAM, as the config asks, at the aarch64 layout's addresses.
fn map_memory(
    config: &VmConfig,
    topology: Option<&numa::Topology>,
) -> Result<GuestMemoryMmap, VmError> {
    let ranges: Vec<(GuestAddress, usize)> =
        layout::ram_ranges(config.mem_mib << 20, layout::host_page_size())?
            .into_iter()
            .map(|(start, size)| (GuestAddress(start), size as usize))
            .collect();
    Ok(match topology {
        None => numa::GuestMemoryBacking::Anonymous.map(&ranges)?,
        Some(topology) => {
            let options = config.memory_spec().options();
            numa::GuestMemory::map(&options, topology, &ranges)?.into_memory()
        }
    })
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

/// A built VM, not yet running.
pub struct Vm {
    shared: Arc<Shared>,
    vcpus: Vec<VcpuThread>,
    vm_fd: VmFd,
    _gic: Gic,
    _kvm: Kvm,
    serial: Arc<Mutex<Pl011>>,
    summary: BootSummary,
    seccomp: bool,
    virtio_subscribers: Vec<DeviceSubscriber>,
    virtio_counters: VirtioCounterList,
}

/// The kernel, initrd and command line, read and checked before any KVM object exists.
struct GuestInputs {
    image: Arm64Image,
    name: String,
    initrd: Option<Vec<u8>>,
    cmdline: String,
}

impl GuestInputs {
    fn read(config: &VmConfig) -> Result<GuestInputs, VmError> {
        let path = match &config.kernel {
            KernelSource::BuiltinProbe => return Err(VmError::NoBuiltinProbe),
            KernelSource::Path(p) => p,
        };
        let image = Arm64Image::from_file(path)?;
        let initrd = config
            .initrd
            .as_ref()
            .map(|p| images::read_initrd(p))
            .transpose()?;
        let cmdline = if config.cmdline.trim().is_empty() {
            DEFAULT_CMDLINE.to_string()
        } else {
            config.cmdline.clone()
        };
        Ok(GuestInputs {
            image,
            name: path.display().to_string(),
            initrd,
            cmdline,
        })
    }
}

/// Creates the vCPUs (not yet running) and returns them with their MPIDRs.
fn create_vcpus(vm_fd: &VmFd, count: u8) -> Result<Vec<(kvm_ioctls::VcpuFd, u64)>, VmError> {
    let mut out = Vec::with_capacity(usize::from(count));
    for id in 0..count {
        let fd = vm_fd
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("create a vCPU"))?;
        regs::init_vcpu(vm_fd, &fd, u32::from(id))?;
        let mpidr = regs::read_mpidr(&fd, u32::from(id))?;
        out.push((fd, mpidr));
    }
    Ok(out)
}

/// Puts the PL011 on `mmio` with its irqfd.
fn add_uart(
    vm_fd: &VmFd,
    mmio: &mut Bus,
    shared: &Arc<Shared>,
    console: Box<dyn Write + Send>,
) -> Result<Arc<Mutex<Pl011>>, VmError> {
    let device_err = |detail: String| VmError::Device {
        what: "PL011 serial",
        detail,
    };
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| device_err(e.to_string()))?;
    vm_fd
        .register_irqfd(&irq, PL011_SPI)
        .map_err(kvm_err("route the serial interrupt"))?;
    let writer = ConsoleWriter {
        inner: console,
        shared: shared.clone(),
        first: true,
    };
    let uart = Arc::new(Mutex::new(Pl011::new(Box::new(writer), irq)));
    mmio.insert(PL011_BASE, PL011_SIZE, uart.clone())
        .map_err(|e| device_err(e.to_string()))?;
    Ok(uart)
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
        layout::check_vcpus(u32::from(config.vcpus))?;
        let guest = GuestInputs::read(config)?;
        let backends = virtio::open_backends(config)?;
        let (topology, vcpu_cpus) = if config.needs_placement() {
            let topology = numa::Topology::from_host()?;
            let cpus = numa::place_vcpus(&topology, &config.cpu_spec(), config.numa_node)?;
            (Some(topology), Some(cpus))
        } else {
            (None, None)
        };
        let mem = map_memory(config, topology.as_ref())?;
        let shared = Arc::new(Shared::new(
            usize::from(config.vcpus),
            BootTimings::new(start),
        ));
        let kvm = open_kvm()?;
        let vm_fd = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        register_memory(&vm_fd, &mem)?;

        let vcpu_fds = create_vcpus(&vm_fd, config.vcpus)?;
        let gic = gic::create_gic(&vm_fd, u32::from(config.vcpus), None)?;
        gic::finalize_gic(&gic)?;

        let AttachedDevices {
            mut mmio,
            subscribers,
            counters,
        } = virtio::attach(backends, &vm_fd, &mem)?;
        // The same slots virtio::attach used: layout::virtio_slot and virtio::slot agree
        // (a unit test checks it).
        let virtio_nodes = (0..counters.len())
            .map(|i| {
                layout::virtio_slot(i).map(|(base, size, spi)| VirtioMmioNode { base, size, spi })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let serial = add_uart(&vm_fd, &mut mmio, &shared, console)?;
        shared.timings.stamp(Phase::KvmReady);

        let mpidrs: Vec<u64> = vcpu_fds.iter().map(|(_, m)| *m).collect();
        let boot = loader::load(
            &mem,
            &Payload {
                image: &guest.image,
                mem_bytes: config.mem_mib << 20,
                page_size: layout::host_page_size(),
                cmdline: &guest.cmdline,
                initrd: guest.initrd.as_deref(),
                mpidrs: &mpidrs,
                gic: gic.version,
                virtio: &virtio_nodes,
            },
        )?;
        if let Some((fd, _)) = vcpu_fds.first() {
            regs::set_boot_regs(fd, boot.entry, boot.fdt_addr)?;
        }
        let mmio = Arc::new(mmio);
        let pio = Arc::new(Bus::new());
        let vcpus = vcpu_fds
            .into_iter()
            .enumerate()
            .map(|(i, (fd, _))| VcpuThread {
                id: i as u8,
                cpus: vcpu_cpus.as_ref().and_then(|sets| sets.get(i).cloned()),
                fd,
                pio: pio.clone(),
                mmio: mmio.clone(),
                mem: mem.clone(),
                shared: shared.clone(),
                seccomp: None,
                seccomp_selftest: false,
            })
            .collect();
        shared.timings.stamp(Phase::GuestLoaded);
        let summary = BootSummary {
            image: guest.name,
            format: ImageFormat::Arm64Image.to_string(),
            kind: guest.image.kind().to_string(),
            protocol: format!("linux-arm64 ({})", gic.version),
            entry: boot.entry,
            mem_mib: config.mem_mib,
            vcpus: config.vcpus,
        };
        Ok(Vm {
            shared,
            vcpus,
            vm_fd,
            _gic: gic,
            _kvm: kvm,
            serial,
            summary,
            seccomp: config.seccomp,
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
            Some(Arc::new(seccomp::compile(ThreadKind::Vcpu)?))
        } else {
            None
        };
        let event_loop = self.start_event_loop()?;
        for vcpu in &mut self.vcpus {
            vcpu.seccomp = filter.clone();
        }
        let mut threads = Vec::with_capacity(self.vcpus.len());
        for vcpu in self.vcpus {
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id))
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
            shared: self.shared,
            threads,
            _vm_fd: self.vm_fd,
            _gic: self._gic,
            _kvm: self._kvm,
            serial: self.serial,
            summary: self.summary,
            event_loop,
            virtio_counters: self.virtio_counters,
        })
    }

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
        let on_start = Box::new(move || {
            if let Some(program) = &program {
                seccomp::apply(ThreadKind::EventLoop, program).map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        Ok(Some(EventLoop::spawn(subscribers, on_start)?))
    }
}

/// A running VM.
pub struct VmHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    _vm_fd: VmFd,
    _gic: Gic,
    _kvm: Kvm,
    serial: Arc<Mutex<Pl011>>,
    summary: BootSummary,
    event_loop: Option<EventLoop>,
    virtio_counters: VirtioCounterList,
}

impl VmHandle {
    /// Current state.
    pub fn state(&self) -> VmState {
        self.shared.state()
    }

    /// Parks every vCPU; returns once they are all parked. False if the VM had exited.
    pub fn pause(&self) -> bool {
        self.shared.pause()
    }

    /// Lets the vCPUs run again. False if the VM had exited.
    pub fn resume(&self) -> bool {
        self.shared.resume()
    }

    /// Stops the VM (reason `stopped`); `wait` then returns promptly.
    pub fn stop(&self) {
        self.shared.finish(ExitReason::Stopped);
    }

    /// Boot phases so far.
    pub fn timings(&self) -> TimingsReport {
        self.shared.timings.snapshot()
    }

    /// A cloneable sender for the guest's serial input, usable from another thread.
    pub fn serial_sender(&self) -> SerialInput {
        SerialInput {
            serial: self.serial.clone(),
            shared: self.shared.clone(),
        }
    }

    /// A cloneable way to stop the VM from another thread.
    pub fn stopper(&self) -> VmStopper {
        VmStopper(self.shared.clone())
    }

    /// A cloneable controller for another thread (e.g. a control socket).
    pub fn control(&self) -> VmControl {
        VmControl {
            shared: self.shared.clone(),
            summary: self.summary.clone(),
            virtio_counters: self.virtio_counters.clone(),
        }
    }

    /// Waits for the VM to end, joins its threads and reports.
    pub fn wait(mut self) -> ExitReport {
        let exit = self.shared.wait_exit();
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
        if let Some(mut event_loop) = self.event_loop.take() {
            event_loop.stop();
        }
        let serial = self
            .serial
            .lock()
            .map(|s| s.counters().snapshot())
            .unwrap_or_default();
        let mut devices = BTreeMap::new();
        devices.insert("serial", serial);
        ExitReport {
            exit_code: exit.exit_code(),
            message: exit.to_string(),
            exit,
            timings: self.shared.timings.snapshot(),
            boot: self.summary.clone(),
            counters: self.shared.counters.snapshot(),
            devices,
            serial_bytes: serial.bytes_out,
            virtio: virtio_snapshot(&self.virtio_counters),
        }
    }
}

impl Drop for VmHandle {
    /// A handle dropped without `wait` stops its VM and joins the vCPU threads.
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
    serial: Arc<Mutex<Pl011>>,
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
                Ok(mut serial) => serial.enqueue_input(bytes),
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

/// Format and kind of an image, without booting it. On aarch64 only arm64 Images boot, with
/// the Linux arm64 protocol (reported as `linux64`).
pub fn inspect(path: &Path) -> Result<(ImageFormat, ImageKind, Vec<BootProtocol>), VmError> {
    let image = Arm64Image::from_file(path)?;
    Ok((
        ImageFormat::Arm64Image,
        image.kind(),
        vec![BootProtocol::Linux64],
    ))
}
