//! Crash safety: guests outlive the agent, a restarted agent re-adopts them, and an agent
//! killed (-9) in the middle of operations loses, duplicates and leaks no guest.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use common::{request_bytes, vm_processes, wait_until, Agent, TOKEN};
use serde_json::Value;

fn guest(agent: &Agent, id: &str) -> Value {
    let a = agent.tcp("GET", &format!("/v1/guests/{id}"), b"");
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()
}

/// Waits until `pid` is a zombie or gone: its /proc cmdline empties while it still exits.
fn wait_dead(pid: u64) {
    wait_until(10, "the VM process is gone", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    });
}

#[test]
fn guests_outlive_a_killed_agent_and_are_readopted() {
    let mut agent = Agent::start("crash-adopt");
    let a_pid = agent.run_guest("a")["pid"].as_u64().unwrap();
    let b_pid = agent.run_guest("b")["pid"].as_u64().unwrap();
    let c_pid = agent.run_guest("c")["pid"].as_u64().unwrap();
    assert_eq!(agent.tcp("PUT", "/v1/guests/b/pause", b"").status, 200);
    assert_eq!(
        agent
            .tcp("POST", "/v1/guests", &agent.probe_guest("d", 16))
            .status,
        201
    );
    let e_pid = agent.run_guest("e")["pid"].as_u64().unwrap();
    let before = vm_processes(&agent.state_dir());
    assert_eq!(before.len(), 4);

    agent.kill9();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        vm_processes(&agent.state_dir()),
        before,
        "a VM died with the agent"
    );
    // While the agent is away, c's VM is killed.
    // SAFETY: kill(2) on the VM process this test started.
    unsafe { libc::kill(c_pid as libc::pid_t, libc::SIGKILL) };
    wait_dead(c_pid);
    assert!(agent.state_dir().join("guests/c/api.sock").exists());
    // And e's VM is stopped through its own socket, so it writes an exit report.
    let e_sock = agent.state_dir().join("guests/e/api.sock");
    let (status, _) = vmm::api::call(&e_sock, "PUT", "/stop", Duration::from_secs(5)).unwrap();
    assert_eq!(status, 200);
    wait_dead(e_pid);
    assert!(!e_sock.exists(), "a VM that ends removes its socket");
    assert_eq!(vm_processes(&agent.state_dir()).len(), 2);

    agent.launch();
    let a = guest(&agent, "a");
    assert_eq!(
        (a["state"].as_str(), a["pid"].as_u64()),
        (Some("running"), Some(a_pid))
    );
    let b = guest(&agent, "b");
    assert_eq!(
        (b["state"].as_str(), b["pid"].as_u64()),
        (Some("paused"), Some(b_pid))
    );
    let c = guest(&agent, "c");
    assert_eq!(c["state"], "exited", "{c}");
    assert_eq!(c["ended_while_agent_was_away"], true);
    assert_eq!(c["exit"]["reason"], "vanished", "{c}");
    assert!(
        !agent.state_dir().join("guests/c/api.sock").exists(),
        "orphaned socket kept"
    );
    assert_eq!(guest(&agent, "d")["state"], "created");
    let e = guest(&agent, "e");
    assert_eq!(e["state"], "exited", "{e}");
    assert_eq!(e["ended_while_agent_was_away"], true);
    assert_eq!(
        e["exit"]["reason"], "stopped",
        "the reason comes from the report: {e}"
    );
    assert_eq!(e["exit"]["exit_code"], 8);
    assert!(agent
        .log()
        .contains("guest c: its VM ended while the agent was away"));

    // The adopted VMs are fully controllable: resume b, stop a (its report tells why).
    assert_eq!(
        agent.tcp("PUT", "/v1/guests/b/resume", b"").json()["state"],
        "running"
    );
    let a = agent.tcp("PUT", "/v1/guests/a/stop", b"").json();
    assert_eq!(a["exit"]["reason"], "stopped", "{a}");
    assert_eq!(
        vm_processes(&agent.state_dir()),
        vec![(b_pid as u32, "b".to_string())]
    );

    // A second restart finds the same picture (a's exit now comes from its report).
    agent.kill9();
    agent.launch();
    let a = guest(&agent, "a");
    assert_eq!(
        (a["state"].as_str(), a["exit"]["reason"].as_str()),
        (Some("exited"), Some("stopped"))
    );
    assert_eq!(guest(&agent, "b")["pid"].as_u64(), Some(b_pid));
    for id in ["a", "b", "c", "d", "e"] {
        assert_eq!(
            agent.tcp("DELETE", &format!("/v1/guests/{id}"), b"").status,
            200
        );
    }
    assert!(vm_processes(&agent.state_dir()).is_empty());
}

/// Sends a request and ignores whatever happens (the agent may be killed meanwhile).
fn fire(port: u16, method: &str, path: &str, body: &[u8]) {
    if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = s.write_all(&request_bytes(method, path, body, Some(TOKEN)));
        let _ = s.read_to_end(&mut Vec::new());
    }
}

/// What must hold after any crash: each listed guest has at most one VM, exactly one when
/// its state says it runs, none otherwise; no VM runs for an unlisted guest; the desired
/// state of a guest agrees with what runs; no half-made directories.
fn check_invariants(agent: &Agent, round: &str) -> BTreeMap<String, Value> {
    let listed: BTreeMap<String, Value> = agent.tcp("GET", "/v1/guests", b"").json()["guests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["id"].as_str().unwrap().to_string(), g.clone()))
        .collect();
    let vms = vm_processes(&agent.state_dir());
    for (pid, id) in &vms {
        let g = listed
            .get(id)
            .unwrap_or_else(|| panic!("{round}: VM {pid} of unlisted guest {id} leaked"));
        assert_eq!(g["pid"].as_u64(), Some(*pid as u64), "{round}: {g}");
    }
    for (id, g) in &listed {
        let count = vms.iter().filter(|(_, v)| v == id).count();
        let state = g["state"].as_str().unwrap();
        let runs = matches!(state, "running" | "paused");
        assert_eq!(
            count,
            usize::from(runs),
            "{round}: guest {id} in state {state} has {count} VMs"
        );
        let desired = g["desired"].as_str().unwrap();
        assert_eq!(
            runs,
            matches!(desired, "running" | "paused"),
            "{round}: guest {id} is {state} but should be {desired}: {g}\n{}",
            agent.log()
        );
    }
    let mut dirs: Vec<String> = std::fs::read_dir(agent.state_dir().join("guests"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, listed.keys().cloned().collect::<Vec<_>>(), "{round}");
    listed
}

#[test]
fn an_agent_killed_mid_operation_loses_duplicates_and_leaks_no_guest() {
    for (round, delay_ms) in [0u64, 3, 8, 15, 30, 60].into_iter().enumerate() {
        let tag = format!("crash-mid-{round}");
        let mut agent = Agent::start(&tag);
        agent.run_guest("old");
        agent.run_guest("doomed");
        agent.run_guest("paused");
        assert_eq!(
            agent
                .tcp("POST", "/v1/guests", &agent.probe_guest("new", 16))
                .status,
            201
        );
        let port = agent.port;
        let ops: Vec<(&str, &str)> = vec![
            ("PUT", "/v1/guests/new/start"),
            ("PUT", "/v1/guests/old/stop"),
            ("DELETE", "/v1/guests/doomed"),
            ("PUT", "/v1/guests/paused/pause"),
        ];
        let threads: Vec<_> = ops
            .into_iter()
            .map(|(m, p)| std::thread::spawn(move || fire(port, m, p, b"")))
            .collect();
        std::thread::sleep(Duration::from_millis(delay_ms));
        agent.kill9();
        for t in threads {
            let _ = t.join();
        }
        agent.launch();
        let round_name = format!("round {round} (kill after {delay_ms} ms)");
        let listed = check_invariants(&agent, &round_name);
        // What the restarted agent had to finish, for the test's output.
        for line in agent.log().lines().filter(|l| l.contains("finished")) {
            eprintln!("{round_name}: {line}");
        }
        // Guests nobody asked to delete are all still there.
        for id in ["old", "new", "paused"] {
            assert!(listed.contains_key(id), "{round_name}: guest {id} was lost");
        }
        // The operations can be finished by hand and leave nothing behind.
        for id in listed.keys() {
            let a = agent.tcp("DELETE", &format!("/v1/guests/{id}"), b"");
            assert_eq!(a.status, 200, "{round_name}: {}", a.text());
        }
        assert!(vm_processes(&agent.state_dir()).is_empty(), "{round_name}");
    }
}
