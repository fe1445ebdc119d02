//! A real Prometheus (Debian package prometheus) scrapes over loopback, and the series are
//! checked through its HTTP query API: first a real `edgevisor-agent` running a guest,
//! through the agent's bearer token (and refused with a wrong one); then a stand-in exporter
//! serving render() whose VM process restarts every other scrape. Every wait is bounded;
//! Prometheus, the agent and its guests are killed and their directories removed on drop.

#[cfg(target_arch = "x86_64")]
mod common;
mod metrics_common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::metrics::{render, CounterStore, CONTENT_TYPE};
use metrics_common::reading;

/// A Prometheus server on a free loopback port with its own storage in a scratch directory.
/// Dropping it kills the process and removes the directory, also when a test fails.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    /// Starts Prometheus with a 1 s scrape interval and `scrape_configs` (YAML list items,
    /// indented by two spaces).
    fn start(tag: &str, scrape_configs: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("agentobs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tsdb")).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{scrape_configs}"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("prometheus not found ({e}): run scripts/install-test-deps.sh (package prometheus)");
            }
        };
        Prometheus { child, dir, port }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The instant vector of `q` as (labels, value) pairs; empty until the series exists.
    fn query(&self, q: &str) -> Vec<(serde_json::Value, f64)> {
        let v = self.api(&format!("/api/v1/query?query={}", encode(q)));
        v["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|s| {
                        let value = s["value"][1].as_str().unwrap_or("NaN").parse().unwrap();
                        (s["metric"].clone(), value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A GET on Prometheus' HTTP API as JSON; null while it does not answer.
    fn api(&self, path: &str) -> serde_json::Value {
        http_get(self.port, path)
            .and_then(|body| serde_json::from_str(&body).ok())
            .unwrap_or_default()
    }

    /// Polls `q` until `ok` holds for its result (at most 30 s).
    fn wait_for(
        &self,
        q: &str,
        ok: impl Fn(&[(serde_json::Value, f64)]) -> bool,
    ) -> Vec<(serde_json::Value, f64)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.query(q);
            if ok(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {q}: last {r:?}\ntargets: {}\nprometheus log:\n{}",
                self.api("/api/v1/targets"),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of a 200 answer. HTTP/1.0, so the answer is not chunked and ends at close.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")).then(|| body.to_string())
}

/// A scrape job for the agent at `target` sending the token in `credentials_file`.
#[cfg(target_arch = "x86_64")]
fn agent_job(name: &str, target: &str, credentials_file: &std::path::Path) -> String {
    format!(
        "  - job_name: {name}\n    authorization:\n      type: Bearer\n      credentials_file: '{}'\n    static_configs:\n      - targets: ['{target}']\n",
        credentials_file.display()
    )
}

/// The value of the single series `q` selects, once it exists and `ok` holds for it.
#[cfg(target_arch = "x86_64")]
fn wait_value(prom: &Prometheus, q: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let r = prom.wait_for(q, |r| r.len() == 1 && ok(r[0].1));
    r[0].1
}

#[cfg(target_arch = "x86_64")] // boots an x86_64 guest on /dev/kvm
#[test]
fn prometheus_scrapes_the_real_agent_with_its_bearer_token() {
    // The agent listens on loopback TCP with --token-file; its state directory and the
    // guest's files live in the agent's scratch directory.
    let agent = common::Agent::start("prom-agent");
    let doc = agent.run_guest("pm1");
    assert_eq!(doc["state"], "running", "{doc}");
    let target = format!("127.0.0.1:{}", agent.port);
    let token_file = agent.dir.0.join("token");
    let wrong_token_file = agent.dir.0.join("wrong-token");
    std::fs::write(&wrong_token_file, "not-the-agent-token-0123456789\n").unwrap();
    // Declared after the agent, so dropped (killed) before it.
    let prom = Prometheus::start(
        "prom-agent",
        &(agent_job("edgevisor", &target, &token_file)
            + &agent_job("edgevisor-wrong-token", &target, &wrong_token_file)),
    );

    // The target is up with the right token...
    let up = prom.wait_for("up{job=\"edgevisor\"}", |r| {
        r.iter().any(|(_, v)| *v == 1.0)
    });
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].0["instance"], target.as_str());
    // ...and down with the wrong one: the agent answered 401 and nothing was ingested.
    let down = prom.wait_for("up{job=\"edgevisor-wrong-token\"}", |r| !r.is_empty());
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(down[0].1, 0.0, "a scrape with a wrong token succeeded");
    let targets = prom.api("/api/v1/targets");
    let refused = targets["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["labels"]["job"] == "edgevisor-wrong-token")
        .unwrap_or_else(|| panic!("no wrong-token target: {targets}"));
    assert_eq!(refused["health"], "down", "{refused}");
    assert!(
        refused["lastError"].as_str().unwrap_or("").contains("401"),
        "{refused}"
    );
    assert!(
        prom.query("edgevisor_agent_uptime_seconds{job=\"edgevisor-wrong-token\"}")
            .is_empty(),
        "series from a refused scrape"
    );

    // Node-level series: the agent's uptime and the node's own facts.
    wait_value(
        &prom,
        "edgevisor_agent_uptime_seconds{job=\"edgevisor\"}",
        |v| v > 0.0,
    );
    let info = prom.wait_for("edgevisor_node_info{job=\"edgevisor\"}", |r| r.len() == 1);
    assert_eq!(info[0].0["arch"], std::env::consts::ARCH, "{info:?}");
    assert_eq!(info[0].1, 1.0);
    wait_value(
        &prom,
        "edgevisor_node_allocatable_cpus{job=\"edgevisor\"}",
        |v| v >= 1.0,
    );

    // The guest: running, and its vCPU's port writes (the probe prints on COM1) counted.
    wait_value(
        &prom,
        "edgevisor_vm_state{job=\"edgevisor\",vm=\"pm1\",state=\"running\"}",
        |v| v == 1.0,
    );
    let io_out = "edgevisor_vm_exits_total{job=\"edgevisor\",vm=\"pm1\",reason=\"io_out\"}";
    let first = wait_value(&prom, io_out, |v| v > 0.0);
    common::wait_until(30, "the probe printed its verdict", || {
        agent
            .tcp("GET", "/v1/guests/pm1/console", b"")
            .text()
            .contains("PROBE PASS")
    });
    let first = wait_value(&prom, io_out, |v| v >= first);

    // A restart of the guest's VM process: the agent's totals keep counting from where the
    // first process stopped, so Prometheus sees the restart but no counter reset.
    assert_eq!(agent.tcp("PUT", "/v1/guests/pm1/stop", b"").status, 200);
    assert_eq!(agent.tcp("PUT", "/v1/guests/pm1/start", b"").status, 200);
    wait_value(
        &prom,
        "edgevisor_vm_process_restarts_total{job=\"edgevisor\",vm=\"pm1\"}",
        |v| v == 1.0,
    );
    wait_value(&prom, io_out, |v| v >= 1.5 * first);
    let resets =
        prom.query("resets(edgevisor_vm_exits_total{job=\"edgevisor\",vm=\"pm1\"}[5m]) > 0");
    assert!(
        resets.is_empty(),
        "exit counters went backwards: {resets:?}"
    );
    let reasons = prom.query("edgevisor_vm_exits_total{job=\"edgevisor\",vm=\"pm1\"}");
    assert!(
        reasons.iter().any(|(l, _)| l["reason"] == "io_in"),
        "{reasons:?}"
    );
}

#[test]
fn prometheus_scrapes_and_counters_never_reset() {
    // The exporter: every scrape folds a new reading; the VM process "restarts" every
    // second scrape, so its raw counters fall back while the agent's totals keep rising.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().port();
    let scrapes = Arc::new(AtomicU64::new(0));
    let store = Arc::new(Mutex::new(CounterStore::in_memory()));
    let accept_seen = Arc::new(Mutex::new(String::new()));
    {
        let (scrapes, store, accept_seen) = (scrapes.clone(), store.clone(), accept_seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                if let Some(a) = req
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("accept:"))
                {
                    *accept_seen.lock().unwrap() = a.to_string();
                }
                let n = scrapes.fetch_add(1, Ordering::SeqCst);
                let mut store = store.lock().unwrap();
                let mut sample = metrics_common::sample(&mut CounterStore::in_memory());
                let incarnation = format!("{}:{}", 1000 + n / 2, n / 2);
                let raw = 10 * (n % 2 + 1);
                sample.vms[0].counters = store.fold("a", &incarnation, &reading(1.0, raw, raw, 0));
                sample.vms[0].process_restarts = store.restarts("a");
                let body = render(&sample);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(body.as_bytes());
            }
        });
    }

    let prom = Prometheus::start(
        "prom",
        &format!("  - job_name: edgevisor\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"),
    );

    let up = prom.wait_for("up{job=\"edgevisor\"}", |r| {
        r.iter().any(|(_, v)| *v == 1.0)
    });
    assert_eq!(up.len(), 1);

    // The node's info series and a device counter arrive with their labels.
    let info = prom.wait_for("edgevisor_node_info", |r| !r.is_empty());
    assert_eq!(info[0].0["board"], "Supermicro SYS-E300-9D-8CN8TP");
    assert_eq!(info[0].0["arch"], "x86_64");
    assert_eq!(info[0].1, 1.0);
    let rx = prom.wait_for(
        "edgevisor_vm_net_rx_bytes_total{vm=\"b\",device=\"eth0\"}",
        |r| !r.is_empty(),
    );
    assert_eq!(rx[0].1, 0.0);
    let state = prom.wait_for("edgevisor_vm_state{vm=\"b\",state=\"paused\"}", |r| {
        !r.is_empty()
    });
    assert_eq!(state[0].1, 1.0);
    let mem = prom.wait_for("edgevisor_vm_resident_memory_bytes{vm=\"b\"}", |r| {
        !r.is_empty()
    });
    assert_eq!(mem[0].1, f64::from(32u32 << 20));

    // After at least 5 scrapes across process restarts, Prometheus saw no counter reset
    // and the total is the sum of every incarnation's last reading.
    prom.wait_for(
        "count_over_time(edgevisor_vm_exits_total{vm=\"a\",reason=\"io\"}[5m])",
        |r| r.first().is_some_and(|(_, v)| *v >= 5.0),
    );
    let resets = prom.query("resets(edgevisor_vm_exits_total{vm=\"a\",reason=\"io\"}[5m])");
    assert_eq!(resets.len(), 1);
    assert_eq!(resets[0].1, 0.0, "a counter went backwards");
    let total = prom.query("max_over_time(edgevisor_vm_exits_total{vm=\"a\",reason=\"io\"}[5m])");
    let served = scrapes.load(Ordering::SeqCst);
    // Scrape n (from 0) exports 10 + 10*(n%2) + 20*floor(n/2): never more than 15*(n+1).
    assert!(
        total[0].1 >= 50.0 && total[0].1 <= 15.0 * served as f64,
        "{total:?} after {served}"
    );
    assert!(accept_seen.lock().unwrap().contains("openmetrics"));
}
