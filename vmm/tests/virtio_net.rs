//! virtio-net end to end: our probe's driver sends a frame through `edgevisor --net`, the test
//! sees it on the TAP inside a network namespace it created, injects a reply there, and the
//! probe reports receiving it.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A network namespace made for one test, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new(tag: &str) -> NetNs {
        let name = format!("ev-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "ip netns add {name} failed (iproute2 installed?)"
        );
        NetNs(name)
    }

    fn ip(&self, args: &[&str]) {
        let ok = Command::new("ip")
            .args(["netns", "exec", &self.0, "ip"])
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "ip {args:?} in {} failed", self.0);
    }

    /// `edgevisor run` inside the namespace; the caller adds its options.
    fn edgevisor_run(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.0,
            env!("CARGO_BIN_EXE_edgevisor"),
            "run",
        ]);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// An AF_PACKET socket on `ifname` inside namespace `ns`, opened from a thread that joined it.
fn packet_socket(ns: &str, ifname: &str) -> i32 {
    let path = format!("/var/run/netns/{ns}\0");
    let ifname = format!("{ifname}\0");
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscalls on descriptors and NUL-terminated strings we own; setns
            // only changes this short-lived thread's namespace.
            unsafe {
                let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY);
                assert!(fd >= 0, "open netns");
                assert_eq!(libc::setns(fd, libc::CLONE_NEWNET), 0, "setns");
                libc::close(fd);
                let proto = (libc::ETH_P_ALL as u16).to_be();
                let sock = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
                assert!(sock >= 0, "AF_PACKET socket");
                let index = libc::if_nametoindex(ifname.as_ptr().cast());
                assert!(index > 0, "no such interface");
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = proto;
                addr.sll_ifindex = index as i32;
                let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let rc = libc::bind(sock, (&addr as *const libc::sockaddr_ll).cast(), len);
                assert_eq!(rc, 0, "bind AF_PACKET");
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 200_000,
                };
                libc::setsockopt(
                    sock,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                sock
            }
        })
        .join()
        .unwrap()
    })
}

fn recv(sock: i32) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    // SAFETY: recv writes at most buf.len() bytes into our buffer.
    let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), 0) };
    (n > 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

#[test]
fn a_guest_frame_reaches_the_tap_and_a_reply_reaches_the_guest() {
    let ns = NetNs::new("net");
    // A persistent TAP made beforehand, so the capture is in place before the guest sends;
    // edgevisor attaches to it and leaves it in place.
    ns.ip(&["tuntap", "add", "dev", "evtap0", "mode", "tap", "vnet_hdr"]);
    ns.ip(&["link", "set", "evtap0", "up"]);
    let sock = packet_socket(&ns.0, "evtap0");
    let mac = "02:12:34:56:78:9a";
    let vm = ns
        .edgevisor_run()
        .args(["--net", &format!("tap=evtap0,mac={mac}")])
        // wait: the reply is injected only once the test has seen the guest's frame.
        .args(["--cmdline", "probe.net=on,wait=30000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guest_mac = [0x02, 0x12, 0x34, 0x56, 0x78, 0x9a];
    let expected = firmware::net_tx_frame(guest_mac);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while seen.is_none() && Instant::now() < deadline {
        if let Some(frame) = recv(sock) {
            if frame.len() >= 14 && frame[12..14] == firmware::NET_ETHERTYPE.to_be_bytes() {
                seen = Some(frame);
            }
        }
    }
    let reply: Vec<u8> = guest_mac
        .iter()
        .chain(&[0x02, 0, 0, 0, 0, 0x77])
        .chain(&firmware::NET_ETHERTYPE.to_be_bytes())
        .chain(b"hello from the host side of the tap, padded to sixty")
        .copied()
        .collect();
    if seen.is_some() {
        // SAFETY: send reads reply.len() bytes from our buffer.
        let n = unsafe { libc::send(sock, reply.as_ptr().cast(), reply.len(), 0) };
        assert_eq!(n, reply.len() as isize, "inject");
    }
    let out = vm.wait_with_output().unwrap();
    // SAFETY: closing our own socket.
    unsafe { libc::close(sock) };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let frame = seen.unwrap_or_else(|| panic!("no frame from the guest\n{stdout}\n{stderr}"));
    assert_eq!(frame, expected, "the guest's frame, byte for byte");
    let rx = format!(
        "rx len={} fnv1a64={:#018x}",
        reply.len(),
        firmware::fnv1a64(&reply)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("probe: virtio-net"))
        .unwrap_or_else(|| panic!("{stdout}\n{stderr}"));
    assert!(
        line.contains(&format!("mac={mac} tx=ok {rx}")),
        "{line}\n{stdout}\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    // An existing TAP is left in place.
    let links = Command::new("ip")
        .args(["netns", "exec", &ns.0, "ip", "link", "show", "evtap0"])
        .output()
        .unwrap();
    assert!(
        links.status.success(),
        "edgevisor removed a TAP it did not create"
    );
}

#[test]
fn a_tap_edgevisor_creates_is_gone_when_the_vm_ends() {
    let ns = NetNs::new("tapgone");
    let o = ns
        .edgevisor_run()
        .args(["--net", "tap=evtmp0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stdout(&o).contains("probe: virtio-net base=0xd0000000 mac="),
        "{}",
        show(&o)
    );
    let links = Command::new("ip")
        .args(["netns", "exec", &ns.0, "ip", "link", "show", "evtmp0"])
        .output()
        .unwrap();
    assert!(
        !links.status.success(),
        "the TAP edgevisor created is still there"
    );
    // A bad TAP name is refused before anything runs.
    let o = ns
        .edgevisor_run()
        .args(["--net", "tap=lo"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(!stdout(&o).contains("probe:"), "{}", show(&o));
}

/// `probe.net=on,wait=MS` widens the probe's transmit and receive windows (tests whose peer
/// comes up after the guest ask for more than the default 5 s), and a bad value fails the
/// probe's cmdline check.
#[test]
fn the_probe_net_wait_option_widens_its_windows_and_bad_values_fail() {
    let ns = NetNs::new("netwait");
    let run = |cmdline: &str| {
        let started = Instant::now();
        let o = ns
            .edgevisor_run()
            .args(["--net", "tap=evwait0", "--cmdline", cmdline])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (o, started.elapsed())
    };
    // Nobody answers on this TAP: the probe waits its whole receive window, which load can
    // only lengthen, and then reports `rx none`.
    let (o, took) = run("probe.net=on,wait=6500");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).contains("tx=ok rx none"), "{}", show(&o));
    assert!(
        took >= Duration::from_millis(6500),
        "wait=6500 ended the receive wait after {took:?}\n{}",
        show(&o)
    );
    for bad in [
        "probe.net=on,wait=0",
        "probe.net=on,wait=600001",
        "probe.net=on,wait=",
        "probe.net=mq,wait=5x",
        "probe.net=on,wiat=5",
        "probe.net=onx",
    ] {
        let (o, _) = run(bad);
        assert_ne!(o.status.code(), Some(0), "{bad}: {}", show(&o));
        assert!(
            stdout(&o).contains("PROBE FAIL") && stdout(&o).contains("check=cmdline"),
            "{bad}: {}",
            show(&o)
        );
        assert!(
            stdout(&o).contains("unknown probe.net= value"),
            "{bad}: {}",
            show(&o)
        );
    }
}
