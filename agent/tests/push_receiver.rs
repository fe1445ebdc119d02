//! Push mode against a local remote-write receiver (std TcpListener, snappy + protobuf
//! decoded here) that goes away and comes back.

mod metrics_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent::metrics::CounterStore;
use agent::push::{PushConfig, Pusher};

/// One decoded series: labels and (value, timestamp ms).
type Series = (Vec<(String, String)>, f64, i64);

fn varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = buf[*pos];
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// Fields of one protobuf message: (field number, wire type, payload or varint value).
fn fields(buf: &[u8]) -> Vec<(u64, u64, Vec<u8>, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos);
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((field, wire, Vec::new(), varint(buf, &mut pos))),
            1 => {
                out.push((field, wire, buf[pos..pos + 8].to_vec(), 0));
                pos += 8;
            }
            2 => {
                let len = varint(buf, &mut pos) as usize;
                out.push((field, wire, buf[pos..pos + len].to_vec(), 0));
                pos += len;
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
    out
}

fn decode_write_request(body: &[u8]) -> Vec<Series> {
    let mut series = Vec::new();
    for (f, w, ts, _) in fields(body) {
        assert_eq!((f, w), (1, 2), "WriteRequest holds only timeseries");
        let mut labels = Vec::new();
        let mut samples = Vec::new();
        for (f, _, payload, _) in fields(&ts) {
            match f {
                1 => {
                    let l = fields(&payload);
                    labels.push((
                        String::from_utf8(l[0].2.clone()).unwrap(),
                        String::from_utf8(l[1].2.clone()).unwrap(),
                    ));
                }
                2 => {
                    let s = fields(&payload);
                    let value = f64::from_le_bytes(s[0].2.clone().try_into().unwrap());
                    samples.push((value, s[1].3 as i64));
                }
                other => panic!("unexpected TimeSeries field {other}"),
            }
        }
        assert_eq!(samples.len(), 1);
        let mut sorted = labels.clone();
        sorted.sort();
        assert_eq!(labels, sorted, "labels must be sorted by name");
        series.push((labels, samples[0].0, samples[0].1));
    }
    series
}

/// A receiver on a fixed port; every accepted request is decoded into `requests`.
struct Receiver {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16, requests: Arc<Mutex<Vec<Vec<Series>>>>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                handle(conn, &requests);
            }
        });
        Receiver {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the port: later pushes get "connection refused".
    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn handle(conn: TcpStream, requests: &Mutex<Vec<Vec<Series>>>) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("POST /api/v1/write HTTP/1.1"), "{line:?}");
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
        let (k, v) = h.trim_end().split_once(':').unwrap();
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(header("content-encoding"), "snappy");
    assert_eq!(header("content-type"), "application/x-protobuf");
    assert_eq!(header("x-prometheus-remote-write-version"), "0.1.0");
    let len: usize = header("content-length").parse().unwrap();
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
    requests.lock().unwrap().push(decode_write_request(&raw));
    let mut conn = reader.into_inner();
    conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
}

fn value_of(series: &[Series], name: &str) -> Option<(f64, i64)> {
    series
        .iter()
        .find(|(l, _, _)| l.iter().any(|(k, v)| k == "__name__" && v == name))
        .map(|(_, v, t)| (*v, *t))
}

fn heartbeat_ms(series: &[Series]) -> i64 {
    value_of(series, "edgevisor_push_heartbeat_timestamp_seconds")
        .expect("every request carries the heartbeat")
        .1
}

fn has_node_info(series: &[Series]) -> bool {
    value_of(series, "edgevisor_node_info").is_some()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agentobs-push-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(port: u16, dir: &Path, cap: u64) -> PushConfig {
    PushConfig {
        url: format!("http://127.0.0.1:{port}/api/v1/write"),
        bearer_token: None,
        buffer_dir: dir.to_path_buf(),
        max_buffer_bytes: cap,
        node: "edge-1".into(),
        timeout: Duration::from_secs(2),
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn buffer_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn outage_and_restart_lose_nothing_and_keep_order() {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver::start(0, requests.clone());
    let port = receiver.port;
    let dir = temp_dir("outage");
    let sample = metrics_common::sample(&mut CounterStore::in_memory());

    let mut pusher = Pusher::new(config(port, &dir, 1 << 20)).unwrap();
    for t in 1..=2 {
        let r = pusher.tick(&sample, at(t)).unwrap();
        assert!(r.connected && r.pending == 0 && r.sent == 1, "{r:?}");
    }
    receiver.stop();

    for (i, t) in (3..=5).enumerate() {
        let r = pusher.tick(&sample, at(t)).unwrap();
        assert!(!r.connected, "{r:?}");
        assert_eq!(r.pending, i as u64 + 1);
        assert!(r.error.is_some());
    }
    // The agent restarts during the outage: the buffer is still there.
    drop(pusher);
    let mut pusher = Pusher::new(config(port, &dir, 1 << 20)).unwrap();
    assert_eq!(pusher.pending().unwrap(), 3);
    let r = pusher.tick(&sample, at(6)).unwrap();
    assert!(!r.connected);

    // The uplink comes back on the same port.
    let receiver = Receiver::start(port, requests.clone());
    let r = pusher.tick(&sample, at(7)).unwrap();
    assert!(r.connected && r.pending == 0, "{r:?}");
    assert_eq!(pusher.pending().unwrap(), 0);
    receiver.stop();

    let got = requests.lock().unwrap();
    let beats: Vec<i64> = got.iter().map(|s| heartbeat_ms(s)).collect();
    let secs = |t: i64| (1_800_000_000 + t) * 1000;
    // Every tick arrived once, in order, then the state report after the reconnect at
    // tick 7 (same timestamp); nothing was lost.
    let mut want: Vec<i64> = (1..=7).map(secs).collect();
    want.push(secs(7));
    assert_eq!(beats, want, "heartbeats in arrival order");
    let full: Vec<bool> = got.iter().map(|s| has_node_info(s)).collect();
    // Full reports: first contact, the restarted pusher's first tick, after reconnecting.
    assert_eq!(full, [true, false, false, false, false, true, false, true]);
    // Guest counters are in every request, labelled with the node.
    for series in got.iter() {
        let exits = series
            .iter()
            .find(|(l, _, _)| {
                l.contains(&("__name__".into(), "edgevisor_vm_exits_total".into()))
                    && l.contains(&("vm".into(), "a".into()))
                    && l.contains(&("reason".into(), "io".into()))
            })
            .expect("guest a's exits");
        assert_eq!(exits.1, 42.0);
        assert!(exits.0.contains(&("node".into(), "edge-1".into())));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reconnect_sends_a_full_state_report() {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver::start(0, requests.clone());
    let port = receiver.port;
    let dir = temp_dir("report");
    let sample = metrics_common::sample(&mut CounterStore::in_memory());
    let mut pusher = Pusher::new(config(port, &dir, 1 << 20)).unwrap();
    pusher.tick(&sample, at(1)).unwrap();
    receiver.stop();
    assert!(!pusher.tick(&sample, at(2)).unwrap().connected);
    let receiver = Receiver::start(port, requests.clone());
    let r = pusher.tick(&sample, at(3)).unwrap();
    receiver.stop();
    assert_eq!((r.sent, r.pending), (3, 0), "{r:?}");
    let got = requests.lock().unwrap();
    let full: Vec<bool> = got.iter().map(|s| has_node_info(s)).collect();
    // First contact, buffered tick 2, tick 3, then the report after reconnecting.
    assert_eq!(full, [true, false, false, true]);
    let last = got.last().unwrap();
    assert_eq!(
        value_of(last, "edgevisor_push_reconnects_total").unwrap().0,
        1.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn buffer_is_bounded_and_drops_oldest_first() {
    // Measure one segment, then cap the buffer at about three.
    let probe_dir = temp_dir("probe");
    let sample = metrics_common::sample(&mut CounterStore::in_memory());
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut probe = Pusher::new(config(closed, &probe_dir, 1 << 20)).unwrap();
    probe.tick(&sample, at(1)).unwrap();
    probe.tick(&sample, at(2)).unwrap();
    let segment = buffer_bytes(&probe_dir) / 2;
    let _ = std::fs::remove_dir_all(&probe_dir);
    let cap = segment * 3 + segment / 2;

    let dir = temp_dir("bounded");
    let mut pusher = Pusher::new(config(closed, &dir, cap)).unwrap();
    for t in 1..=10 {
        pusher.tick(&sample, at(t)).unwrap();
        assert!(
            buffer_bytes(&dir) <= cap,
            "buffer over its cap after tick {t}"
        );
    }
    let pending = pusher.pending().unwrap();
    assert!((2..=4).contains(&pending), "{pending} segments kept");
    assert_eq!(pusher.dropped_segments() + pending, 10);

    let requests = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver::start(closed, requests.clone());
    let r = pusher.tick(&sample, at(11)).unwrap();
    receiver.stop();
    assert_eq!(r.pending, 0);
    let got = requests.lock().unwrap();
    let beats: Vec<i64> = got.iter().map(|s| heartbeat_ms(s)).collect();
    // The newest ticks survived (tick 11 was buffered first, so it pushed out one more),
    // oldest first, then the report after reconnecting; every tick is either delivered or
    // counted as dropped.
    let delivered = beats.len() as i64 - 1;
    let mut want: Vec<i64> = (12 - delivered..=11)
        .map(|t| (1_800_000_000 + t) * 1000)
        .collect();
    want.push((1_800_000_000 + 11) * 1000);
    assert_eq!(beats, want);
    assert_eq!(pusher.dropped_segments() as i64 + delivered, 11);
    let dropped = value_of(got.last().unwrap(), "edgevisor_push_dropped_segments_total").unwrap();
    assert_eq!(dropped.0, pusher.dropped_segments() as f64);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn server_errors_keep_the_segment_for_later() {
    // A receiver that answers 503 to the first request and 204 after.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let seen = statuses.clone();
    let server = std::thread::spawn(move || {
        for (i, conn) in listener.incoming().take(3).enumerate() {
            let conn = conn.unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut reader = BufReader::new(conn);
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if h == "\r\n" || h.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
            let status = if i == 0 { 503 } else { 204 };
            seen.lock()
                .unwrap()
                .push((status, heartbeat_ms(&decode_write_request(&raw))));
            let mut conn = reader.into_inner();
            write!(conn, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").unwrap();
        }
    });
    let dir = temp_dir("503");
    let sample = metrics_common::sample(&mut CounterStore::in_memory());
    let mut pusher = Pusher::new(config(port, &dir, 1 << 20)).unwrap();
    let r = pusher.tick(&sample, at(1)).unwrap();
    assert_eq!((r.sent, r.pending), (0, 1), "{r:?}");
    assert!(r.error.as_deref().unwrap_or("").contains("503"), "{r:?}");
    let r = pusher.tick(&sample, at(2)).unwrap();
    assert_eq!((r.sent, r.pending), (2, 0), "{r:?}");
    server.join().unwrap();
    let ms = |t: i64| (1_800_000_000 + t) * 1000;
    assert_eq!(
        *statuses.lock().unwrap(),
        [(503, ms(1)), (204, ms(1)), (204, ms(2))]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
