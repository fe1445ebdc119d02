//! `edgevisor run --api-socket`: the per-VM control socket, driven from outside the process.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Scratch;
use vmm::api::call;

const TIMEOUT: Duration = Duration::from_secs(5);

fn spawn_hung_probe(dir: &Scratch, extra_env: Option<(&str, &str)>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgevisor"));
    cmd.args(["run", "--cmdline", "probe.exit=hang", "--api-socket"])
        .arg(dir.0.join("vm.sock"))
        .arg("--report")
        .arg(dir.0.join("report.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((k, v)) = extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn edgevisor")
}

/// Waits until the guest runs and has begun to print (its first serial byte is stamped).
fn wait_until_booted(sock: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, doc)) = call(sock, "GET", "/state", TIMEOUT) {
            if !doc["timings"]["first_serial_byte_us"].is_null() {
                return doc;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the VM never came up on {sock:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_hung_probe_is_paused_resumed_and_stopped_through_its_socket() {
    let dir = Scratch::new("api-socket");
    let sock = dir.0.join("vm.sock");
    let child = spawn_hung_probe(&dir, None);
    let doc = wait_until_booted(&sock);
    assert_eq!(doc["state"], "running");
    assert_eq!(doc["pid"], child.id());
    assert_eq!(doc["boot"]["image"], "builtin probe");
    assert_eq!(doc["boot"]["mem_mib"], 64);
    // vCPU exits by kind: every kind is listed; the probe printed, so port writes exited.
    let exits = &doc["counters"]["exits"];
    assert_eq!(exits.as_object().map(|m| m.len()), Some(11), "{doc}");
    let booted_io_out = exits["io_out"].as_u64().unwrap();
    assert!(booted_io_out > 0, "{doc}");
    assert_eq!(exits["internal_error"], 0);

    let (status, doc) = call(&sock, "PUT", "/pause", TIMEOUT).unwrap();
    assert_eq!((status, doc["state"].as_str()), (200, Some("paused")));
    let (_, doc) = call(&sock, "GET", "/state", TIMEOUT).unwrap();
    assert_eq!(doc["state"], "paused");
    let (status, doc) = call(&sock, "PUT", "/resume", TIMEOUT).unwrap();
    assert_eq!((status, doc["state"].as_str()), (200, Some("running")));
    // Pausing kicked the vCPU with a signal. If it was in KVM_RUN, that returned at once;
    // if it was handling a port exit, the kick left immediate_exit set and the first
    // KVM_RUN after the resume returns instead. Either way one "intr" return is counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, doc) = call(&sock, "GET", "/state", TIMEOUT).unwrap();
        if doc["counters"]["exits"]["intr"].as_u64().unwrap() >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no kick was counted: {doc}");
        std::thread::sleep(Duration::from_millis(20));
    }

    let (status, doc) = call(&sock, "GET", "/pause", TIMEOUT).unwrap();
    assert_eq!(status, 405, "{doc}");
    let (status, doc) = call(&sock, "GET", "/nothing", TIMEOUT).unwrap();
    assert_eq!(status, 404);
    assert!(doc["error"].as_str().unwrap().contains("/nothing"), "{doc}");

    let (status, doc) = call(&sock, "PUT", "/stop", TIMEOUT).unwrap();
    assert_eq!(status, 200);
    assert_eq!(doc["state"], "exited");
    assert_eq!(doc["exit"]["reason"], "stopped");

    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(!sock.exists(), "the socket file outlived the VM");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["exit"]["reason"], "stopped");
    assert_eq!(report["exit_code"], 8);
    assert!(report["counters"]["exits"]["io_out"].as_u64().unwrap() >= booted_io_out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("probe"));
}

#[test]
fn a_socket_path_in_use_boots_nothing() {
    let dir = Scratch::new("api-socket-busy");
    let sock = dir.0.join("vm.sock");
    let first = spawn_hung_probe(&dir, None);
    wait_until_booted(&sock);
    let second = common::edgevisor(&[
        "run",
        "--cmdline",
        "probe.exit=hang",
        "--api-socket",
        sock.to_str().unwrap(),
    ]);
    assert_eq!(second.status.code(), Some(2), "{}", common::show(&second));
    assert!(common::stderr(&second).contains("in use"));
    assert!(
        !common::stdout(&second).contains("probe:"),
        "a guest booted"
    );
    // The first VM is untouched and still answers.
    let (status, _) = call(&sock, "PUT", "/stop", TIMEOUT).unwrap();
    assert_eq!(status, 200);
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(8));
}

#[test]
fn the_api_thread_runs_under_its_own_seccomp_filter() {
    let dir = Scratch::new("api-socket-seccomp");
    let child = spawn_hung_probe(&dir, Some((vmm::seccomp::SELFTEST_ENV, "api")));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(vmm::seccomp::EXIT_SECCOMP_VIOLATION),
        "{stderr}"
    );
    assert!(stderr.contains("the api thread made syscall"), "{stderr}");
}
