//! `--net vhost-user=...,mode=server` against a real OVS-DPDK switch: Debian's
//! `ovs-vswitchd-dpdk` with its own database and run directory, a `datapath_type=netdev`
//! bridge, and one `dpdkvhostuserclient` port per guest (OVS connects to the socket each VMM
//! listens on). Guest B comes up first and waits for a frame; guest A then sends one
//! broadcast, which the bridge floods to B. Checked: B received exactly A's frame (length and
//! FNV-1a), OVS's own port counters saw it come in from A, and OVS's log shows the whole
//! vhost-user handshake on both sockets.
//!
//! Needs root (hugepages), /dev/kvm and openvswitch-switch-dpdk (scripts/install-test-deps.sh).

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// OVS's DPDK memory (`dpdk-socket-mem`, MiB) and the 2 MiB pages it needs, with room.
const SOCKET_MEM_MIB: u64 = 128;
const OVS_PAGES: u64 = SOCKET_MEM_MIB / 2 + 16;
const VSWITCHD: &str = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk";
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// A private OVS-DPDK: ovsdb-server and ovs-vswitchd-dpdk with their files in `dir`; both
/// are stopped and the hugepage pool is put back on drop.
struct Ovs {
    dir: PathBuf,
    /// Dropped after the daemons are killed.
    _pages: Hugepages,
}

impl Ovs {
    fn start(dir: &Path) -> Ovs {
        let ovs = Ovs {
            dir: dir.to_path_buf(),
            _pages: Hugepages::reserve(OVS_PAGES),
        };
        assert!(
            free_hugepages() >= OVS_PAGES,
            "no {OVS_PAGES} free hugepages"
        );
        let db = dir.join("conf.db");
        ovs.run(
            Command::new("ovsdb-tool")
                .arg("create")
                .arg(&db)
                .arg("/usr/share/openvswitch/vswitch.ovsschema"),
        );
        ovs.run(
            Command::new("ovsdb-server")
                .arg(&db)
                .arg(format!("--remote=punix:{}", ovs.db_socket().display()))
                .arg(format!("--pidfile={}", dir.join("ovsdb.pid").display()))
                .arg(format!("--log-file={}", dir.join("ovsdb.log").display()))
                .arg(format!("--unixctl={}", dir.join("ovsdb.ctl").display()))
                .arg("--detach"),
        );
        ovs.vsctl(&["--no-wait", "init"]);
        ovs.vsctl(&[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:dpdk-init=true",
            &format!("other_config:dpdk-socket-mem={SOCKET_MEM_MIB}"),
            &format!(
                "other_config:dpdk-extra=--no-pci --file-prefix=edgevisor-ovs-{}",
                std::process::id()
            ),
            "other_config:dpdk-lcore-mask=0x1",
            "other_config:pmd-cpu-mask=0x2",
        ]);
        ovs.run(
            Command::new(VSWITCHD)
                .arg(format!("unix:{}", ovs.db_socket().display()))
                .arg(format!("--pidfile={}", dir.join("vswitchd.pid").display()))
                .arg(format!("--log-file={}", ovs.log().display()))
                .arg(format!("--unixctl={}", dir.join("vswitchd.ctl").display()))
                .arg("--detach"),
        );
        ovs.vsctl(&[
            "add-br",
            "br0",
            "--",
            "set",
            "bridge",
            "br0",
            "datapath_type=netdev",
        ]);
        ovs
    }

    fn db_socket(&self) -> PathBuf {
        self.dir.join("db.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("vswitchd.log")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Runs `cmd` with this instance's directories; its output, whatever its status.
    fn output(&self, cmd: &mut Command) -> std::process::Output {
        cmd.env("OVS_RUNDIR", &self.dir)
            .env("OVS_DBDIR", &self.dir)
            .env("OVS_LOGDIR", &self.dir)
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (package openvswitch-switch-dpdk)"))
    }

    fn run(&self, cmd: &mut Command) -> String {
        let out = self.output(cmd);
        assert!(
            out.status.success(),
            "{cmd:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn vsctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ovs-vsctl");
        cmd.arg(format!("--db=unix:{}", self.db_socket().display()))
            .arg("--timeout=30")
            .args(args);
        cmd
    }

    fn vsctl(&self, args: &[&str]) -> String {
        self.run(&mut self.vsctl_command(args))
    }

    /// Adds `port`, a vhost-user client of the VMM listening on `socket`.
    fn add_vhost_port(&self, port: &str, socket: &Path) {
        self.vsctl(&[
            "add-port",
            "br0",
            port,
            "--",
            "set",
            "Interface",
            port,
            "type=dpdkvhostuserclient",
            &format!("options:vhost-server-path={}", socket.display()),
        ]);
    }

    fn link_up(&self, port: &str) -> bool {
        self.vsctl(&["get", "interface", port, "link_state"]) == "up"
    }

    /// One counter of `port` from its `statistics` column, once it is at least `min`:
    /// vswitchd refreshes that column only every few seconds (`stats-update-interval`, 5 s by
    /// default), and the key is absent until the first refresh. The last value read (0 if
    /// none) after 30 s.
    fn stat_at_least(&self, port: &str, name: &str, min: u64) -> u64 {
        let mut value = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let key = format!("statistics:{name}");
            let out = self.output(&mut self.vsctl_command(&["get", "interface", port, &key]));
            if out.status.success() {
                value = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0);
                if value >= min {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        value
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        for pidfile in ["vswitchd.pid", "ovsdb.pid"] {
            let pid = std::fs::read_to_string(self.dir.join(pidfile)).unwrap_or_default();
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: kill has no memory effects; the pid is the daemon we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A VMM running the probe with `probe.net=` `net` on a vhost-user socket in server mode.
fn guest(kernel: &Path, socket: &Path, mac: [u8; 6], net: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_edgevisor"))
        .args(["run", "--mem", "64M,shared=on", "--kernel"])
        .arg(kernel)
        .arg("--net")
        .arg(format!(
            "vhost-user={},mode=server,mac={}",
            socket.display(),
            mac_text(mac)
        ))
        .args(["--cmdline", &format!("probe.net={net}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start edgevisor")
}

/// Waits for `child` (killing it after 60 s) and returns its output.
fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

#[test]
fn a_frame_crosses_an_ovs_dpdk_bridge_between_two_guests() {
    let scratch = Scratch::new("ovs-dpdk");
    let dir = scratch.0.clone();
    let kernel = dir.join("probe.elf");
    std::fs::write(&kernel, firmware::PROBE_PVH).unwrap();
    let ovs = Ovs::start(&dir);
    let (sock_a, sock_b) = (dir.join("a.sock"), dir.join("b.sock"));

    // B first: its VMM listens, OVS connects, B's driver brings the port up and then waits
    // for a frame, up to 60 s: A's VMM, its port and its guest all come up meanwhile.
    let b = guest(&kernel, &sock_b, MAC_B, "on,wait=60000");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock_b.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    ovs.add_vhost_port("vhu1", &sock_b);
    while !ovs.link_up("vhu1") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        ovs.link_up("vhu1"),
        "guest B's port never came up\n{}",
        ovs.log_text()
    );

    // Then A, whose one broadcast frame the bridge floods to B.
    let a = guest(&kernel, &sock_a, MAC_A, "on");
    while !sock_a.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    ovs.add_vhost_port("vhu0", &sock_a);
    let (a, b) = (finish(a), finish(b));
    let (out_a, out_b) = (show(&a), show(&b));
    assert!(
        out_a.contains("PROBE PASS") && out_a.contains("tx=ok"),
        "A:\n{out_a}"
    );
    let frame_a = firmware::net_tx_frame(MAC_A);
    let expected = format!(
        "rx len={} fnv1a64={:#018x}",
        frame_a.len(),
        firmware::fnv1a64(&frame_a)
    );
    assert!(
        out_b.contains("PROBE PASS") && out_b.contains(&expected),
        "B did not receive A's frame ({expected}):\n{out_b}\nA:\n{out_a}"
    );

    // OVS's side: A's frame came in on vhu0 (36 bytes), and both sockets went through the
    // handshake up to the memory table.
    assert_eq!(ovs.stat_at_least("vhu0", "rx_packets", 1), 1);
    assert_eq!(
        ovs.stat_at_least("vhu0", "rx_bytes", frame_a.len() as u64),
        frame_a.len() as u64
    );
    let log = ovs.log_text();
    for sock in [&sock_a, &sock_b] {
        for step in [
            "VHOST_USER_SET_OWNER",
            "VHOST_USER_SET_FEATURES",
            "VHOST_USER_SET_MEM_TABLE",
        ] {
            let line = format!("({}) read message {step}", sock.display());
            assert!(log.contains(&line), "OVS log lacks {line:?}\n{log}");
        }
    }
    drop(ovs);
}
