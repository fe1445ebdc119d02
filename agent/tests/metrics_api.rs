//! `/metrics` and `/v1/node/capabilities` served by the agent, with real guests: per-VM
//! series come from the supervisor, and cumulative counters survive a VM restart.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;

use common::Agent;

/// The value of the sample line starting with `prefix` (name and labels).
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool not found: run scripts/install-test-deps.sh (package prometheus)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let findings =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool: {findings}\n{text}"
    );
}

/// A scrape asking for OpenMetrics, as Prometheus does.
fn openmetrics(agent: &Agent) -> common::Answer {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    let raw = format!(
        "GET /metrics HTTP/1.1\r\nAuthorization: Bearer {}\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
        common::TOKEN
    );
    common::exchange(&mut s, raw.as_bytes())
}

#[test]
fn metrics_describe_the_guests_and_counters_never_go_backwards() {
    let agent = Agent::start("metrics");
    agent.run_guest("m1");
    assert_eq!(
        agent
            .tcp("POST", "/v1/guests", &agent.probe_guest("m2", 16))
            .status,
        201
    );
    common::wait_until(30, "m1 booted", || {
        agent
            .tcp("GET", "/v1/guests/m1/console", b"")
            .text()
            .contains("PROBE PASS")
    });

    let a = openmetrics(&agent);
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(
        a.content_type.starts_with("application/openmetrics-text"),
        "{}",
        a.content_type
    );
    let text = a.text();
    assert!(text.ends_with("# EOF\n"));
    // Without an Accept header for OpenMetrics: the classic text format, same series, which
    // promtool (Debian package prometheus) accepts as served.
    let classic = agent.tcp("GET", "/metrics", b"");
    assert!(classic
        .content_type
        .starts_with("text/plain; version=0.0.4"));
    promtool_accepts(&classic.text());
    assert!(classic
        .text()
        .contains(r#"edgevisor_vm_state{vm="m1",state="running"} 1"#));
    assert_eq!(
        value(&text, r#"edgevisor_vm_state{vm="m1",state="running"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"edgevisor_vm_state{vm="m2",state="created"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"edgevisor_vm_state{vm="m2",state="running"}"#),
        Some(0.0)
    );
    let boot = value(&text, r#"edgevisor_vm_boot_duration_seconds{vm="m1"}"#).expect("boot time");
    assert!(boot > 0.0 && boot < 30.0, "{boot}");
    let rss = value(&text, r#"edgevisor_vm_resident_memory_bytes{vm="m1"}"#).expect("rss");
    assert!(rss > 1e6, "{rss}");
    let cpu1 = value(&text, r#"edgevisor_vm_cpu_seconds_total{vm="m1"}"#).expect("cpu");
    // vCPU exits by reason: the probe printed through COM1, so port writes were counted.
    let io_out1 = value(
        &text,
        r#"edgevisor_vm_exits_total{vm="m1",reason="io_out"}"#,
    )
    .unwrap_or_else(|| panic!("no io_out exits for m1: {text}"));
    assert!(io_out1 > 0.0, "{text}");
    assert!(
        text.contains("# TYPE edgevisor_vm_exits counter\n"),
        "{text}"
    );
    for reason in ["io_in", "mmio_read", "hlt", "shutdown", "intr", "other"] {
        assert!(
            value(
                &text,
                &format!(r#"edgevisor_vm_exits_total{{vm="m1",reason="{reason}"}}"#)
            )
            .is_some(),
            "no {reason} series: {text}"
        );
    }
    assert!(
        !text.contains(r#"edgevisor_vm_exits_total{vm="m2""#),
        "a guest never started has no exits: {text}"
    );
    assert!(value(&text, "edgevisor_agent_uptime_seconds").is_some());
    // Without the token, TCP clients get nothing.
    assert_eq!(
        agent.tcp_with_token("GET", "/metrics", b"", None).status,
        401
    );

    // Restart m1's VM: the new process starts from zero, the agent's totals do not.
    assert_eq!(agent.tcp("PUT", "/v1/guests/m1/stop", b"").status, 200);
    assert_eq!(agent.tcp("PUT", "/v1/guests/m1/start", b"").status, 200);
    let text = openmetrics(&agent).text();
    let cpu2 = value(&text, r#"edgevisor_vm_cpu_seconds_total{vm="m1"}"#).expect("cpu");
    assert!(cpu2 >= cpu1, "CPU seconds went backwards: {cpu1} -> {cpu2}");
    // The first process's exits are kept and the new one's added to them: once the new
    // probe has printed too, the total is well past what the first process alone did.
    let io_out = |text: &str| {
        value(text, r#"edgevisor_vm_exits_total{vm="m1",reason="io_out"}"#)
            .expect("io_out exits after the restart")
    };
    assert!(io_out(&text) >= io_out1, "io_out went backwards: {text}");
    common::wait_until(30, "the restarted guest's exits add up", || {
        io_out(&openmetrics(&agent).text()) >= 1.5 * io_out1
    });
    assert_eq!(
        value(&text, r#"edgevisor_vm_process_restarts_total{vm="m1"}"#),
        Some(1.0),
        "{text}"
    );

    let caps = agent.unix("GET", "/v1/node/capabilities", b"");
    assert_eq!(caps.status, 200, "{}", caps.text());
    assert_eq!(caps.json()["arch"], std::env::consts::ARCH);

    // A deleted guest disappears from the metrics.
    assert_eq!(agent.tcp("DELETE", "/v1/guests/m1", b"").status, 200);
    let text = openmetrics(&agent).text();
    assert!(!text.contains(r#"vm="m1""#), "{text}");
}
