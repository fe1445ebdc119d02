//! Seccomp filters per thread kind, checked through the `edgevisor` binary: real boots pass
//! under the filters, a forbidden syscall ends the process with a message naming the thread
//! and the syscall, `--no-seccomp` turns the filters off, and /proc shows filter mode 2 on
//! the vCPU and main threads of a running VM.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;
use common::*;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Exit code of a seccomp violation (docs/GUEST_INTERFACE.md).
const EXIT_SECCOMP_VIOLATION: i32 = 10;

fn run_with_selftest(thread: &str, extra: &[&str]) -> Output {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_edgevisor"))
        .args(&args)
        .env("EDGEVISOR_SECCOMP_SELFTEST", thread)
        .stdin(Stdio::null())
        .output()
        .expect("spawn edgevisor")
}

#[test]
fn every_guest_exit_works_under_the_filters() {
    let dir = Scratch::new("seccomp-exits");
    for (mode, code) in [
        ("poweroff", 0),
        ("reset", 0),
        ("panic", 4),
        ("debug=5", 11),
        ("triple", 6),
    ] {
        for vcpus in ["1", "2"] {
            let report = dir.0.join(format!("report-{mode}-{vcpus}.json"));
            let cmdline = format!("probe.exit={mode}");
            let o = edgevisor(&[
                "run",
                "--vcpus",
                vcpus,
                "--cmdline",
                &cmdline,
                "--timings",
                "--report",
                report.to_str().unwrap(),
            ]);
            assert_eq!(o.status.code(), Some(code), "{mode} {vcpus}: {}", show(&o));
            assert!(stdout(&o).contains("PROBE PASS"), "{}", show(&o));
            assert!(!stderr(&o).contains("seccomp"), "{}", show(&o));
            // The main thread wrote the report under its filter.
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
            assert_eq!(json["exit_code"], code, "{json}");
        }
    }
}

#[test]
fn a_forbidden_syscall_names_the_thread_and_ends_the_process() {
    let getcwd = format!("made syscall {},", libc::SYS_getcwd);
    for thread in ["vcpu", "main"] {
        let o = run_with_selftest(thread, &[]);
        assert_eq!(
            o.status.code(),
            Some(EXIT_SECCOMP_VIOLATION),
            "{thread}: {}",
            show(&o)
        );
        let err = stderr(&o);
        let expected = format!("edgevisor: seccomp: the {thread} thread {getcwd}");
        assert!(err.contains(&expected), "{thread}: {}", show(&o));
        assert!(err.contains("--no-seccomp"), "{}", show(&o));
        // The process ended there: the guest's verdict never reached a report line.
        assert!(!err.contains("guest exited"), "{}", show(&o));
    }
}

#[test]
fn no_seccomp_lets_the_same_syscall_through() {
    for thread in ["vcpu", "main"] {
        let o = run_with_selftest(thread, &["--no-seccomp"]);
        assert_eq!(o.status.code(), Some(0), "{thread}: {}", show(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("the {thread} thread's getcwd returned ")),
            "{}",
            show(&o)
        );
        assert!(!err.contains("made syscall"), "{}", show(&o));
        assert!(stdout(&o).contains("PROBE PASS"), "{}", show(&o));
    }
}

/// The `Seccomp:` mode in a /proc status file (0 off, 2 filter).
fn seccomp_mode(status: &Path) -> Option<u32> {
    std::fs::read_to_string(status)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The thread id of `pid`'s thread named `name`.
fn thread_named(pid: u32, name: &str) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .and_then(|t| t.file_name().to_str()?.parse().ok())
}

/// Starts a hanging probe with stdin piped, and waits until vcpu0 and the main thread both
/// report `want` as their seccomp mode; returns the child and the modes seen.
fn hanging_vm(extra: &[&str], want: u32) -> (Child, Option<u32>, Option<u32>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgevisor"))
        .args(["run", "--cmdline", "probe.exit=hang", "--vcpus", "2"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn edgevisor");
    let pid = child.id();
    let main_status = format!("/proc/{pid}/task/{pid}/status");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut vcpu, mut main) = (None, None);
    while Instant::now() < deadline {
        vcpu = thread_named(pid, "vcpu0")
            .and_then(|tid| seccomp_mode(Path::new(&format!("/proc/{pid}/task/{tid}/status"))));
        main = seccomp_mode(Path::new(&main_status));
        if vcpu == Some(want) && main == Some(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The stdin forwarder reads under the main thread's filter.
    if let Some(stdin) = child.stdin.as_mut() {
        let _ = stdin.write_all(b"hello guest\n");
    }
    drop(child.stdin.take());
    std::thread::sleep(Duration::from_millis(100));
    (child, vcpu, main)
}

fn stop(child: Child) -> Output {
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    child.wait_with_output().expect("wait for edgevisor")
}

#[test]
fn running_vcpu_and_main_threads_are_in_filter_mode() {
    let (child, vcpu, main) = hanging_vm(&[], 2);
    let o = stop(child);
    assert_eq!((vcpu, main), (Some(2), Some(2)), "{}", show(&o));
    // SIGTERM went through the signal helper thread, under the inherited main filter.
    assert_eq!(o.status.code(), Some(8), "{}", show(&o));
    assert!(stderr(&o).contains("stopped from outside"), "{}", show(&o));
    assert!(!stderr(&o).contains("seccomp"), "{}", show(&o));

    let (child, vcpu, main) = hanging_vm(&["--no-seccomp"], 0);
    let o = stop(child);
    assert_eq!((vcpu, main), (Some(0), Some(0)), "{}", show(&o));
    assert_eq!(o.status.code(), Some(8), "{}", show(&o));
}
