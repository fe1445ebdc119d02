//! Virtio devices from the `edgevisor` command line: where the guest finds them, the device
//! event loop under its seccomp filter, and bad device options refused before anything runs.

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    // Wait until the first VM holds the lock (it takes it before booting).
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        let o = edgevisor(&["run", "--disk", &disk_arg]);
        if o.status.code() == Some(2) || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = first.kill();
    let _ = first.wait();
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
