//! Virtio devices from the `edgevisor` command line: where the guest finds them, the device
//! event loop under its seccomp filter, and bad device options refused before anything runs.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;

use common::*;

use std::process::{Command, Stdio};
use std::time::Duration;

fn disk(dir: &Scratch, name: &str, sectors: usize) -> std::path::PathBuf {
    dir.file(name, &vec![0u8; sectors * 512])
}

#[test]
fn devices_are_announced_on_the_command_line_before_the_separator() {
    let dir = Scratch::new("virtio-cmdline");
    let d0 = disk(&dir, "a.img", 16);
    let o = edgevisor(&[
        "run",
        "--disk",
        &format!("path={}", d0.display()),
        "--rng",
        "--cmdline",
        "quiet -- app arg",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = stdout(&o);
    assert!(
        out.contains(
            "cmdline=\"quiet virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 -- app arg\""
        ),
        "{}",
        show(&o)
    );
}

#[test]
fn the_event_loop_runs_under_its_own_seccomp_filter() {
    let dir = Scratch::new("virtio-seccomp");
    let d0 = disk(&dir, "a.img", 16);
    let o = Command::new(env!("CARGO_BIN_EXE_edgevisor"))
        .args(["run", "--disk", &format!("path={}", d0.display())])
        .args(["--cmdline", "probe.exit=hang"])
        .env("EDGEVISOR_SECCOMP_SELFTEST", "event-loop")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(10), "{}", show(&o));
    assert!(
        stderr(&o).contains("the event-loop thread made syscall 79"),
        "{}",
        show(&o)
    );
    // Without devices there is no event loop, and the guest runs as before.
    let o = Command::new(env!("CARGO_BIN_EXE_edgevisor"))
        .args(["run"])
        .env("EDGEVISOR_SECCOMP_SELFTEST", "event-loop")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
}

#[test]
fn bad_device_options_are_refused_before_anything_runs() {
    let dir = Scratch::new("virtio-bad");
    let d0 = disk(&dir, "a.img", 16);
    let missing = dir.0.join("missing.img");
    let tiny = dir.file("tiny.img", &[0u8; 100]);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--disk".into(), format!("path={}", missing.display())],
            "cannot open disk image",
        ),
        (
            vec!["--disk".into(), format!("path={}", tiny.display())],
            "smaller than one 512-byte sector",
        ),
        (
            vec!["--disk".into(), format!("path={},cache=none", d0.display())],
            "writeback or unsafe",
        ),
        (vec!["--disk".into(), "readonly=on".into()], "needs path="),
        (vec!["--vsock".into(), "cid=1,uds=/tmp/x".into()], "from 3"),
        (
            vec!["--net".into(), "tap=a-name-far-too-long".into()],
            "15 characters",
        ),
        (
            (0..10)
                .flat_map(|_| ["--disk".to_string(), "path=/nonexistent".to_string()])
                .collect(),
            "at most 9",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["run".to_string()];
        all.extend(args.iter().cloned());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let o = edgevisor(&refs);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", show(&o));
        let err = stderr(&o);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            !stdout(&o).contains("probe:"),
            "{args:?} booted: {}",
            show(&o)
        );
    }
}

#[test]
fn a_disk_in_use_by_a_running_vm_is_refused() {
    let dir = Scratch::new("virtio-lock");
    let d0 = disk(&dir, "shared.img", 16);
    let disk_arg = format!("path={}", d0.display());
    let mut first = Command::new(env!("CARGO_BIN_EXE_edgevisor"))
        .args(["run", "--disk", &disk_arg, "--cmdline", "probe.exit=hang"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first VM took the lock before booting: wait for its guest to be running.
    let stdout = first.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("PROBE PASS") {
                let _ = tx.send(());
            }
        }
    });
    let running = rx.recv_timeout(Duration::from_secs(20)).is_ok();
    let second = edgevisor(&["run", "--disk", &disk_arg]);
    let _ = first.kill();
    let _ = first.wait();
    assert!(running, "the first VM never booted");
    assert_eq!(second.status.code(), Some(2), "{}", show(&second));
    assert!(
        stderr(&second).contains("is in use by another VM"),
        "{}",
        show(&second)
    );
    // Once the first VM is gone the image is free again.
    let o = edgevisor(&["run", "--disk", &disk_arg]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    firmware::fnv1a64(bytes)
}

#[test]
fn the_probe_reads_writes_and_flushes_a_disk_and_reads_entropy() {
    let dir = Scratch::new("virtio-e2e");
    let mut image = vec![0u8; 64 * 512];
    for (i, b) in image[..512].iter_mut().enumerate() {
        *b = (i * 13 + 7) as u8;
    }
    let path = dir.file("disk.img", &image);
    let report = dir.0.join("report.json");
    let o = edgevisor(&[
        "run",
        "--disk",
        &format!("path={}", path.display()),
        "--rng",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = stdout(&o);
    let blk = format!(
        "probe: virtio-blk base=0xd0000000 capacity=64 read0_fnv1a64={:#018x} write=ok flush=ok",
        fnv1a64(&image[..512])
    );
    assert!(out.contains(&blk), "no {blk:?} in {}", show(&o));
    assert!(
        out.contains("probe: virtio-rng base=0xd0001000 bytes=64"),
        "{}",
        show(&o)
    );
    assert!(out.contains("PROBE PASS"), "{}", show(&o));
    // The guest's write of sector 1 is in the host file, and nothing else changed.
    let after = std::fs::read(&path).unwrap();
    assert_eq!(&after[512..1024], &firmware::block_check_pattern()[..]);
    assert_eq!(&after[..512], &image[..512]);
    assert!(after[1024..].iter().all(|b| *b == 0));
    // The flush reached fsync: the report counts it, with the bytes moved.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let block = &json["virtio"]["block0"];
    assert_eq!(block["flushes"], 1, "{block}");
    assert_eq!(block["write_bytes"], 512, "{block}");
    assert_eq!(block["read_bytes"], 1024, "{block}");
    assert_eq!(block["malformed_chains"], 0, "{block}");
    assert_eq!(json["virtio"]["rng0"]["rx_bytes"], 64);
    // The driver programmed the two devices' registers (status, features, queue addresses)
    // through MMIO exits; its kicks went to ioeventfds and never reached the VMM.
    let exits = &json["counters"]["exits"];
    assert!(exits["mmio_write"].as_u64().unwrap() > 20, "{exits}");
    assert!(exits["mmio_read"].as_u64().unwrap() > 0, "{exits}");
}

#[test]
fn a_read_only_disk_stays_untouched_and_unsafe_cache_offers_no_flush() {
    let dir = Scratch::new("virtio-ro");
    let image: Vec<u8> = (0..32 * 512).map(|i| (i % 251) as u8).collect();
    let ro = dir.file("ro.img", &image);
    let o = edgevisor(&[
        "run",
        "--disk",
        &format!("path={},readonly=on", ro.display()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).contains("write=ro flush=none"), "{}", show(&o));
    assert_eq!(std::fs::read(&ro).unwrap(), image);
    let un = dir.file("unsafe.img", &image);
    let o = edgevisor(&[
        "run",
        "--disk",
        &format!("path={},cache=unsafe", un.display()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).contains("write=ok flush=none"), "{}", show(&o));
    let after = std::fs::read(&un).unwrap();
    assert_eq!(&after[512..1024], &firmware::block_check_pattern()[..]);
}

#[test]
fn a_guest_vsock_stream_reaches_the_host_unix_socket_and_back() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    let dir = Scratch::new("virtio-vsock");
    let uds = dir.0.join("vm.vsock");
    // Firecracker's hybrid model: a guest connecting to host port P reaches `<uds>_P`.
    let listener = UnixListener::bind(dir.0.join("vm.vsock_5000")).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
            got.push(byte[0]);
        }
        stream.write_all(b"hello from the host\n").unwrap();
        got
    });
    let o = edgevisor(&[
        "run",
        "--vsock",
        &format!("cid=7,uds={}", uds.display()),
        "--cmdline",
        "probe.vsock=5000",
    ]);
    let got = server.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(got, firmware::VSOCK_MESSAGE, "what the guest sent");
    assert!(
        stdout(&o).contains(
            "probe: virtio-vsock base=0xd0000000 guest_cid=7 port=5000 reply=\"hello from the host\""
        ),
        "{}",
        show(&o)
    );
    assert!(!uds.exists(), "the listening socket was left behind");
}
