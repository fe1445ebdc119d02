//! What the vhost-user tests share: a dpdk-testpmd driven over its
//! interactive prompt, and edgevisor processes whose output goes to files.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use super::common::{mac_text, Hugepages, Scratch};
use std::time::{Duration, Instant};

/// testpmd wants the hugepages and both cores: one test at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// What testpmd with --total-num-mbufs=16384 and two vhost ports uses, with room to spare.
pub const TESTPMD_PAGES: u64 = 64;

/// What a testpmd test holds for its whole run: a scratch directory with the paths of
/// testpmd's two port sockets, then (dropped after the test's testpmd, which is declared
/// later) the hugepages it reserved and the lock that keeps testpmd tests one at a time.
pub struct Rig {
    pub scratch: Scratch,
    pub s0: PathBuf,
    pub s1: PathBuf,
    _pages: Hugepages,
    _serial: MutexGuard<'static, ()>,
}

impl Rig {
    pub fn new(tag: &str) -> Rig {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let pages = Hugepages::reserve(TESTPMD_PAGES);
        let scratch = Scratch::new(tag);
        Rig {
            s0: scratch.0.join("port0.sock"),
            s1: scratch.0.join("port1.sock"),
            scratch,
            _pages: pages,
            _serial: serial,
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.scratch.0.clone()
    }
}

/// edgevisor's arguments for a probe guest on the vhost-user port at `socket` (`net_extra`
/// appended to the --net value, e.g. ",queues=2") running `probe.net=<probe_net>`. The
/// guest hangs after its check, so a test can still find it up; its frame waits up to 30 s
/// to be taken, since the first guest's waits in its ring until the second guest is up
/// and forwarding starts, which on a loaded host can take more than the default 2 s.
pub fn guest_args(socket: &Path, mac: [u8; 6], net_extra: &str, probe_net: &str) -> Vec<String> {
    vec![
        "--mem".into(),
        "64M,shared=on".into(),
        "--net".into(),
        format!(
            "vhost-user={}{net_extra},mac={}",
            socket.display(),
            mac_text(mac)
        ),
        "--cmdline".into(),
        format!("probe.net={probe_net},wait=30000 probe.exit=hang"),
    ]
}

pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// dpdk-testpmd, interactive, forwarding not started until [`Testpmd::start_forwarding`].
pub struct Testpmd {
    pub child: Child,
    pub stdin: ChildStdin,
    pub log: PathBuf,
    /// The vhost-user sockets of ports 0 and 1; testpmd's vhost lines name them.
    pub sockets: [PathBuf; 2],
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

impl Testpmd {
    /// testpmd with two vhost ports of `queues` queue pairs each (testpmd's --rxq/--txq too).
    pub fn start(dir: &Path, sockets: [&Path; 2], queues: u16, tag: &str) -> Testpmd {
        let log = dir.join(format!("testpmd-{tag}.log"));
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let vdev = |i: usize| {
            format!(
                "net_vhost{i},iface={},queues={queues}",
                sockets[i].display()
            )
        };
        // stdbuf: testpmd printf()s its answers, and stdout into a file is block-buffered.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "-eL",
                "dpdk-testpmd",
                "-l",
                "0-1",
                "--no-pci",
                "--in-memory",
            ])
            .args([
                "--file-prefix",
                &format!("edgevisor-vu-{tag}-{}", std::process::id()),
            ])
            .args(["--vdev", &vdev(0), "--vdev", &vdev(1)])
            .args([
                "--",
                "-i",
                "--total-num-mbufs=16384",
                "--forward-mode=io",
                "--no-flush-rx",
                &format!("--rxq={queues}"),
                &format!("--txq={queues}"),
            ])
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("run dpdk-testpmd (package dpdk-dev: scripts/install-test-deps.sh)");
        let stdin = child.stdin.take().unwrap();
        let pmd = Testpmd {
            child,
            stdin,
            log,
            sockets: sockets.map(Path::to_path_buf),
        };
        for s in sockets {
            assert!(
                wait_until(Duration::from_secs(30), || s.exists()),
                "testpmd never created {}: {}",
                s.display(),
                pmd.log_text()
            );
        }
        pmd
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to testpmd");
        self.stdin.flush().expect("flush testpmd stdin");
    }

    /// Waits until `needle` appears `count` times in the log.
    pub fn wait_for(&self, needle: &str, count: usize, limit: Duration) -> bool {
        wait_until(limit, || self.log_text().matches(needle).count() >= count)
    }

    pub fn port_stats(&mut self, ports: usize) -> [PortStats; 2] {
        let before = self.log_text().len();
        self.command("show port stats all");
        let mut text = String::new();
        let done = wait_until(Duration::from_secs(10), || {
            text = self.log_text().get(before..).unwrap_or("").to_string();
            text.matches("Throughput (since last show)").count() >= ports
        });
        assert!(done, "testpmd did not print its port stats: {text}");
        let mut stats = [PortStats::default(); 2];
        let mut port = None;
        let field = |line: &str, name: &str| -> Option<u64> {
            let rest = &line[line.find(name)? + name.len()..];
            rest.split_whitespace().next()?.parse().ok()
        };
        for line in text.lines() {
            if let Some(at) = line.find("NIC statistics for port") {
                port = line[at + 23..]
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<usize>().ok())
                    .filter(|p| *p < 2);
                continue;
            }
            let Some(p) = port else { continue };
            if let Some(v) = field(line, "RX-packets:") {
                stats[p].rx_packets = v;
            }
            if let Some(v) = field(line, "RX-bytes:") {
                stats[p].rx_bytes = v;
            }
            if let Some(v) = field(line, "TX-packets:") {
                stats[p].tx_packets = v;
            }
            if let Some(v) = field(line, "TX-bytes:") {
                stats[p].tx_bytes = v;
            }
        }
        stats
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        if !wait_until(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            self.kill();
        }
    }
}

/// Starts guests "a" and "b" (edgevisor with `args_a` and `args_b`), waits until testpmd's
/// log has `ready` for each port's socket, then starts forwarding. Forwarding starts only
/// then: a frame sent to a port whose guest is not ready yet would be dropped. (--no-flush-rx:
/// by default "start" first drains and frees whatever waits in the RX queues, which here are
/// the guests' frames.)
pub fn start_two_guests(
    dir: &Path,
    pmd: &mut Testpmd,
    args_a: &[String],
    args_b: &[String],
    ready: &str,
) -> (Vmm, Vmm) {
    fn strs(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }
    let a = Vmm::start(dir, "a", &strs(args_a));
    let b = Vmm::start(dir, "b", &strs(args_b));
    for socket in pmd.sockets.clone() {
        let needle = format!("({}) {ready}", socket.display());
        assert!(
            pmd.wait_for(&needle, 1, Duration::from_secs(30)),
            "testpmd never saw {needle:?}\n{}\nA:\n{}\nB:\n{}",
            pmd.log_text(),
            a.show(),
            b.show()
        );
    }
    pmd.command("start");
    (a, b)
}

/// An edgevisor process whose stdout and stderr go to files in the scratch directory.
pub struct Vmm {
    pub child: Child,
    pub out: PathBuf,
    pub err: PathBuf,
}

impl Vmm {
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Vmm {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new(env!("CARGO_BIN_EXE_edgevisor"))
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .expect("spawn edgevisor");
        Vmm { child, out, err }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    pub fn show(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }

    /// The probe's `probe: virtio-net ...` line, once the probe has finished (PASS or FAIL
    /// printed, so the line is complete).
    pub fn net_line(&self, limit: Duration) -> Option<String> {
        wait_until(limit, || {
            let out = self.stdout();
            out.contains("PROBE PASS") || out.contains("PROBE FAIL")
        });
        self.stdout()
            .lines()
            .find(|l| l.starts_with("probe: virtio-net"))
            .map(str::to_string)
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const MAC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x0a, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x0b, 0x0b];

/// One forwarding stream's counters as testpmd's `stop` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    pub rx_port: u16,
    pub rx_queue: u16,
    pub tx_port: u16,
    pub tx_queue: u16,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl Testpmd {
    /// `stop`, then the per-stream counters it prints (testpmd prints a stream only when it
    /// moved or dropped something, and per stream only when there are more streams than
    /// ports, i.e. with several queues).
    pub fn stop_streams(&mut self) -> Vec<StreamStats> {
        let before = self.log_text().len();
        self.command("stop");
        let mut text = String::new();
        let done = wait_until(Duration::from_secs(10), || {
            text = self.log_text().get(before..).unwrap_or("").to_string();
            text.contains("Done.")
        });
        assert!(done, "testpmd did not finish stop: {text}");
        parse_streams(&text)
    }
}

/// The streams in the output of testpmd's `stop`.
pub fn parse_streams(text: &str) -> Vec<StreamStats> {
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let rest = line[line.find(key)? + key.len()..].trim_start();
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    };
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if !line.contains("Forward Stats for RX Port=") {
            continue;
        }
        let (Some(rxp), Some(rxq), Some(txp), Some(txq)) = (
            number_after(line, "RX Port="),
            number_after(line, "/Queue="),
            number_after(line, "TX Port="),
            line.rfind("/Queue=")
                .and_then(|at| number_after(&line[at..], "/Queue=")),
        ) else {
            continue;
        };
        let Some(counts) = lines.next() else { break };
        out.push(StreamStats {
            rx_port: rxp as u16,
            rx_queue: rxq as u16,
            tx_port: txp as u16,
            tx_queue: txq as u16,
            rx_packets: number_after(counts, "RX-packets:").unwrap_or(0),
            tx_packets: number_after(counts, "TX-packets:").unwrap_or(0),
        });
    }
    out
}
