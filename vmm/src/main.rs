//! `edgevisor`: boot a kernel on KVM from the command line.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use images::BootProtocol;
use vmm::device_config::{DiskConfig, NetOption, VsockConfig};
use vmm::seccomp::{self, ThreadKind};
use vmm::{KernelSource, Vm, VmConfig, VmError};

/// Exit code for bad input or setup errors (docs/GUEST_INTERFACE.md).
const EXIT_SETUP_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "edgevisor",
    version,
    about = "A lean KVM hypervisor for edge nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest and wait for it to end (the built-in boot probe when no --kernel is given).
    Run(Box<RunArgs>),
    /// Tell what kind of kernel image a file is and how it can boot.
    Inspect {
        /// The image file.
        image: PathBuf,
    },
    /// Show the host's NUMA nodes, their CPUs, memory, distances and hugepage pools, and its
    /// SR-IOV physical functions with their VFs.
    Node {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Where `sys/` is for the SR-IOV listing (a recorded tree in tests).
        #[arg(long, hide = true, default_value = "/")]
        sysfs_root: PathBuf,
    },
    /// SR-IOV helpers: create VFs, give a VF a MAC and VLAN, bind a function to vfio-pci.
    Sriov {
        #[command(subcommand)]
        action: SriovAction,
        /// Print what would be written or run, and do nothing.
        #[arg(long, global = true)]
        dry_run: bool,
        /// Where `sys/` is (a recorded tree in tests).
        #[arg(long, global = true, hide = true, default_value = "/")]
        sysfs_root: PathBuf,
    },
    /// Write the built-in firmware guests to a directory.
    Firmware {
        /// Directory to write linux64.elf, pvh.elf, multiboot.elf and bzimage.bin into.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum SriovAction {
    /// Give a PF COUNT VFs (0 removes them); a non-zero count is changed through 0.
    Vfs {
        /// The PF's PCI address, e.g. 0000:3b:00.0.
        pf: String,
        /// How many VFs it should have.
        count: u32,
    },
    /// Give VF number VF of a PF a MAC address and a port VLAN (none: untagged), with
    /// `ip link set dev PF vf VF mac MAC vlan V`.
    Mac {
        /// The PF's PCI address.
        pf: String,
        /// The VF number on that PF (0 for its first VF).
        vf: u32,
        /// The MAC address, e.g. 02:00:00:00:00:01.
        mac: String,
        /// A port VLAN, 1 to 4094.
        #[arg(long)]
        vlan: Option<u16>,
    },
    /// Bind a PCI function to vfio-pci (driver_override, unbind, drivers_probe), then check
    /// that VFIO can use it.
    BindVfio {
        /// The function's PCI address.
        bdf: String,
    },
    /// Check that a PCI function can be passed through with VFIO: an IOMMU group, bound to
    /// vfio-pci, and a viable group.
    Check {
        /// The function's PCI address.
        bdf: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kernel image: ELF vmlinux, bzImage, PVH ELF or multiboot ELF32.
    #[arg(long, conflicts_with = "config")]
    kernel: Option<PathBuf>,
    /// Initramfs to hand the guest.
    #[arg(long, conflicts_with = "config")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, conflicts_with = "config")]
    cmdline: Option<String>,
    /// Guest memory: SIZE[,hugepages=none|2M|1G][,node=N][,prefault=on][,shared=on]
    /// (default 64M; SIZE in MiB, or with K/M/G).
    #[arg(long, conflicts_with = "config")]
    mem: Option<String>,
    /// Number of vCPUs (default 1).
    #[arg(long, conflicts_with_all = ["config", "cpus"])]
    vcpus: Option<u64>,
    /// vCPUs and their host CPUs: N[,pin=LIST], e.g. 2,pin=4-5 (vCPU 0 on CPU 4, vCPU 1 on 5).
    #[arg(long, conflicts_with = "config")]
    cpus: Option<String>,
    /// Force a boot protocol: linux64, pvh or multiboot (default: the image's preferred one).
    #[arg(long, conflicts_with = "config")]
    boot_protocol: Option<BootProtocol>,
    /// A virtio-blk disk: path=FILE[,readonly=on][,cache=writeback|unsafe]; repeatable.
    #[arg(long, conflicts_with = "config")]
    disk: Vec<String>,
    /// A virtio-net card on a TAP device: tap=NAME[,mac=MAC]; repeatable. A missing TAP is
    /// created, and removed again when the VM ends. Or on a vhost-user back end (DPDK
    /// testpmd, OVS-DPDK): vhost-user=SOCKET[,mode=client|server][,queues=1][,mac=MAC], which
    /// needs --mem SIZE,shared=on; such cards come after the TAP cards.
    #[arg(long, conflicts_with = "config")]
    net: Vec<String>,
    /// A virtio-vsock device: cid=N,uds=PATH (Firecracker's hybrid Unix-socket model).
    #[arg(long, conflicts_with = "config")]
    vsock: Option<String>,
    /// A virtio-rng device fed from the host's getrandom.
    #[arg(long, conflicts_with = "config")]
    rng: bool,
    /// A PCI function passed through with VFIO: vfio=BDF (DDDD:BB:DD.F or BB:DD.F), bound to
    /// vfio-pci in a viable IOMMU group; repeatable. The guest gets a PCI bus (ports
    /// 0xCF8/0xCFC) with the function's BARs in 0xc0000000-0xd0000000 and MSI/MSI-X.
    #[arg(long, conflicts_with = "config")]
    device: Vec<String>,
    /// Give the guest a PCI bus with only its host bridge (for tests of the bus).
    #[arg(long, hide = true, conflicts_with = "config")]
    pci_bus: bool,
    /// A Firecracker --config-file JSON document (boot-source, machine-config, drives,
    /// network-interfaces, vsock, entropy).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the boot phases measured by the VMM when the guest ends.
    #[arg(long)]
    timings: bool,
    /// Write a JSON exit report (reason, code, timings, counters) to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Run without seccomp filters (for debugging; by default each vCPU thread and the main
    /// thread allow only the syscalls they need).
    #[arg(long)]
    no_seccomp: bool,
    /// Serve a per-VM control socket at this path (HTTP/1.1 over a Unix stream: GET /state,
    /// PUT /pause, /resume, /stop; see vmm::api). Removed when the VM ends.
    #[arg(long)]
    api_socket: Option<PathBuf>,
}

fn build_config(args: &RunArgs) -> Result<VmConfig, VmError> {
    if let Some(path) = &args.config {
        let mut config = VmConfig::from_firecracker_file(path)?;
        config.seccomp = !args.no_seccomp;
        return Ok(config);
    }
    let mut config = VmConfig {
        seccomp: !args.no_seccomp,
        ..VmConfig::default()
    };
    if let Some(k) = &args.kernel {
        config.kernel = KernelSource::Path(k.clone());
    }
    config.initrd = args.initrd.clone();
    if let Some(c) = &args.cmdline {
        config.cmdline = c.clone();
    }
    if let Some(m) = &args.mem {
        let spec = numa::MemorySpec::parse(m).map_err(vmm::config::ConfigError::from)?;
        config.set_memory(&spec);
    }
    let bad_count = |v: u64| vmm::config::ConfigError::BadVcpus(v);
    if let Some(v) = args.vcpus {
        config.vcpus = u8::try_from(v).map_err(|_| bad_count(v))?;
    }
    if let Some(c) = &args.cpus {
        let spec = numa::CpuSpec::parse(c).map_err(vmm::config::ConfigError::from)?;
        config.vcpus = u8::try_from(spec.count).map_err(|_| bad_count(spec.count as u64))?;
        config.pin = spec.pin;
    }
    config.boot_protocol = args.boot_protocol;
    let device_err = vmm::config::ConfigError::from;
    for disk in &args.disk {
        config
            .disks
            .push(DiskConfig::parse(disk).map_err(device_err)?);
    }
    for net in &args.net {
        match NetOption::parse(net).map_err(device_err)? {
            NetOption::Tap(tap) => config.nets.push(tap),
            NetOption::VhostUser(vhost) => config.vhost_user_nets.push(vhost),
        }
    }
    if let Some(vsock) = &args.vsock {
        config.vsock = Some(VsockConfig::parse(vsock).map_err(device_err)?);
    }
    config.rng = args.rng;
    for device in &args.device {
        config
            .vfio
            .push(vmm::device_config::parse_device(device).map_err(device_err)?);
    }
    config.pci = args.pci_bus;
    // Vm::new validates the config before creating anything.
    Ok(config)
}

/// Blocks SIGINT/SIGTERM/SIGHUP in every thread and stops the VM when one arrives.
fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local, zero-initialised set; pthread_sigmask with a
    // valid set pointer.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn run(args: RunArgs, start: Instant) -> Result<u8, VmError> {
    let config = build_config(&args)?;
    let signals = block_termination_signals();
    // Bound before the VM is built, so a bad path boots nothing.
    let api = args
        .api_socket
        .as_deref()
        .map(vmm::api::ApiServer::bind)
        .transpose()
        .map_err(api_error)?;
    let vm = Vm::new(&config, Box::new(std::io::stdout()), start)?;
    let summary = vm.summary().clone();
    eprintln!(
        "edgevisor: booting {} ({}, {}) via {} with {} MiB, {} vCPU(s)",
        summary.image,
        summary.kind,
        summary.format,
        summary.protocol,
        summary.mem_mib,
        summary.vcpus
    );
    // Compiled before the boot so that a bad filter boots nothing; installed once the VM
    // runs, before the helper threads below, which inherit it.
    let main_filter = config
        .seccomp
        .then(|| seccomp::compile(ThreadKind::Main))
        .transpose()?;
    let handle = vm.start()?;
    // Spawned before the main filter, which it would otherwise inherit; it installs its own.
    let api_thread = api
        .map(|server| server.spawn(handle.control(), config.seccomp))
        .transpose()
        .map_err(api_error)?;
    if let Some(program) = &main_filter {
        seccomp::apply(ThreadKind::Main, program)?;
    }
    if seccomp::selftest_requested(ThreadKind::Main) {
        seccomp::run_selftest(ThreadKind::Main);
    }

    let stopper = handle.stopper();
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `signals` is a valid set and `sig` a valid out pointer.
        if unsafe { libc::sigwait(&signals, &mut sig) } == 0 {
            stopper.stop();
        }
    });
    forward_stdin(&handle);

    let report = handle.wait();
    if args.timings {
        eprintln!("edgevisor: {}", report.timings);
    }
    eprintln!(
        "edgevisor: guest exited: {} (exit code {})",
        report.message, report.exit_code
    );
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!(
                "edgevisor: warning: cannot write the report to {}: {e}",
                path.display()
            );
        }
    }
    if let Some(thread) = api_thread {
        thread.shutdown();
    }
    Ok(report.exit_code.clamp(0, 255) as u8)
}

fn api_error(e: vmm::api::ApiError) -> VmError {
    VmError::Device {
        what: "control socket",
        detail: e.to_string(),
    }
}

/// Feeds our stdin to the guest's serial port from a helper thread.
fn forward_stdin(handle: &vmm::VmHandle) {
    let input = handle.serial_sender();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || !input.send(&buf[..n]) {
                break;
            }
        }
    });
}

fn inspect(image: PathBuf) -> Result<u8, VmError> {
    let (format, kind, protocols) = vmm::vm::inspect(&image)?;
    let names: Vec<String> = protocols.iter().map(|p| p.to_string()).collect();
    println!("image:     {}", image.display());
    println!("format:    {format}");
    println!("kind:      {kind}");
    let default = names.first().map(String::as_str).unwrap_or("none");
    println!("protocols: {} (default {default})", names.join(", "));
    Ok(0)
}

fn show_node(json: bool, sysfs_root: &Path) -> Result<u8, String> {
    use net_dpdk::sriov::Inventory;
    let topology = numa::Topology::from_host().map_err(|e| e.to_string())?;
    // A host (or container) without a PCI bus in sysfs has no SR-IOV to show.
    let sriov = if sysfs_root.join("sys/bus/pci/devices").is_dir() {
        Some(Inventory::from_sysfs(sysfs_root).map_err(|e| e.to_string())?)
    } else {
        None
    };
    if json {
        let mut doc = serde_json::to_value(&topology).map_err(|e| e.to_string())?;
        doc["sriov"] = serde_json::to_value(&sriov).map_err(|e| e.to_string())?;
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(0);
    }
    println!("{topology}");
    let Some(inventory) = sriov else {
        println!(
            "SR-IOV: no PCI bus under {}",
            sysfs_root.join("sys").display()
        );
        return Ok(0);
    };
    if inventory.physical_functions.is_empty() {
        println!("SR-IOV: no physical functions");
    }
    let describe = |f: &net_dpdk::sriov::PciFunction| {
        let opt = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        format!(
            "{:04x}:{:04x} driver {} numa {} iommu group {}{}",
            f.vendor,
            f.device,
            f.driver.as_deref().unwrap_or("none"),
            opt(f.numa_node),
            opt(f.iommu_group),
            if f.net_interfaces.is_empty() {
                String::new()
            } else {
                format!(" net {}", f.net_interfaces.join(","))
            }
        )
    };
    for pf in &inventory.physical_functions {
        println!(
            "SR-IOV PF {} {} VFs {}/{}",
            pf.function.bdf,
            describe(&pf.function),
            pf.num_vfs,
            pf.total_vfs
        );
        for vf in &pf.vfs {
            println!(
                "  VF {} {} {}",
                vf.index,
                vf.function.bdf,
                describe(&vf.function)
            );
        }
    }
    Ok(0)
}

fn sriov(action: SriovAction, dry_run: bool, root: &Path) -> Result<u8, String> {
    use net_dpdk::sriov::{self as s, Bdf, MacAddress};
    let bdf = |text: &str| text.parse::<Bdf>().map_err(|e| e.to_string());
    let show = |writes: &[s::SysfsWrite]| {
        let verb = if dry_run { "would write" } else { "wrote" };
        for w in writes {
            println!("{verb} {} to {}", w.value, w.path.display());
        }
        if writes.is_empty() {
            println!("nothing to change");
        }
    };
    match action {
        SriovAction::Vfs { pf, count } => {
            let pf = bdf(&pf)?;
            let writes = if dry_run {
                s::plan_num_vfs(root, &pf, count)
            } else {
                s::set_num_vfs(root, &pf, count)
            }
            .map_err(|e| e.to_string())?;
            show(&writes);
            Ok(0)
        }
        SriovAction::Mac { pf, vf, mac, vlan } => {
            let pf = bdf(&pf)?;
            let mac: MacAddress = mac.parse().map_err(|e: s::SriovError| e.to_string())?;
            let function = s::read_physical_function(root, &pf).map_err(|e| e.to_string())?;
            if vf >= function.num_vfs {
                return Err(format!(
                    "{pf} has {} VFs, so there is no VF {vf}: create it first with `edgevisor sriov vfs {pf} {}`",
                    function.num_vfs,
                    vf + 1
                ));
            }
            let ifname = function.function.net_interfaces.first().ok_or_else(|| {
                format!("{pf} has no network interface (is its driver bound?): the VF's MAC is set through the PF's interface")
            })?;
            let command = s::set_vf_mac_vlan(ifname, vf, mac, vlan).map_err(|e| e.to_string())?;
            if dry_run {
                println!("would run {}", command.argv().join(" "));
            } else {
                command.run().map_err(|e| e.to_string())?;
                println!("ran {}", command.argv().join(" "));
            }
            Ok(0)
        }
        SriovAction::BindVfio { bdf: text } => {
            let target = bdf(&text)?;
            let writes = if dry_run {
                s::plan_bind_vfio(root, &target)
            } else {
                s::bind_vfio(root, &target)
            }
            .map_err(|e| e.to_string())?;
            show(&writes);
            if dry_run {
                return Ok(0);
            }
            // Whether vfio-pci took it is the kernel's answer, read back from sysfs.
            let group = s::check_vfio_ready(root, &target).map_err(|e| {
                format!("after the writes, the kernel has not made {target} usable by VFIO: {e}")
            })?;
            println!("{target} is on vfio-pci in viable IOMMU group {group}: /dev/vfio/{group}");
            Ok(0)
        }
        SriovAction::Check { bdf: text } => {
            let target = bdf(&text)?;
            let group = s::check_vfio_ready(root, &target).map_err(|e| e.to_string())?;
            println!("{target} is on vfio-pci in viable IOMMU group {group}: /dev/vfio/{group}");
            Ok(0)
        }
    }
}

fn export_firmware(dir: PathBuf) -> Result<u8, String> {
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    for (name, bytes) in firmware::all() {
        let file = match *name {
            "bzimage" => "bzimage.bin".to_string(),
            other => format!("{other}.elf"),
        };
        let path = dir.join(file);
        std::fs::write(&path, bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(0)
}

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args, start).map_err(|e| e.to_string()),
        Command::Inspect { image } => inspect(image).map_err(|e| e.to_string()),
        Command::Node { json, sysfs_root } => show_node(json, &sysfs_root),
        Command::Sriov {
            action,
            dry_run,
            sysfs_root,
        } => sriov(action, dry_run, &sysfs_root),
        Command::Firmware { dir } => export_firmware(dir),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("edgevisor: error: {msg}");
            ExitCode::from(EXIT_SETUP_ERROR)
        }
    }
}
