//! The probe's virtio-mmio driver against QEMU's own virtio-mmio devices (a real peer that
//! follows the same spec): QEMU's `microvm` machine with `-accel kvm`, the PVH probe as
//! `-kernel`, and virtio-rng, virtio-blk and virtio-net (UDP socket backend) devices.
//!
//! QEMU adds the `virtio_mmio.device=512@0xfeb00e00:12`-style tokens to the command line
//! itself when ACPI is off (`acpi=off`; with ACPI it describes the devices in the DSDT
//! instead). Its virtio-mmio transports are legacy (version 1) unless
//! `virtio-mmio.force-legacy=false`; CPUID 0x40000010 needs `vmware-cpuid-freq=on` and
//! `invtsc`; the probe ends through isa-debug-exit, which microvm only has when asked.
//!
//! Needs qemu-system-x86 (scripts/install-test-deps.sh) and /dev/kvm; set
//! EDGEVISOR_SKIP_KVM_TESTS=1 to skip.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const QEMU: &str = "qemu-system-x86_64";
/// Wall-clock limit for one QEMU run (the probe itself takes well under a second, or
/// about 5 s when it waits for a frame that never comes).
const QEMU_TIMEOUT_SECS: &str = "60";
/// `probe.exit=debug=5` ends QEMU with (5 << 1) | 1.
const PASS_EXIT: i32 = 11;
/// A FAIL writes 1 to isa-debug-exit: (1 << 1) | 1.
const FAIL_EXIT: i32 = 3;
const NET_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const SECTOR: usize = 512;

fn kvm_tests_skipped() -> bool {
    if std::env::var_os("EDGEVISOR_SKIP_KVM_TESTS").is_some() {
        eprintln!("EDGEVISOR_SKIP_KVM_TESTS is set: not booting the probe in QEMU");
        return true;
    }
    false
}

fn pvh_image() -> PathBuf {
    Path::new(env!("OUT_DIR")).join("probe-pvh.elf")
}

/// A scratch directory for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "edgevisor-virtio-qemu-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct QemuRun {
    serial: String,
    code: i32,
}

impl QemuRun {
    fn line_starting(&self, prefix: &str) -> &str {
        self.serial
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?}; serial:\n{}", self.serial))
    }

    /// The bases of the `virtio_mmio.device=` tokens on the echoed command line, in order.
    fn token_bases(&self) -> Vec<String> {
        let cmdline = self.line_starting("probe: cmdline=");
        cmdline
            .split_whitespace()
            .filter_map(|w| w.trim_end_matches('"').split_once("virtio_mmio.device="))
            .filter_map(|(_, spec)| spec.split_once('@'))
            .filter_map(|(_, rest)| rest.split_once(':'))
            .map(|(base, _)| base.to_string())
            .collect()
    }

    fn assert_pass(&self) {
        assert!(
            self.serial.contains("PROBE PASS protocol=pvh\n"),
            "no PASS; serial:\n{}",
            self.serial
        );
        assert_eq!(
            self.code, PASS_EXIT,
            "QEMU exit code; serial:\n{}",
            self.serial
        );
    }
}

/// Boot the PVH probe in QEMU microvm with `extra` arguments; `machine_extra` is appended
/// to the -M option list.
fn run_qemu(cmdline: &str, machine_extra: &str, extra: &[String]) -> QemuRun {
    let machine = format!("microvm,x-option-roms=off,rtc=on,isa-serial=on,acpi=off{machine_extra}");
    let output = Command::new("timeout")
        .args(["-k", "5", QEMU_TIMEOUT_SECS, QEMU])
        .args(["-M", &machine, "-accel", "kvm"])
        .args([
            "-cpu",
            "host,-arch-capabilities,+invtsc,vmware-cpuid-freq=on",
        ])
        .args(["-m", "128", "-nodefaults", "-no-user-config", "-nographic"])
        .args(["-serial", "stdio"])
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .args(["-device", "isa-debug-exit,iobase=0x501,iosize=1"])
        .arg("-kernel")
        .arg(pvh_image())
        .args(["-append", cmdline])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {QEMU} under timeout ({e}); run scripts/install-test-deps.sh")
        });
    let serial = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code().unwrap_or(-1);
    assert_ne!(
        code, 124,
        "QEMU did not end in time; serial:\n{serial}\nstderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("Could not access KVM") && !stderr.contains("failed to initialize kvm"),
        "QEMU cannot use KVM: {stderr}"
    );
    QemuRun { serial, code }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// FNV-1a, 64 bits, computed here independently of the probe.
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Deterministic bytes (xorshift64*).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// What the probe writes to sector 1: "edgevisor-probe-block", then byte i = i & 0xff.
fn block_pattern() -> Vec<u8> {
    let mut sector: Vec<u8> = (0..SECTOR).map(|i| (i & 0xff) as u8).collect();
    let text = b"edgevisor-probe-block";
    sector[..text.len()].copy_from_slice(text);
    sector
}

fn write_disk(dir: &TempDir, seed: u64) -> (PathBuf, Vec<u8>) {
    let path = dir.path("disk.img");
    let data = pseudo_random(1 << 20, seed);
    std::fs::write(&path, &data).expect("write the disk image");
    (path, data)
}

fn blk_args(path: &Path, drive_options: &str, device_options: &str) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "id=d0,file={},format=raw,if=none{drive_options}",
            path.display()
        ),
        "-device".into(),
        format!("virtio-blk-device,drive=d0{device_options}"),
    ]
}

#[test]
fn fnv1a64_reference_matches_published_vectors() {
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn rng_answers_with_64_bytes() {
    if kvm_tests_skipped() {
        return;
    }
    let run = run_qemu(
        "console=ttyS0 probe.exit=debug=5",
        "",
        &args(&["-device", "virtio-rng-device"]),
    );
    run.assert_pass();
    let bases = run.token_bases();
    assert_eq!(
        bases.len(),
        1,
        "QEMU adds one token per device: {}",
        run.serial
    );
    assert_eq!(
        run.line_starting("probe: virtio-rng"),
        format!("probe: virtio-rng base={} bytes=64", bases[0])
    );
}

#[test]
fn block_read_write_flush_and_rng_together() {
    if kvm_tests_skipped() {
        return;
    }
    let dir = TempDir::new("blk");
    let (disk, before) = write_disk(&dir, 11);
    let mut extra = blk_args(&disk, "", "");
    extra.extend(args(&["-device", "virtio-rng-device"]));
    let run = run_qemu("console=ttyS0 probe.exit=debug=5", "", &extra);
    run.assert_pass();

    // QEMU lists the transports it filled from the top; the probe takes them in order.
    let bases = run.token_bases();
    assert_eq!(bases.len(), 2, "{}", run.serial);
    let virtio_lines: Vec<&str> = run
        .serial
        .lines()
        .filter(|l| l.starts_with("probe: virtio-"))
        .collect();
    assert_eq!(virtio_lines.len(), 2, "{}", run.serial);
    assert_eq!(
        virtio_lines[0],
        format!(
            "probe: virtio-blk base={} capacity=2048 read0_fnv1a64={:#018x} write=ok flush=ok",
            bases[0],
            fnv1a64(&before[..SECTOR])
        )
    );
    assert_eq!(
        virtio_lines[1],
        format!("probe: virtio-rng base={} bytes=64", bases[1])
    );

    let after = std::fs::read(&disk).expect("read the disk image back");
    assert_eq!(after.len(), before.len());
    assert_eq!(&after[SECTOR..2 * SECTOR], block_pattern().as_slice());
    assert_eq!(after[..SECTOR], before[..SECTOR], "sector 0 untouched");
    assert_eq!(
        after[2 * SECTOR..],
        before[2 * SECTOR..],
        "sectors 2.. untouched"
    );
}

#[test]
fn read_only_block_is_read_not_written() {
    if kvm_tests_skipped() {
        return;
    }
    let dir = TempDir::new("blk-ro");
    let (disk, before) = write_disk(&dir, 12);
    let run = run_qemu(
        "console=ttyS0 probe.exit=debug=5",
        "",
        &blk_args(&disk, ",readonly=on", ""),
    );
    run.assert_pass();
    let line = run.line_starting("probe: virtio-blk");
    assert!(
        line.ends_with(&format!(
            " capacity=2048 read0_fnv1a64={:#018x} write=ro flush=none",
            fnv1a64(&before[..SECTOR])
        )),
        "{line}"
    );
    assert_eq!(std::fs::read(&disk).expect("disk image"), before);
}

#[test]
fn block_without_flush_feature_writes_without_flushing() {
    if kvm_tests_skipped() {
        return;
    }
    let dir = TempDir::new("blk-wt");
    let (disk, _) = write_disk(&dir, 13);
    // Write-through and no writeback toggle: QEMU does not offer VIRTIO_BLK_F_FLUSH.
    let run = run_qemu(
        "console=ttyS0 probe.exit=debug=5",
        "",
        &blk_args(&disk, ",cache=writethrough", ",config-wce=off"),
    );
    run.assert_pass();
    let line = run.line_starting("probe: virtio-blk");
    assert!(line.ends_with(" write=ok flush=none"), "{line}");
    let after = std::fs::read(&disk).expect("disk image");
    assert_eq!(&after[SECTOR..2 * SECTOR], block_pattern().as_slice());
}

/// A UDP port nobody uses right now (bound, then released for QEMU).
fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    socket.local_addr().expect("local address").port()
}

fn net_args(peer_port: u16, qemu_port: u16) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("socket,id=n0,udp=127.0.0.1:{peer_port},localaddr=127.0.0.1:{qemu_port}"),
        "-device".into(),
        "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56".into(),
    ]
}

#[test]
fn net_frame_goes_out_and_one_comes_in() {
    if kvm_tests_skipped() {
        return;
    }
    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind the peer socket");
    peer.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("set a read timeout");
    let peer_port = peer.local_addr().expect("peer address").port();
    let qemu_port = free_udp_port();

    let mut reply = vec![0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x02, 0, 0, 0, 0, 0x09];
    reply.extend([0x88, 0xb5]);
    reply.extend(b"edgevisor-test-net-rx ");
    reply.extend(pseudo_random(100, 21));
    let injected = reply.clone();
    let peer_thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        let (len, _) = peer
            .recv_from(&mut buf)
            .expect("the guest's frame over UDP");
        buf.truncate(len);
        // A frame of another ethertype first: the probe must skip it.
        let mut other = injected.clone();
        other[12..14].copy_from_slice(&[0x08, 0x00]);
        let to = format!("127.0.0.1:{qemu_port}");
        peer.send_to(&other, &to).expect("inject the IPv4 frame");
        peer.send_to(&injected, &to)
            .expect("inject the 0x88b5 frame");
        buf
    });

    let run = run_qemu(
        "console=ttyS0 probe.exit=debug=5 probe.net=on",
        "",
        &net_args(peer_port, qemu_port),
    );
    let sent = peer_thread.join().expect("peer thread");
    run.assert_pass();

    let mut expected = vec![0xff; 6];
    expected.extend(NET_MAC);
    expected.extend([0x88, 0xb5]);
    expected.extend(b"edgevisor-probe-net-tx");
    assert_eq!(sent, expected, "the frame the guest sent");
    let line = run.line_starting("probe: virtio-net");
    assert!(
        line.ends_with(&format!(
            " mac=52:54:00:12:34:56 tx=ok rx len={} fnv1a64={:#018x}",
            reply.len(),
            fnv1a64(&reply)
        )),
        "{line}"
    );
}

#[test]
fn net_without_a_frame_in_reports_rx_none_and_without_probe_net_sends_nothing() {
    if kvm_tests_skipped() {
        return;
    }
    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind the peer socket");
    peer.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("set a read timeout");
    let peer_port = peer.local_addr().expect("peer address").port();

    let run = run_qemu(
        "console=ttyS0 probe.exit=debug=5",
        "",
        &net_args(peer_port, free_udp_port()),
    );
    run.assert_pass();
    let line = run.line_starting("probe: virtio-net");
    assert!(
        line.ends_with(" mac=52:54:00:12:34:56 traffic=off"),
        "{line}"
    );
    let mut buf = [0u8; 2048];
    assert!(
        peer.recv_from(&mut buf).is_err(),
        "no frame without probe.net=on"
    );

    let run = run_qemu(
        "console=ttyS0 probe.exit=debug=5 probe.net=on",
        "",
        &net_args(peer_port, free_udp_port()),
    );
    run.assert_pass();
    let line = run.line_starting("probe: virtio-net");
    assert!(line.ends_with(" tx=ok rx none"), "{line}");
    assert!(peer.recv_from(&mut buf).is_ok(), "the frame went out");
}

#[test]
fn unikraft_spelling_empty_transport_and_missing_device() {
    if kvm_tests_skipped() {
        return;
    }
    // Without QEMU's own tokens: the rng sits on the top transport (0xfeb00e00); the
    // bottom one (0xfeb00000) is an empty transport (device id 0).
    let run = run_qemu(
        "console=ttyS0 probe.exit=debug=5 libvirtio_mmio.device=512@0xfeb00e00:12 \
         virtio_mmio.device=0x200@0xfeb00000:5",
        ",auto-kernel-cmdline=off",
        &args(&["-device", "virtio-rng-device"]),
    );
    run.assert_pass();
    let lines: Vec<&str> = run
        .serial
        .lines()
        .filter(|l| l.starts_with("probe: virtio-"))
        .collect();
    assert_eq!(
        lines,
        [
            "probe: virtio-rng base=0xfeb00e00 bytes=64",
            "probe: virtio-other base=0xfeb00000 id=0 skipped",
        ]
    );

    // Nothing virtio at that address: the magic check fails the probe.
    let run = run_qemu(
        "console=ttyS0 probe.exit=debug=5 virtio_mmio.device=4K@0xfeb40000:5",
        ",auto-kernel-cmdline=off",
        &[],
    );
    let last = run.serial.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "PROBE FAIL protocol=pvh check=virtio no virtio-mmio magic 0x74726976 at base=0xfeb40000"
    );
    assert_eq!(run.code, FAIL_EXIT, "{}", run.serial);
}

/// vhost-device-vsock (rust-vmm; `cargo install vhost-device-vsock`): a vhost-user vsock
/// device with Firecracker's hybrid host side, a real peer for the vsock check.
fn vhost_device_vsock() -> PathBuf {
    if let Some(path) = std::env::var_os("EDGEVISOR_VHOST_DEVICE_VSOCK") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("vhost-device-vsock"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "vhost-device-vsock not found: `cargo install vhost-device-vsock` or set \
                 EDGEVISOR_VHOST_DEVICE_VSOCK"
            )
        })
}

/// Kills the child it holds when dropped (the vhost-user device of one test).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vsock_round_trip(name: &str, tx_buffer_size: u32) {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    let dir = TempDir::new(name);
    let vhost_socket = dir.path("vhost.sock");
    let uds = dir.path("vm.vsock");
    let port = 1234;
    // Firecracker's hybrid model: a guest connection to port P reaches `<uds>_P`.
    let listener = UnixListener::bind(dir.path(&format!("vm.vsock_{port}")))
        .expect("listen for the guest's connection");
    let _device = KillOnDrop(
        Command::new(vhost_device_vsock())
            .args([
                "--guest-cid",
                "5",
                "--tx-buffer-size",
                &tx_buffer_size.to_string(),
            ])
            .arg("--socket")
            .arg(&vhost_socket)
            .arg("--uds-path")
            .arg(&uds)
            .stdout(Stdio::null())
            .spawn()
            .expect("start vhost-device-vsock"),
    );
    for _ in 0..100 {
        if vhost_socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let host = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("the guest connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set a read timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("the guest's line");
        (&stream)
            .write_all(b"hello from the host side\n")
            .expect("reply");
        let mut rest = String::new();
        reader
            .read_line(&mut rest)
            .expect("EOF after the guest's shutdown");
        (line, rest)
    });

    let run = run_qemu(
        &format!("console=ttyS0 probe.exit=debug=5 probe.vsock={port}"),
        ",memory-backend=mem",
        &[
            "-object".into(),
            "memory-backend-memfd,id=mem,size=128M,share=on".into(),
            "-chardev".into(),
            format!("socket,id=c0,path={}", vhost_socket.display()),
            "-device".into(),
            "vhost-user-vsock-device,chardev=c0".into(),
        ],
    );
    run.assert_pass();
    let (line, rest) = host.join().expect("host thread");
    assert_eq!(line, "edgevisor-probe-vsock\n");
    assert_eq!(rest, "", "the guest shut the stream down after the reply");
    let bases = run.token_bases();
    assert_eq!(
        run.line_starting("probe: virtio-vsock"),
        format!(
            "probe: virtio-vsock base={} guest_cid=5 port={port} reply=\"hello from the host side\"",
            bases[0]
        )
    );
}

#[test]
#[ignore = "needs vhost-device-vsock (cargo install vhost-device-vsock)"]
fn vsock_round_trip_through_vhost_device_vsock() {
    if kvm_tests_skipped() {
        return;
    }
    vsock_round_trip("vsock", 65536);
}

#[test]
#[ignore = "needs vhost-device-vsock (cargo install vhost-device-vsock)"]
fn vsock_sends_within_a_peer_credit_smaller_than_the_message() {
    if kvm_tests_skipped() {
        return;
    }
    // The device advertises buf_alloc 8: the 22-byte message must go out in pieces,
    // each after the host's credit update.
    vsock_round_trip("vsock-credit", 8);
}
