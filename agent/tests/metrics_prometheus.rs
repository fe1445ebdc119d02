//! A real Prometheus (Debian package prometheus) scrapes over loopback: the real agent, with
//! its bearer token, running a real guest; and render() behind a fake VM process that restarts,
//! to show the counters never reset. The series are checked through Prometheus's HTTP query
//! API. Every wait is bounded.

#[cfg(target_arch = "x86_64")]
mod common;
mod metrics_common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::metrics::{render, CounterStore, CONTENT_TYPE};
use metrics_common::reading;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Prometheus with `scrape_configs` (YAML, indented as list items) in `dir`; returns
/// its guard and web port.
fn start_prometheus(dir: &std::path::Path, scrape_configs: &str) -> (KillOnDrop, u16) {
    std::fs::create_dir_all(dir.join("tsdb")).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{scrape_configs}"
        ),
    )
    .unwrap();
    let web = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus not found: run scripts/install-test-deps.sh (package prometheus)");
    (KillOnDrop(child), web)
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

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The instant vector of `query` as (labels, value) pairs; empty until the series exists.
fn query(port: u16, q: &str) -> Vec<(serde_json::Value, f64)> {
    let Some(body) = http_get(port, &format!("/api/v1/query?query={}", encode(q))) else {
        return Vec::new();
    };
    // A chunked body starts with a size line; cut to the JSON object.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    let v: serde_json::Value = serde_json::from_str(&body[start..end]).unwrap_or_default();
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

fn wait_for(
    port: u16,
    q: &str,
    ok: impl Fn(&[(serde_json::Value, f64)]) -> bool,
) -> Vec<(serde_json::Value, f64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = query(port, q);
        if ok(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {q}: last {r:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
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

    let dir = std::env::temp_dir().join(format!("agentobs-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (_guard, web) = start_prometheus(
        &dir,
        &format!("  - job_name: edgevisor\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"),
    );

    let up = wait_for(web, "up{job=\"edgevisor\"}", |r| {
        r.iter().any(|(_, v)| *v == 1.0)
    });
    assert_eq!(up.len(), 1);

    // The node's info series and a device counter arrive with their labels.
    let info = wait_for(web, "edgevisor_node_info", |r| !r.is_empty());
    assert_eq!(info[0].0["board"], "Supermicro SYS-E300-9D-8CN8TP");
    assert_eq!(info[0].0["arch"], "x86_64");
    assert_eq!(info[0].1, 1.0);
    let rx = wait_for(
        web,
        "edgevisor_vm_net_rx_bytes_total{vm=\"b\",device=\"eth0\"}",
        |r| !r.is_empty(),
    );
    assert_eq!(rx[0].1, 0.0);
    let state = wait_for(web, "edgevisor_vm_state{vm=\"b\",state=\"paused\"}", |r| {
        !r.is_empty()
    });
    assert_eq!(state[0].1, 1.0);
    let mem = wait_for(web, "edgevisor_vm_resident_memory_bytes{vm=\"b\"}", |r| {
        !r.is_empty()
    });
    assert_eq!(mem[0].1, f64::from(32u32 << 20));

    // After at least 5 scrapes across process restarts, Prometheus saw no counter reset
    // and the total is the sum of every incarnation's last reading.
    wait_for(
        web,
        "count_over_time(edgevisor_vm_exits_total{vm=\"a\",reason=\"io\"}[5m])",
        |r| r.first().is_some_and(|(_, v)| *v >= 5.0),
    );
    let resets = query(
        web,
        "resets(edgevisor_vm_exits_total{vm=\"a\",reason=\"io\"}[5m])",
    );
    assert_eq!(resets.len(), 1);
    assert_eq!(resets[0].1, 0.0, "a counter went backwards");
    let total = query(
        web,
        "max_over_time(edgevisor_vm_exits_total{vm=\"a\",reason=\"io\"}[5m])",
    );
    let served = scrapes.load(Ordering::SeqCst);
    // Scrape n (from 0) exports 10 + 10*(n%2) + 20*floor(n/2): never more than 15*(n+1).
    assert!(
        total[0].1 >= 50.0 && total[0].1 <= 15.0 * served as f64,
        "{total:?} after {served}"
    );
    assert!(accept_seen.lock().unwrap().contains("openmetrics"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg(target_arch = "x86_64")] // boots an x86_64 guest on /dev/kvm: not built for aarch64
fn prometheus_scrapes_the_real_agent_with_its_bearer_token() {
    let agent = common::Agent::start("prom-real");
    agent.run_guest("vm1");
    let dir = agent.dir.0.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let bad_token = dir.join("wrong-token");
    std::fs::write(&bad_token, "not-the-token-at-all\n").unwrap();
    let job = |name: &str, token: &std::path::Path| {
        format!(
            "  - job_name: {name}\n    authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            token.display(),
            agent.port
        )
    };
    let jobs = job("edgevisor", &agent.dir.0.join("token")) + &job("wrong-token", &bad_token);
    let (_guard, web) = start_prometheus(&dir, &jobs);

    // The agent answers Prometheus's scrape only with the right token.
    let up = wait_for(web, "up{job=\"edgevisor\"}", |r| {
        r.iter().any(|(_, v)| *v == 1.0)
    });
    assert_eq!(up.len(), 1);
    let refused = wait_for(web, "up{job=\"wrong-token\"}", |r| !r.is_empty());
    assert_eq!(
        refused[0].1, 0.0,
        "a scrape with a wrong token was accepted"
    );

    // Node and guest series, from the live guest.
    let info = wait_for(web, "edgevisor_node_info{job=\"edgevisor\"}", |r| {
        !r.is_empty()
    });
    assert_eq!(info[0].0["arch"], std::env::consts::ARCH);
    let state = wait_for(
        web,
        "edgevisor_vm_state{vm=\"vm1\",state=\"running\"}",
        |r| !r.is_empty(),
    );
    assert_eq!(state[0].1, 1.0);
    // The guest printed through the serial port: port-write exits, counted by the VM,
    // accumulated by the agent, scraped by Prometheus.
    let exits = wait_for(
        web,
        "edgevisor_vm_exits_total{vm=\"vm1\",reason=\"io_out\"}",
        |r| r.first().is_some_and(|(_, v)| *v > 0.0),
    );
    assert_eq!(exits.len(), 1);
    let boot = wait_for(web, "edgevisor_vm_boot_duration_seconds{vm=\"vm1\"}", |r| {
        !r.is_empty()
    });
    assert!(boot[0].1 > 0.0 && boot[0].1 < 30.0, "{boot:?}");
    let rss = wait_for(web, "edgevisor_vm_resident_memory_bytes{vm=\"vm1\"}", |r| {
        !r.is_empty()
    });
    assert!(rss[0].1 > 1e6, "{rss:?}");
}
