//! `--net vhost-user=` end to end with a real back end: two edgevisor guests (the firmware
//! probe with `probe.net=on`), each on one vhost-user port of a dpdk-testpmd in io-forward
//! mode, so the frame guest A sends comes out of guest B's receive queue and the other way
//! round. testpmd's own port counters confirm the handshake and the forwarding. Then testpmd
//! is killed and restarted, and both VMMs (guests still running) connect to it again.
//!
//! Needs root (hugepages), /dev/kvm and dpdk-testpmd (package dpdk-dev,
//! scripts/install-test-deps.sh).

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;
use common::*;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// testpmd wants the hugepages and both cores: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
/// What testpmd with --total-num-mbufs=16384 and two vhost ports uses, with room to spare.
const TESTPMD_PAGES: u64 = 64;

/// Makes `pages` 2 MiB hugepages free (growing the pool only by what is missing) and puts
/// the pool back to its old size on drop.
struct Hugepages(String);

impl Hugepages {
    fn reserve(pages: u64) -> Hugepages {
        let before = std::fs::read_to_string(NR_HUGEPAGES).expect("read nr_hugepages (root?)");
        let total: u64 = before.trim().parse().unwrap_or(0);
        let free = free_hugepages();
        if free < pages {
            std::fs::write(NR_HUGEPAGES, (total + pages - free).to_string())
                .expect("grow the 2 MiB hugepage pool (tests run as root)");
            assert!(
                free_hugepages() >= pages,
                "the kernel could not give {pages} free 2 MiB hugepages"
            );
        }
        Hugepages(before)
    }
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.0.trim());
    }
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
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
struct Testpmd {
    child: Child,
    stdin: ChildStdin,
    log: PathBuf,
}

#[derive(Debug, Default, Clone, Copy)]
struct PortStats {
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
}

impl Testpmd {
    fn start(dir: &Path, sockets: [&Path; 2], tag: &str) -> Testpmd {
        let log = dir.join(format!("testpmd-{tag}.log"));
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let vdev = |i: usize| format!("net_vhost{i},iface={},queues=1", sockets[i].display());
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
            ])
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("run dpdk-testpmd (package dpdk-dev: scripts/install-test-deps.sh)");
        let stdin = child.stdin.take().unwrap();
        let pmd = Testpmd { child, stdin, log };
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

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to testpmd");
        self.stdin.flush().expect("flush testpmd stdin");
    }

    /// Waits until `needle` appears `count` times in the log.
    fn wait_for(&self, needle: &str, count: usize, limit: Duration) -> bool {
        wait_until(limit, || self.log_text().matches(needle).count() >= count)
    }

    fn port_stats(&mut self, ports: usize) -> [PortStats; 2] {
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

    fn kill(&mut self) {
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

/// An edgevisor process whose stdout and stderr go to files in the scratch directory.
struct Vmm {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Vmm {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Vmm {
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

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn show(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }

    /// The probe's `probe: virtio-net ...` line, once the probe has finished (PASS or FAIL
    /// printed, so the line is complete).
    fn net_line(&self, limit: Duration) -> Option<String> {
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

const MAC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x0a, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x0b, 0x0b];

fn guest_args(socket: &Path, mac: [u8; 6]) -> Vec<String> {
    vec![
        "--mem".into(),
        "64M,shared=on".into(),
        "--net".into(),
        format!("vhost-user={},mac={}", socket.display(), mac_text(mac)),
        "--cmdline".into(),
        // hang: the guest stays up after its check, so the restart below finds both VMMs.
        "probe.net=on probe.exit=hang".into(),
    ]
}

#[test]
fn two_guests_exchange_frames_through_testpmd_and_reconnect_after_it_restarts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _pages = Hugepages::reserve(TESTPMD_PAGES);
    let scratch = Scratch::new("vhost-user");
    let dir = scratch.0.clone();
    let s0 = dir.join("port0.sock");
    let s1 = dir.join("port1.sock");
    let mut pmd = Testpmd::start(&dir, [&s0, &s1], "first");

    let args_a = guest_args(&s0, MAC_A);
    let args_b = guest_args(&s1, MAC_B);
    let a = Vmm::start(
        &dir,
        "a",
        &args_a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let b = Vmm::start(
        &dir,
        "b",
        &args_b.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    // Forwarding starts only when both guests' rings are in testpmd's hands; a frame sent
    // to a port whose guest is not ready yet would be dropped. Each probe waits 2 s for its
    // frame to be taken and 5 s for one to arrive. (--no-flush-rx: by default "start" first
    // drains and frees whatever waits in the RX queues, which here are the guests' frames.)
    assert!(
        pmd.wait_for(
            "virtio is now ready for processing",
            2,
            Duration::from_secs(20)
        ),
        "testpmd never saw both devices ready\n{}\nA:\n{}\nB:\n{}",
        pmd.log_text(),
        a.show(),
        b.show()
    );
    pmd.command("start");

    // The handshake as testpmd saw it, per port.
    let log = pmd.log_text();
    for s in [&s0, &s1] {
        let port = |what: &str| format!("({}) {what}", s.display());
        for step in [
            "read message VHOST_USER_SET_OWNER",
            "read message VHOST_USER_GET_PROTOCOL_FEATURES",
            "read message VHOST_USER_SET_MEM_TABLE",
            "read message VHOST_USER_SET_VRING_KICK",
            "read message VHOST_USER_SET_VRING_CALL",
            "set queue enable: 1 to qp idx: 1",
            "negotiated Virtio features: 0x1",
        ] {
            assert!(
                log.contains(&port(step)),
                "testpmd log lacks {step:?}\n{log}"
            );
        }
    }

    let frame_a = firmware::net_tx_frame(MAC_A);
    let frame_b = firmware::net_tx_frame(MAC_B);
    let lines = [&a, &b].map(|vmm| {
        vmm.net_line(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no virtio-net line\n{}\n{}", vmm.show(), pmd.log_text()))
    });
    // testpmd's counters: each port took one frame from its guest and gave one to it.
    let stats = pmd.port_stats(2);
    for (port, st) in stats.iter().enumerate() {
        assert_eq!(
            (st.rx_packets, st.tx_packets),
            (1, 1),
            "port {port}: {stats:?}\n{lines:?}\n{}",
            pmd.log_text()
        );
        assert_eq!(st.rx_bytes, frame_a.len() as u64, "port {port}: {stats:?}");
        assert_eq!(st.tx_bytes, frame_a.len() as u64, "port {port}: {stats:?}");
    }
    for ((vmm, line), (mac, peer_frame)) in [&a, &b]
        .iter()
        .zip(&lines)
        .zip([(MAC_A, &frame_b), (MAC_B, &frame_a)])
    {
        let want = format!(
            "mac={} tx=ok rx len={} fnv1a64={:#018x}",
            mac_text(mac),
            peer_frame.len(),
            firmware::fnv1a64(peer_frame)
        );
        assert!(
            line.contains(&want),
            "{line}\nwanted {want}\n{}",
            vmm.show()
        );
        assert!(vmm.stdout().contains("PROBE PASS"), "{}", vmm.show());
    }

    // The back end dies; the VMMs (guests still up, devices reset by the probe after its
    // check) notice and connect to the next testpmd on the same sockets by themselves.
    pmd.kill();
    let _ = std::fs::remove_file(&s0);
    let _ = std::fs::remove_file(&s1);
    for vmm in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(10), || vmm
                .stderr()
                .contains("went away; reconnecting")),
            "the VMM did not notice testpmd's death\n{}",
            vmm.show()
        );
    }
    let pmd2 = Testpmd::start(&dir, [&s0, &s1], "second");
    for vmm in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(20), || vmm.stderr().contains("is back")),
            "the VMM did not reconnect\n{}\n{}",
            vmm.show(),
            pmd2.log_text()
        );
    }
    let log = pmd2.log_text();
    for s in [&s0, &s1] {
        for step in [
            "read message VHOST_USER_SET_OWNER",
            "read message VHOST_USER_SET_PROTOCOL_FEATURES",
        ] {
            let needle = format!("({}) {step}", s.display());
            assert!(
                log.contains(&needle),
                "second testpmd lacks {needle:?}\n{log}"
            );
        }
    }
    // Both VMs are still running: the restart did not take the guests down.
    for vmm in [&a, &b] {
        assert!(vmm.stderr().contains("rings not started"), "{}", vmm.show());
    }
    drop((a, b));
    drop(pmd2);
}

#[test]
fn vhost_user_errors_are_clear_and_early() {
    let scratch = Scratch::new("vhost-user-errors");
    let dir = &scratch.0;
    let missing = dir.join("nobody.sock");
    let net = format!("vhost-user={}", missing.display());

    // Private guest memory: refused before anything is opened.
    let o = edgevisor(&["run", "--net", &net]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains("shared=on"), "{}", show(&o));
    assert!(!stdout(&o).contains("probe:"), "{}", show(&o));

    // No back end at the socket.
    let o = edgevisor(&["run", "--mem", "64M,shared=on", "--net", &net]);
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", show(&o));
    assert!(stderr(&o).contains("nobody.sock"), "{}", show(&o));

    // A "back end" that accepts and hangs up at once: the request it failed is named.
    let sock = dir.join("rude.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let rude = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        drop(conn);
    });
    let net = format!("vhost-user={}", sock.display());
    let o = edgevisor(&["run", "--mem", "64M,shared=on", "--net", &net]);
    rude.join().unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stderr(&o).contains("failed the SET_OWNER request")
            || stderr(&o).contains("failed the GET_FEATURES request"),
        "{}",
        show(&o)
    );

    // A "back end" that takes the connection and never answers: the VMM gives up after
    // net_dpdk::REPLY_TIMEOUT with a sentence instead of hanging in GET_FEATURES.
    let sock = dir.join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let silent = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        // Read what the VMM sends, never answer; EOF comes when the VMM cuts it off.
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &conn, &mut got);
        got.len()
    });
    let net = format!("vhost-user={}", sock.display());
    let started = Instant::now();
    let o = edgevisor(&["run", "--mem", "64M,shared=on", "--net", &net]);
    let took = started.elapsed();
    let sent = silent.join().unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stderr(&o).contains("did not answer within 5 s"),
        "{}",
        show(&o)
    );
    assert!(sent >= 12, "the VMM sent {sent} bytes: no request at all");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(20),
        "gave up after {took:?}"
    );

    // Multiqueue is refused with the reason.
    let net = format!("vhost-user={},queues=2", missing.display());
    let o = edgevisor(&["run", "--mem", "64M,shared=on", "--net", &net]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains("control virtqueue"), "{}", show(&o));
}
