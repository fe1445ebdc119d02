//! `edgevisor-bench io`: virtio-blk and virtio-net throughput of the same guest under
//! edgevisor and under QEMU microvm (virtio-mmio devices), interleaved run by run.
//!
//! The guest is the firmware probe with its benchmark workloads (firmware/src/virtio/bench.c):
//! - `probe.blkbench=MiB,req=1024,iops=N`: sequential reads then writes of MiB in 1 MiB
//!   requests, then N random 4 KiB reads, 4 requests in flight, on a raw image in the page
//!   cache (1 MiB requests put the copying in the VMM and host kernel ahead of the guest's
//!   per-request instructions; the 4 KiB reads are the opposite);
//! - `probe.netbench=N`: N frames of 1514 bytes, then N of 64 bytes, sent on the TX queue
//!   with the whole ring in use, into a TAP in a network namespace the bench creates (or,
//!   with `--vhost-user`, into dpdk-testpmd in rxonly mode over vhost-user);
//! - `probe.spin=N`: a register-only loop, which gives the guest's instruction rate, and
//!   1000 reads of a virtio-mmio register, which give the cost of one MMIO exit.
//!
//! The guest polls its used rings (interrupts suppressed) and times every pass with the TSC
//! from its first submission to its last completion; the figures are computed from the
//! probe's `ticks=` and the TSC frequency it prints (`probe: cpuid tsc_khz=`). So they cover
//! the device path in the VMM and the host kernel, plus the guest driver's own instructions,
//! and not the VMM's start-up. On a host whose KVM emulates guest instructions (PVM), the
//! driver's instructions are slow and bound every figure; the instruction-rate row shows how
//! slow, and is the same for both VMMs.
//!
//! Every frame is checked after the runs: the TAP's receive counter (and testpmd's port
//! counter) must have grown by exactly the frames the guests reported sending.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::BenchError;
use crate::measure::measure;
use crate::report::Figure;
use crate::stats::ratio;
use crate::systems::{qemu_base_argv, GuestFile, System, EXPECTED_EXIT_CODE};

/// Guest RAM: the probe's block buffers sit at 8-16 MiB.
pub const IO_GUEST_MEM_MIB: u64 = 64;
/// The disk image: at least the MiB read, and room for the random reads.
const DISK_MIB: u64 = 256;
/// QEMU microvm as in the boot bench, but with `auto-kernel-cmdline=on`, so QEMU appends the
/// `virtio_mmio.device=` words of the transports it populated.
const QEMU_IO_MACHINE: &str = "microvm,x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on,\
acpi=off,pcie=off,usb=off,smm=off,ioapic2=off,graphics=off,auto-kernel-cmdline=on";
/// The TAP both VMMs attach to inside the bench's network namespace.
const TAP: &str = "evbench0";
/// 2 MiB pages testpmd needs with `--total-num-mbufs=16384` and one vhost port, with room.
const TESTPMD_PAGES: u64 = 64;

/// How a guest's frames leave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetPath {
    /// virtio-net over a TAP (QEMU: `-netdev tap,vhost=off`, as edgevisor has no vhost-net).
    Tap,
    /// vhost-user into dpdk-testpmd (guest memory shared with it).
    VhostUser,
}

impl NetPath {
    fn label(self) -> &'static str {
        match self {
            NetPath::Tap => "TAP",
            NetPath::VhostUser => "vhost-user/testpmd",
        }
    }
}

/// One system with one network path: the unit that is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Setup {
    /// Which VMM.
    pub system: System,
    /// Where its frames go.
    pub net: NetPath,
}

/// A measured quantity, as the guest reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Sequential 1 MiB reads, MiB/s.
    BlkReadMibS,
    /// Sequential 1 MiB writes, MiB/s.
    BlkWriteMibS,
    /// Random 4 KiB reads per second.
    BlkRandReadIops,
    /// 1514-byte frames sent per second.
    NetTxLargeFps,
    /// 1514-byte frames as megabits per second (frame bytes, no virtio header).
    NetTxLargeMbitS,
    /// 64-byte frames sent per second.
    NetTxSmallFps,
    /// Guest instructions per second in a register-only loop, millions.
    GuestMips,
    /// One guest read of a virtio-mmio register, round trip through the VMM, microseconds.
    MmioExitUs,
}

impl Metric {
    /// Every metric, in table order.
    pub const ALL: [Metric; 8] = [
        Metric::BlkReadMibS,
        Metric::BlkWriteMibS,
        Metric::BlkRandReadIops,
        Metric::NetTxLargeFps,
        Metric::NetTxLargeMbitS,
        Metric::NetTxSmallFps,
        Metric::GuestMips,
        Metric::MmioExitUs,
    ];

    fn label(self) -> &'static str {
        match self {
            Metric::BlkReadMibS => "blk seq read 1M (MiB/s)",
            Metric::BlkWriteMibS => "blk seq write 1M (MiB/s)",
            Metric::BlkRandReadIops => "blk rand read 4K (IOPS)",
            Metric::NetTxLargeFps => "net tx 1514 B (frames/s)",
            Metric::NetTxLargeMbitS => "net tx 1514 B (Mbit/s)",
            Metric::NetTxSmallFps => "net tx 64 B (frames/s)",
            Metric::GuestMips => "guest insns (M/s)",
            Metric::MmioExitUs => "MMIO exit (us, lower=better)",
        }
    }

    fn is_net(self) -> bool {
        matches!(
            self,
            Metric::NetTxLargeFps | Metric::NetTxLargeMbitS | Metric::NetTxSmallFps
        )
    }
}

/// What one run measured, and how many frames the guest says it sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// The figures the run's output gave.
    pub values: BTreeMap<Metric, f64>,
    /// Frames sent, summed over the netbench lines.
    pub frames_sent: u64,
}

/// The value of `key=` among the words of `line`.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Reads the probe's benchmark lines out of a run's serial output.
pub fn parse_probe_output(stdout: &str) -> Result<Sample, String> {
    let khz = stdout
        .lines()
        .find(|l| l.starts_with("probe: cpuid "))
        .and_then(|l| field(l, "tsc_khz"))
        .filter(|&k| k > 0)
        .ok_or("the probe printed no TSC frequency (`probe: cpuid tsc_khz=`)")?;
    let secs = |ticks: u64| ticks as f64 / (khz as f64 * 1000.0);
    let mut sample = Sample::default();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("probe: ") else {
            continue;
        };
        let need = |key: &str| {
            field(rest, key).ok_or_else(|| format!("`{key}=` missing or bad in {line:?}"))
        };
        let word = rest.split_whitespace().take(2).collect::<Vec<_>>();
        match word.as_slice() {
            ["blkbench", pass] => {
                let t = secs(need("ticks")?);
                let (metric, value) = match *pass {
                    "read" => (Metric::BlkReadMibS, need("bytes")? as f64 / 1048576.0 / t),
                    "write" => (Metric::BlkWriteMibS, need("bytes")? as f64 / 1048576.0 / t),
                    "iops" => (Metric::BlkRandReadIops, need("reqs")? as f64 / t),
                    other => return Err(format!("unknown blkbench pass {other:?}")),
                };
                sample.values.insert(metric, value);
            }
            ["netbench", "tx"] => {
                let (frames, len, t) = (need("frames")?, need("len")?, secs(need("ticks")?));
                sample.frames_sent += frames;
                if len == 64 {
                    sample
                        .values
                        .insert(Metric::NetTxSmallFps, frames as f64 / t);
                } else {
                    sample
                        .values
                        .insert(Metric::NetTxLargeFps, frames as f64 / t);
                    let mbit = need("bytes")? as f64 * 8.0 / t / 1e6;
                    sample.values.insert(Metric::NetTxLargeMbitS, mbit);
                }
            }
            ["spin", _] => {
                let insns = need("iters")? * need("insns_per_iter")?;
                sample
                    .values
                    .insert(Metric::GuestMips, insns as f64 / secs(need("ticks")?) / 1e6);
            }
            ["mmio", _] => {
                let us = secs(need("ticks")?) * 1e6 / need("reads")? as f64;
                sample.values.insert(Metric::MmioExitUs, us);
            }
            _ => {}
        }
    }
    Ok(sample)
}

/// What to run.
#[derive(Debug, Clone)]
pub struct IoOptions {
    /// Measured runs per setup.
    pub runs: usize,
    /// Run only this system (no ratios then).
    pub only: Option<System>,
    /// The edgevisor binary.
    pub edgevisor: PathBuf,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Frames per netbench pass.
    pub frames: u64,
    /// MiB per sequential block pass.
    pub blk_mib: u64,
    /// Random 4 KiB reads.
    pub iops: u64,
    /// Iterations of the register loop.
    pub spin: u64,
    /// Also run the net workload over vhost-user into dpdk-testpmd.
    pub vhost_user: bool,
    /// A run still going after this long is killed and fails.
    pub timeout: Duration,
}

/// One setup's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SetupResult {
    /// Which setup.
    pub setup: Setup,
    /// The command line of its runs (the last one).
    pub command: Vec<String>,
    /// Each metric's samples and summary.
    pub figures: BTreeMap<Metric, Figure>,
}

/// One table row: a metric on one network path, per system, and the ratio.
#[derive(Debug, Clone, Serialize)]
pub struct IoRow {
    /// Which metric.
    pub metric: Metric,
    /// The network path, for net metrics.
    pub net: Option<NetPath>,
    /// edgevisor's median.
    pub edgevisor: Option<f64>,
    /// QEMU's median.
    pub qemu: Option<f64>,
    /// edgevisor / QEMU.
    pub ratio: Option<f64>,
}

/// Everything `edgevisor-bench io` found.
#[derive(Debug, Clone, Serialize)]
pub struct IoReport {
    /// Measured runs per setup.
    pub runs: usize,
    /// The workload sizes.
    pub frames: u64,
    /// MiB per sequential block pass.
    pub blk_mib: u64,
    /// Random reads.
    pub iops: u64,
    /// `qemu-system-x86_64 --version`, when QEMU took part.
    pub qemu_version: Option<String>,
    /// Per setup.
    pub setups: Vec<SetupResult>,
    /// The table.
    pub rows: Vec<IoRow>,
    /// Frames the TAP's receive counter gained, and frames the guests reported sending.
    pub tap_frames_counted: (u64, u64),
    /// The same for testpmd's port, with `--vhost-user`.
    pub testpmd_frames_counted: Option<(u64, u64)>,
    /// edgevisor's vhost-user median over its TAP median, per net metric, with `--vhost-user`.
    pub edgevisor_vhost_user_over_tap: BTreeMap<Metric, f64>,
}

/// A network namespace with one TAP, up; deleted on drop.
struct Netns(String);

impl Netns {
    fn create() -> Result<Netns, BenchError> {
        let ns = Netns(format!("edgevisor-bench-{}", std::process::id()));
        let _ = Command::new("ip")
            .args(["netns", "del", &ns.0])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &ns.0])?;
        ip(&["-n", &ns.0, "tuntap", "add", "dev", TAP, "mode", "tap"])?;
        ip(&["-n", &ns.0, "link", "set", TAP, "up"])?;
        Ok(ns)
    }

    fn rx_packets(&self) -> Result<u64, BenchError> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "cat"])
            .arg(format!("/sys/class/net/{TAP}/statistics/rx_packets"))
            .output()
            .map_err(|source| BenchError::Spawn {
                program: "ip".into(),
                source,
            })?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| BenchError::Setup {
                what: format!("read the receive counter of {TAP} in {}", self.0),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> Result<(), BenchError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| BenchError::Spawn {
            program: "ip".into(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(BenchError::Setup {
        what: format!("ip {}", args.join(" ")),
        detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// dpdk-testpmd with one vhost-user port in rxonly mode; killed on drop.
struct Testpmd {
    child: Child,
    stdin: ChildStdin,
    log: PathBuf,
    socket: PathBuf,
}

impl Testpmd {
    fn start(dir: &Path) -> Result<Testpmd, BenchError> {
        let socket = dir.join("testpmd.sock");
        let log = dir.join("testpmd.log");
        let out = std::fs::File::create(&log).map_err(|source| BenchError::TempDir {
            path: log.clone(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| BenchError::TempDir {
            path: log.clone(),
            source,
        })?;
        let mut child = Command::new("stdbuf")
            .args(["-oL", "-eL", "dpdk-testpmd", "-l", "0-1", "--no-pci"])
            .arg("--in-memory")
            .arg(format!(
                "--file-prefix=edgevisor-bench-{}",
                std::process::id()
            ))
            .arg("--vdev")
            .arg(format!("net_vhost0,iface={},queues=1", socket.display()))
            .args([
                "--",
                "-i",
                "--total-num-mbufs=16384",
                "--forward-mode=rxonly",
            ])
            .arg("--auto-start")
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| BenchError::Spawn {
                program: "dpdk-testpmd (package dpdk-dev)".into(),
                source,
            })?;
        let stdin = child.stdin.take().expect("stdin was piped");
        let pmd = Testpmd {
            child,
            stdin,
            log,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pmd.socket.exists() {
            if Instant::now() > deadline {
                return Err(BenchError::Setup {
                    what: "start dpdk-testpmd".into(),
                    detail: format!("no socket after 30 s; its log: {}", pmd.log_tail()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pmd)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// Port 0's RX-packets, from `show port stats 0`.
    fn rx_packets(&mut self) -> Result<u64, BenchError> {
        let before = std::fs::read_to_string(&self.log).unwrap_or_default().len();
        let _ = writeln!(self.stdin, "show port stats 0");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let new = text.get(before..).unwrap_or("");
            let found = BufReader::new(new.as_bytes())
                .lines()
                .map_while(Result::ok)
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("RX-packets:")
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                });
            if let Some(n) = found {
                return Ok(n);
            }
            if Instant::now() > deadline {
                return Err(BenchError::Setup {
                    what: "read testpmd's port counters".into(),
                    detail: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guest command line of one run.
fn probe_cmdline(options: &IoOptions, net: NetPath) -> String {
    let mut words = vec![format!("probe.netbench={}", options.frames)];
    if net == NetPath::Tap {
        words.push(format!(
            "probe.blkbench={},req=1024,iops={}",
            options.blk_mib, options.iops
        ));
        words.push(format!("probe.spin={}", options.spin));
    }
    words.push("probe.exit=debug=0".into());
    words.join(" ")
}

/// The command line of one run of `setup`.
pub fn io_argv(
    options: &IoOptions,
    setup: Setup,
    kernel: &Path,
    disk: &Path,
    netns: &str,
    socket: &Path,
) -> Vec<OsString> {
    let mut argv: Vec<OsString> = Vec::new();
    if setup.net == NetPath::Tap {
        argv.extend(["ip", "netns", "exec", netns].map(OsString::from));
    }
    let cmdline = probe_cmdline(options, setup.net);
    let mem = format!("{IO_GUEST_MEM_MIB}M");
    match setup.system {
        System::Edgevisor => {
            argv.push(options.edgevisor.clone().into());
            argv.extend(["run", "--kernel"].map(OsString::from));
            argv.push(kernel.into());
            argv.push("--cmdline".into());
            argv.push(cmdline.into());
            match setup.net {
                NetPath::Tap => {
                    argv.extend(["--mem".into(), mem.into(), "--disk".into()]);
                    argv.push(format!("path={}", disk.display()).into());
                    argv.extend(["--net".into(), format!("tap={TAP}").into()]);
                }
                NetPath::VhostUser => {
                    argv.extend(["--mem".into(), format!("{mem},shared=on").into()]);
                    argv.push("--net".into());
                    argv.push(format!("vhost-user={}", socket.display()).into());
                }
            }
        }
        System::Qemu => {
            argv.extend(qemu_base_argv(&options.qemu, QEMU_IO_MACHINE));
            argv.extend(["-global", "virtio-mmio.force-legacy=false"].map(OsString::from));
            match setup.net {
                NetPath::Tap => {
                    argv.extend(["-m".into(), mem.into(), "-drive".into()]);
                    argv.push(format!("id=d0,file={},format=raw,if=none", disk.display()).into());
                    argv.extend(
                        [
                            "-device",
                            "virtio-blk-device,drive=d0",
                            "-netdev",
                            &format!("tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off"),
                        ]
                        .map(OsString::from),
                    );
                }
                NetPath::VhostUser => {
                    argv.extend(["-m".into(), mem.clone().into(), "-object".into()]);
                    argv.push(format!("memory-backend-memfd,id=mem0,size={mem},share=on").into());
                    argv.extend(["-machine".into(), "memory-backend=mem0".into()]);
                    argv.push("-chardev".into());
                    argv.push(format!("socket,id=c0,path={}", socket.display()).into());
                    argv.extend(["-netdev", "vhost-user,id=n0,chardev=c0"].map(OsString::from));
                }
            }
            argv.extend(["-device", "virtio-net-device,netdev=n0", "-kernel"].map(OsString::from));
            argv.push(kernel.into());
            argv.push("-append".into());
            argv.push(cmdline.into());
        }
    }
    argv
}

/// Writes the disk image once (every run reads it from the page cache).
fn write_disk(path: &Path) -> Result<(), BenchError> {
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + 3) as u8).collect();
    let mut file = std::fs::File::create(path).map_err(|source| BenchError::WriteGuest {
        path: path.to_path_buf(),
        source,
    })?;
    for _ in 0..DISK_MIB {
        file.write_all(&chunk)
            .map_err(|source| BenchError::WriteGuest {
                path: path.to_path_buf(),
                source,
            })?;
    }
    // On disk now, so the probe's flush check (an fsync) has nothing left to write back.
    file.sync_all().map_err(|source| BenchError::WriteGuest {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs every setup `options.runs` times, interleaved, plus one unmeasured warm-up each.
pub fn run_io(options: &IoOptions, progress: &mut dyn Write) -> Result<IoReport, BenchError> {
    if options.blk_mib > DISK_MIB {
        return Err(BenchError::Setup {
            what: "check the workload".into(),
            detail: format!("--blk-mib must be at most {DISK_MIB}"),
        });
    }
    let mut setups = Vec::new();
    for net in [NetPath::Tap, NetPath::VhostUser] {
        if net == NetPath::VhostUser && !options.vhost_user {
            continue;
        }
        for system in [System::Edgevisor, System::Qemu] {
            if options.only.is_none_or(|only| only == system) {
                setups.push(Setup { system, net });
            }
        }
    }
    let qemu_version = if options.only != Some(System::Edgevisor) {
        Some(crate::locate::qemu_version(&options.qemu)?)
    } else {
        None
    };
    let guest = GuestFile::write(crate::systems::Guest::Pvh)?;
    let dir = guest.kernel().parent().expect("in its dir").to_path_buf();
    let disk = dir.join("disk.img");
    write_disk(&disk)?;
    let netns = Netns::create()?;
    let (_pool, mut testpmd) = if options.vhost_user {
        let pool = crate::memory::Reservation::reserve(TESTPMD_PAGES)?;
        (Some(pool), Some(Testpmd::start(&dir)?))
    } else {
        (None, None)
    };
    let socket = dir.join("testpmd.sock");
    let tap_before = netns.rx_packets()?;
    let pmd_before = match testpmd.as_mut() {
        Some(pmd) => Some(pmd.rx_packets()?),
        None => None,
    };

    let mut samples: Vec<Vec<Sample>> = setups.iter().map(|_| Vec::new()).collect();
    let mut commands: Vec<Vec<String>> = setups.iter().map(|_| Vec::new()).collect();
    let (mut tap_sent, mut pmd_sent, mut failures) = (0u64, 0u64, 0usize);
    for round in 0..=options.runs {
        for (i, setup) in setups.iter().enumerate() {
            let argv = io_argv(options, *setup, guest.kernel(), &disk, &netns.0, &socket);
            let name = format!("{} {}", setup.system, setup.net.label());
            let outcome = measure(&argv, options.timeout)?;
            let stdout = String::from_utf8_lossy(&outcome.stdout);
            let parsed = if outcome.timed_out {
                Err("did not exit before the time limit and was killed".to_string())
            } else if outcome.status.code() != Some(EXPECTED_EXIT_CODE)
                || !stdout.contains("PROBE PASS")
            {
                let tail: Vec<&str> = stdout.lines().rev().take(3).collect();
                Err(format!(
                    "ended with {} without PROBE PASS; output tail {:?}; stderr {:?}",
                    outcome.status,
                    tail,
                    String::from_utf8_lossy(&outcome.stderr).trim()
                ))
            } else {
                parse_probe_output(&stdout)
            };
            let sample = match parsed {
                Ok(sample) => sample,
                Err(reason) => {
                    failures += 1;
                    let _ = writeln!(progress, "{name} run {round} failed: {reason}");
                    continue;
                }
            };
            match setup.net {
                NetPath::Tap => tap_sent += sample.frames_sent,
                NetPath::VhostUser => pmd_sent += sample.frames_sent,
            }
            let kind = if round == 0 { "warm-up" } else { "run" };
            let mut line = format!("{name} {kind} {round}/{}:", options.runs);
            for (metric, value) in &sample.values {
                let _ = write!(line, " {metric:?}={value:.1}");
            }
            let _ = writeln!(progress, "{line}");
            commands[i] = argv
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            if round > 0 {
                samples[i].push(sample);
            }
        }
    }
    if failures > 0 {
        return Err(BenchError::RunsFailed { count: failures });
    }
    let tap_counted = netns.rx_packets()? - tap_before;
    let testpmd_frames_counted = match (testpmd.as_mut(), pmd_before) {
        (Some(pmd), Some(before)) => Some((pmd.rx_packets()? - before, pmd_sent)),
        _ => None,
    };
    let results: Vec<SetupResult> = setups
        .iter()
        .zip(samples)
        .zip(commands)
        .map(|((setup, samples), command)| {
            let mut figures = BTreeMap::new();
            for metric in Metric::ALL {
                let values: Vec<f64> = samples
                    .iter()
                    .filter_map(|s| s.values.get(&metric).copied())
                    .collect();
                if !values.is_empty() {
                    figures.insert(metric, Figure::from_samples(values));
                }
            }
            SetupResult {
                setup: *setup,
                command,
                figures,
            }
        })
        .collect();
    let rows = table_rows(&results);
    let edgevisor_vhost_user_over_tap = vhost_user_over_tap(&rows);
    Ok(IoReport {
        runs: options.runs,
        frames: options.frames,
        blk_mib: options.blk_mib,
        iops: options.iops,
        qemu_version,
        setups: results,
        rows,
        tap_frames_counted: (tap_counted, tap_sent),
        testpmd_frames_counted,
        edgevisor_vhost_user_over_tap,
    })
}

/// edgevisor's vhost-user median over its TAP median, for each net metric that has both.
pub fn vhost_user_over_tap(rows: &[IoRow]) -> BTreeMap<Metric, f64> {
    let median = |metric: Metric, net: NetPath| {
        rows.iter()
            .find(|r| r.metric == metric && r.net == Some(net))
            .and_then(|r| r.edgevisor)
    };
    Metric::ALL
        .into_iter()
        .filter_map(|m| {
            let (v, t) = (median(m, NetPath::VhostUser)?, median(m, NetPath::Tap)?);
            Some((m, ratio(v, t)?))
        })
        .collect()
}

/// One row per metric that some setup measured (net metrics once per network path).
pub fn table_rows(results: &[SetupResult]) -> Vec<IoRow> {
    let median = |system: System, net: NetPath, metric: Metric| {
        results
            .iter()
            .find(|r| r.setup.system == system && r.setup.net == net)
            .and_then(|r| r.figures.get(&metric)?.median)
    };
    let mut rows = Vec::new();
    for metric in Metric::ALL {
        let paths: &[NetPath] = if metric.is_net() {
            &[NetPath::Tap, NetPath::VhostUser]
        } else {
            &[NetPath::Tap]
        };
        for &net in paths {
            let (e, q) = (
                median(System::Edgevisor, net, metric),
                median(System::Qemu, net, metric),
            );
            if e.is_none() && q.is_none() {
                continue;
            }
            rows.push(IoRow {
                metric,
                net: metric.is_net().then_some(net),
                edgevisor: e,
                qemu: q,
                ratio: e.zip(q).and_then(|(e, q)| ratio(e, q)),
            });
        }
    }
    rows
}

/// The report as a table of medians and edgevisor/QEMU ratios.
pub fn render_io_table(report: &IoReport) -> String {
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let mut out = format!(
        "medians of {} interleaved runs; guest-side TSC timing; ratio = edgevisor/qemu \
         (above 1: edgevisor is faster, except MMIO exit)\n",
        report.runs
    );
    let _ = writeln!(
        out,
        "{:<48} {:>12} {:>14} {:>8}",
        "figure", "edgevisor", "qemu-microvm", "ratio"
    );
    for row in &report.rows {
        let label = match row.net {
            Some(net) => format!("{} {}", row.metric.label(), net.label()),
            None => row.metric.label().to_string(),
        };
        let _ = writeln!(
            out,
            "{label:<48} {:>12} {:>14} {:>8}",
            cell(row.edgevisor),
            cell(row.qemu),
            row.ratio.map_or("-".to_string(), |r| format!("{r:.2}")),
        );
    }
    let (counted, sent) = report.tap_frames_counted;
    let _ = writeln!(
        out,
        "frames on the TAP: {counted} counted by the host kernel, {sent} sent by the guests"
    );
    if let Some((counted, sent)) = report.testpmd_frames_counted {
        let _ = writeln!(
            out,
            "frames into testpmd: {counted} counted by its port, {sent} sent by the guests"
        );
    }
    if !report.edgevisor_vhost_user_over_tap.is_empty() {
        let ratios: Vec<String> = report
            .edgevisor_vhost_user_over_tap
            .iter()
            .map(|(m, r)| format!("{} {r:.2}", m.label()))
            .collect();
        let _ = writeln!(out, "edgevisor vhost-user/TAP: {}", ratios.join(", "));
    }
    if let Some(v) = &report.qemu_version {
        let _ = writeln!(out, "{v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "probe: cpuid tsc_khz=2000000 hv_max=0x40000010 rdrand=1 rdseed=1
probe: virtio-blk base=0xd0000000 capacity=131072 read0_fnv1a64=0x1 write=ok flush=ok
probe: blkbench read bytes=16777216 req_bytes=65536 depth=4 ticks=200000000
probe: blkbench write bytes=16777216 req_bytes=65536 depth=4 ticks=400000000
probe: blkbench iops reqs=512 req_bytes=4096 depth=4 ticks=1000000000
probe: netbench tx frames=20000 len=1514 bytes=30280000 depth=16 ticks=4000000000
probe: netbench tx frames=20000 len=64 bytes=1280000 depth=16 ticks=2000000000
probe: spin iters=1000000 insns_per_iter=4 ticks=2000000000
probe: mmio reads=1000 ticks=20000000
PROBE PASS protocol=pvh
";

    #[test]
    fn probe_lines_become_rates_with_the_probes_tsc_frequency() {
        let s = parse_probe_output(OUTPUT).unwrap();
        let v = |m| s.values[&m];
        // 16 MiB in 0.1 s, 16 MiB in 0.2 s, 512 reads in 0.5 s.
        assert!((v(Metric::BlkReadMibS) - 160.0).abs() < 1e-9);
        assert!((v(Metric::BlkWriteMibS) - 80.0).abs() < 1e-9);
        assert!((v(Metric::BlkRandReadIops) - 1024.0).abs() < 1e-9);
        // 20000 frames in 2 s and in 1 s; 30.28 MB in 2 s is 121.12 Mbit/s.
        assert!((v(Metric::NetTxLargeFps) - 10000.0).abs() < 1e-9);
        assert!((v(Metric::NetTxSmallFps) - 20000.0).abs() < 1e-9);
        assert!((v(Metric::NetTxLargeMbitS) - 121.12).abs() < 1e-9);
        // 4 M instructions in 1 s; 1000 exits in 10 ms.
        assert!((v(Metric::GuestMips) - 4.0).abs() < 1e-9);
        assert!((v(Metric::MmioExitUs) - 10.0).abs() < 1e-9);
        assert_eq!(s.frames_sent, 40000);
    }

    #[test]
    fn output_without_the_tsc_line_or_with_a_bad_field_is_refused() {
        let no_tsc: String = OUTPUT.lines().skip(1).collect::<Vec<_>>().join("\n");
        assert!(parse_probe_output(&no_tsc).unwrap_err().contains("tsc_khz"));
        let bad = OUTPUT.replace("reqs=512", "reqs=x");
        assert!(parse_probe_output(&bad).unwrap_err().contains("reqs="));
    }

    fn options() -> IoOptions {
        IoOptions {
            runs: 1,
            only: None,
            edgevisor: "/bin/edgevisor".into(),
            qemu: "qemu-system-x86_64".into(),
            frames: 100,
            blk_mib: 4,
            iops: 8,
            spin: 10,
            vhost_user: true,
            timeout: Duration::from_secs(1),
        }
    }

    fn strings(argv: &[OsString]) -> String {
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn both_systems_get_the_same_guest_workload_and_devices() {
        let o = options();
        let (k, d, s) = (Path::new("/k"), Path::new("/d"), Path::new("/s"));
        let tap = |system| {
            strings(&io_argv(
                &o,
                Setup {
                    system,
                    net: NetPath::Tap,
                },
                k,
                d,
                "ns",
                s,
            ))
        };
        let e = tap(System::Edgevisor);
        let q = tap(System::Qemu);
        let workload =
            "probe.netbench=100 probe.blkbench=4,req=1024,iops=8 probe.spin=10 probe.exit=debug=0";
        for argv in [&e, &q] {
            assert!(argv.starts_with("ip netns exec ns "), "{argv}");
            assert!(argv.contains(workload), "{argv}");
        }
        assert!(
            e.contains("--disk path=/d") && e.contains("--net tap=evbench0"),
            "{e}"
        );
        assert!(
            q.contains("file=/d,format=raw") && q.contains("ifname=evbench0"),
            "{q}"
        );
        assert!(
            q.contains("vhost=off") && q.contains("auto-kernel-cmdline=on"),
            "{q}"
        );

        let vu = |system| {
            strings(&io_argv(
                &o,
                Setup {
                    system,
                    net: NetPath::VhostUser,
                },
                k,
                d,
                "ns",
                s,
            ))
        };
        let (e, q) = (vu(System::Edgevisor), vu(System::Qemu));
        assert!(
            e.contains("64M,shared=on") && e.contains("vhost-user=/s"),
            "{e}"
        );
        assert!(q.contains("share=on") && q.contains("path=/s"), "{q}");
        for argv in [&e, &q] {
            assert!(
                !argv.contains("ip netns") && !argv.contains("blkbench"),
                "{argv}"
            );
        }
    }

    #[test]
    fn rows_pair_the_systems_per_metric_and_path() {
        let result = |system, net, metric, value| SetupResult {
            setup: Setup { system, net },
            command: vec![],
            figures: BTreeMap::from([(metric, Figure::from_samples(vec![value]))]),
        };
        let rows = table_rows(&[
            result(
                System::Edgevisor,
                NetPath::Tap,
                Metric::NetTxSmallFps,
                300.0,
            ),
            result(System::Qemu, NetPath::Tap, Metric::NetTxSmallFps, 200.0),
            result(
                System::Edgevisor,
                NetPath::VhostUser,
                Metric::NetTxSmallFps,
                50.0,
            ),
        ]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ratio, Some(1.5));
        let vu = vhost_user_over_tap(&rows);
        assert_eq!(
            vu.into_iter().collect::<Vec<_>>(),
            [(Metric::NetTxSmallFps, 50.0 / 300.0)]
        );
        assert_eq!(rows[1].net, Some(NetPath::VhostUser));
        assert_eq!(
            (rows[1].edgevisor, rows[1].qemu, rows[1].ratio),
            (Some(50.0), None, None)
        );
    }
}
