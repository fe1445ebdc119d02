//! One guest through its whole life over the agent's API, on real KVM.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;

use common::{vm_processes, wait_until, Agent};

#[test]
fn a_guest_is_created_started_paused_resumed_stopped_restarted_and_deleted() {
    let agent = Agent::start("lifecycle");
    let a = agent.tcp("POST", "/v1/guests", &agent.probe_guest("web", 16));
    assert_eq!(a.status, 201, "{}", a.text());
    let doc = a.json();
    assert_eq!(doc["state"], "created");
    assert_eq!(doc["config"]["machine-config"]["mem_size_mib"], 16);
    assert!(vm_processes(&agent.state_dir()).is_empty());

    let doc = agent.tcp("PUT", "/v1/guests/web/start", b"").json();
    assert_eq!(doc["state"], "running", "{doc}");
    assert_eq!(doc["desired"], "running");
    let pid = doc["pid"].as_u64().unwrap() as u32;
    assert_eq!(
        vm_processes(&agent.state_dir()),
        vec![(pid, "web".to_string())]
    );
    assert_eq!(doc["boot"]["mem_mib"], 16);
    assert!(doc["timings"]["kvm_ready_us"].as_u64().is_some(), "{doc}");
    // The VM runs in its own session: the agent's signals and terminal do not reach it.
    // SAFETY: getsid on a pid has no memory effects.
    let session = unsafe { libc::getsid(pid as libc::pid_t) };
    assert_eq!(session, pid as libc::pid_t);

    let a = agent.tcp("PUT", "/v1/guests/web/start", b"");
    assert_eq!(
        a.status,
        409,
        "a second start must be refused: {}",
        a.text()
    );

    wait_until(30, "the probe printed its verdict", || {
        agent
            .tcp("GET", "/v1/guests/web/console", b"")
            .text()
            .contains("PROBE PASS")
    });
    let console = agent.unix("GET", "/v1/guests/web/console", b"");
    assert_eq!(console.status, 200);
    assert!(console.content_type.starts_with("text/plain"));
    assert!(console
        .text()
        .contains("probe: cmdline=\"probe.exit=hang\""));

    // Over the Unix socket no token is needed.
    let doc = agent.unix("PUT", "/v1/guests/web/pause", b"").json();
    assert_eq!(
        (doc["state"].as_str(), doc["desired"].as_str()),
        (Some("paused"), Some("paused"))
    );
    let doc = agent.tcp("GET", "/v1/guests/web", b"").json();
    assert_eq!(doc["state"], "paused");
    let doc = agent.tcp("PUT", "/v1/guests/web/resume", b"").json();
    assert_eq!(doc["state"], "running");
    assert!(doc["timings"]["guest_main_us"].as_u64().is_some(), "{doc}");

    let doc = agent.tcp("PUT", "/v1/guests/web/stop", b"").json();
    assert_eq!(doc["state"], "exited", "{doc}");
    assert_eq!(doc["desired"], "stopped");
    assert_eq!(doc["exit"]["reason"], "stopped");
    assert_eq!(doc["exit"]["exit_code"], 8);
    assert!(doc["pid"].is_null());
    assert!(vm_processes(&agent.state_dir()).is_empty());
    let guest_dir = agent.state_dir().join("guests/web");
    assert!(!guest_dir.join("api.sock").exists(), "socket left behind");
    let a = agent.tcp("PUT", "/v1/guests/web/pause", b"");
    assert_eq!(a.status, 409, "{}", a.text());

    // A second start is a new generation with a new process.
    let doc = agent.tcp("PUT", "/v1/guests/web/start", b"").json();
    assert_eq!(doc["state"], "running");
    assert_eq!(doc["generation"], 2);
    assert!(doc["exit"].is_null(), "the old exit is cleared: {doc}");
    let pid2 = doc["pid"].as_u64().unwrap() as u32;
    assert_ne!(pid2, pid);

    let a = agent.tcp("DELETE", "/v1/guests/web", b"");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["exit"]["reason"], "stopped");
    assert!(vm_processes(&agent.state_dir()).is_empty(), "VM leaked");
    assert!(!guest_dir.exists(), "guest directory left behind");
    assert!(agent.states().is_empty());
    assert_eq!(agent.tcp("GET", "/v1/guests/web", b"").status, 404);
}

#[test]
fn a_guest_that_cannot_boot_reports_why() {
    let agent = Agent::start("lifecycle-bad");
    let body = serde_json::json!({
        "id": "nokernel",
        "boot-source": {"kernel_image_path": agent.dir.0.join("missing.elf")},
    });
    let a = agent.tcp("POST", "/v1/guests", body.to_string().as_bytes());
    assert_eq!(a.status, 201, "{}", a.text());
    let a = agent.tcp("PUT", "/v1/guests/nokernel/start", b"");
    assert_eq!(a.status, 422, "{}", a.text());
    let msg = a.json()["error"].as_str().unwrap().to_string();
    assert!(
        msg.contains("nokernel") && msg.contains("missing.elf"),
        "{msg}"
    );
    let doc = agent.tcp("GET", "/v1/guests/nokernel", b"").json();
    assert_eq!(doc["state"], "exited");
    assert_eq!(doc["exit"]["exit_code"], 2);
    assert!(vm_processes(&agent.state_dir()).is_empty());
}

#[test]
fn the_unix_socket_is_private_and_a_second_agent_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let agent = Agent::start("lifecycle-second");
    let mode = std::fs::metadata(agent.unix_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the token-free socket must be private");
    let other_sock = agent.dir.0.join("other.sock");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgevisor-agent"))
        .arg("--state-dir")
        .arg(agent.state_dir())
        .arg("--unix")
        .arg(&other_sock)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("another edgevisor-agent uses the state directory"),
        "{stderr}"
    );
    assert!(!other_sock.exists());
    // The first agent is unaffected.
    assert_eq!(agent.unix("GET", "/v1/guests", b"").status, 200);
}
