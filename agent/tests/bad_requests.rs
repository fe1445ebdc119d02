//! Bad requests get a 4xx with a clear JSON message and change nothing.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;

use std::io::Write;

use common::{exchange, request_bytes, vm_processes, Agent};

/// Everything a bad request must leave alone: the listing and the files on disk.
fn snapshot(agent: &Agent) -> (Vec<(String, String)>, Vec<String>) {
    let mut files: Vec<String> = walk(&agent.state_dir().join("guests"));
    files.sort();
    (agent.states(), files)
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        // console.log grows on its own; every other file must stay as it was.
        if p.file_name().is_some_and(|n| n == "console.log") {
            continue;
        }
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            let bytes = std::fs::read(&p).unwrap_or_default();
            out.push(format!(
                "{} {}",
                p.display(),
                String::from_utf8_lossy(&bytes)
            ));
        }
    }
    out
}

fn assert_error(a: &common::Answer, status: u16, needle: &str) {
    assert_eq!(a.status, status, "{}", a.text());
    assert_eq!(a.content_type, "application/json");
    let msg = a.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.to_lowercase().contains(&needle.to_lowercase()),
        "error {msg:?} does not mention {needle:?}"
    );
}

#[test]
fn bad_requests_are_refused_with_a_reason_and_change_nothing() {
    let agent = Agent::start("bad");
    agent.run_guest("keep");
    let stopped = agent.tcp("POST", "/v1/guests", &agent.probe_guest("idle", 16));
    assert_eq!(stopped.status, 201);
    let before = snapshot(&agent);
    let vms_before = vm_processes(&agent.state_dir());
    assert_eq!(vms_before.len(), 1);

    let fw = agent.dir.0.join("fw/linux64.elf");
    let body = |extra: &str| {
        format!(
            r#"{{"id": "new", "boot-source": {{"kernel_image_path": {:?}}}{extra}}}"#,
            fw.display()
        )
    };
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "POST",
            "/v1/guests".into(),
            b"{\"id\": \"new\", ".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "POST",
            "/v1/guests".into(),
            b"[1, 2]".to_vec(),
            400,
            "not a JSON object",
        ),
        (
            "POST",
            "/v1/guests".into(),
            body(r#", "turbo": true"#).into_bytes(),
            400,
            "turbo",
        ),
        (
            "POST",
            "/v1/guests".into(),
            body(r#", "machine-config": {"mem_size_mib": 16, "vcpu_cnt": 1}"#).into_bytes(),
            400,
            "vcpu_cnt",
        ),
        (
            "POST",
            "/v1/guests".into(),
            body(r#", "machine-config": {"vcpu_count": 999}"#).into_bytes(),
            400,
            "vCPU count 999",
        ),
        (
            "POST",
            "/v1/guests".into(),
            br#"{"id": "../etc", "boot-source": {"kernel_image_path": "/k"}}"#.to_vec(),
            400,
            "not valid",
        ),
        (
            "POST",
            "/v1/guests".into(),
            agent.probe_guest("keep", 16),
            409,
            "exists already",
        ),
        ("GET", "/v1/guests/ghost".into(), vec![], 404, "ghost"),
        ("PUT", "/v1/guests/ghost/start".into(), vec![], 404, "ghost"),
        ("DELETE", "/v1/guests/ghost".into(), vec![], 404, "ghost"),
        (
            "GET",
            "/v1/guests/ghost/console".into(),
            vec![],
            404,
            "ghost",
        ),
        (
            "PUT",
            "/v1/guests/idle/stop".into(),
            vec![],
            409,
            "start it first",
        ),
        (
            "PUT",
            "/v1/guests/idle/pause".into(),
            vec![],
            409,
            "start it first",
        ),
        (
            "PUT",
            "/v1/guests/keep/start".into(),
            vec![],
            409,
            "running",
        ),
        (
            "PUT",
            "/v1/guests/keep/reboot".into(),
            vec![],
            404,
            "no such resource",
        ),
        ("POST", "/v1/guests/keep".into(), vec![], 405, "not allowed"),
        ("GET", "/v2/guests".into(), vec![], 404, "/v1"),
    ];
    for (method, path, body, status, needle) in &cases {
        let a = agent.tcp(method, path, body);
        assert_error(&a, *status, needle);
        // The same over the Unix socket.
        let a = agent.unix(method, path, body);
        assert_error(&a, *status, needle);
    }

    // A body over 1 MiB is refused from its Content-Length, before it is read.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    let head = format!(
        "POST /v1/guests HTTP/1.1\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        common::TOKEN,
        2 << 20
    );
    let a = exchange(&mut s, head.as_bytes());
    assert_error(&a, 413, "limit");
    // Also when the client really sends it all.
    let mut big = agent.probe_guest("big", 16);
    big.pop();
    big.extend_from_slice(b", \"pad\": \"");
    big.extend(std::iter::repeat_n(b'x', (1 << 20) + 10));
    big.extend_from_slice(b"\"}");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let raw = request_bytes("POST", "/v1/guests", &big, Some(common::TOKEN));
        std::thread::spawn(move || {
            let _ = w.write_all(&raw);
        })
    };
    let a = exchange(&mut s, b"");
    let _ = writer.join();
    assert_error(&a, 413, "limit");

    // Chunked bodies are not accepted.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    let raw = format!(
        "POST /v1/guests HTTP/1.1\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        common::TOKEN
    );
    assert_error(&exchange(&mut s, raw.as_bytes()), 411, "Content-Length");
    // Garbage is not HTTP.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    assert_error(&exchange(&mut s, b"HELLO\r\n\r\n"), 400, "request line");

    // TCP needs the token: none, a wrong one and a prefix of the right one are refused.
    for token in [None, Some("wrong"), Some(&common::TOKEN[..10])] {
        let a = agent.tcp_with_token("DELETE", "/v1/guests/keep", b"", token);
        assert_error(&a, 401, "bearer token");
        let a = agent.tcp_with_token("POST", "/v1/guests", &agent.probe_guest("x", 16), token);
        assert_error(&a, 401, "bearer token");
    }

    assert_eq!(
        snapshot(&agent),
        before,
        "a bad request changed the agent's state"
    );
    assert_eq!(vm_processes(&agent.state_dir()), vms_before);
    assert_eq!(agent.tcp("DELETE", "/v1/guests/keep", b"").status, 200);
    assert!(vm_processes(&agent.state_dir()).is_empty());
}

#[test]
fn connections_beyond_the_bound_get_503_and_the_agent_recovers() {
    let agent = Agent::start("bad-bound");
    // Idle connections hold their threads until they send or time out.
    let idle: Vec<_> = (0..agent::server::MAX_CONNECTIONS)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", agent.port)).unwrap())
        .collect();
    let a = common::Agent::tcp(&agent, "GET", "/v1/guests", b"");
    assert_error(&a, 503, "retry");
    drop(idle);
    common::wait_until(10, "the agent serves again", || {
        agent.tcp("GET", "/v1/guests", b"").status == 200
    });
}
