//! Push mode for nodes behind NAT: the agent sends its metrics out with Prometheus
//! remote-write (protobuf `WriteRequest`, snappy block compression, plain HTTP/1.1) instead
//! of waiting for a scrape.
//!
//! Every [`Pusher::tick`] turns a [`Sample`] into one write request and stores it as a
//! segment file in the buffer directory before sending anything, then sends the stored
//! segments oldest first, stopping at the first failure. So an uplink outage or an agent
//! restart loses nothing while the buffer stays under its byte cap; past the cap the oldest
//! segments are dropped and counted (`edgevisor_push_dropped_segments_total`). Each tick
//! carries a heartbeat series and the guests' metrics; the node's `_info` series (the full
//! state report) go out on the first tick and again after every reconnect.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::{render, write_atomic, Sample};

/// Why push mode cannot run.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The remote-write URL is not `http://host[:port]/path`.
    #[error("push URL {url:?} is not http://host[:port]/path: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The buffer directory cannot be used.
    #[error("push buffer {path}: {source}; check the directory exists and is writable")]
    Buffer {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// How to push.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Remote-write endpoint, `http://host[:port]/path` (TLS is left to a local proxy).
    pub url: String,
    /// Optional bearer token sent as `Authorization: Bearer ...`.
    pub bearer_token: Option<String>,
    /// Directory for buffered segments (created if missing).
    pub buffer_dir: PathBuf,
    /// Most bytes of segments kept; the oldest are dropped beyond this.
    pub max_buffer_bytes: u64,
    /// Value of the `node` label on every series.
    pub node: String,
    /// Connect, read and write timeout per request.
    pub timeout: Duration,
}

/// One time series of a write request.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Labels including `__name__`, sorted by name.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// What one [`Pusher::tick`] or [`Pusher::flush`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Segments the receiver accepted.
    pub sent: u64,
    /// Segments the receiver rejected with a 4xx (dropped, they would never succeed).
    pub rejected: u64,
    /// Segments still buffered.
    pub pending: u64,
    /// Whether the last attempt reached the receiver.
    pub connected: bool,
    /// The last failure, if the flush stopped early.
    pub error: Option<String>,
}

/// Drives push mode; call [`Pusher::tick`] from a thread at the push interval.
#[derive(Debug)]
pub struct Pusher {
    config: PushConfig,
    host: String,
    port: u16,
    path: String,
    next_seq: u64,
    /// None until the first attempt, then whether the last attempt reached the receiver.
    connected: Option<bool>,
    report_due: bool,
    dropped_segments: u64,
    dropped_bytes: u64,
    reconnects: u64,
}

const SEGMENT_SUFFIX: &str = ".seg";

fn parse_url(url: &str) -> Result<(String, u16, String), PushError> {
    let bad = |reason| PushError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad("the host is missing"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse().map_err(|_| bad("the port is not a number"))?,
        ),
        None => (authority, 80),
    };
    Ok((host.to_string(), port, path.to_string()))
}

impl Pusher {
    /// Prepares push mode, picking up segments an earlier run left in the buffer.
    pub fn new(config: PushConfig) -> Result<Self, PushError> {
        let (host, port, path) = parse_url(&config.url)?;
        fs::create_dir_all(&config.buffer_dir).map_err(|source| PushError::Buffer {
            path: config.buffer_dir.clone(),
            source,
        })?;
        let mut pusher = Pusher {
            config,
            host,
            port,
            path,
            next_seq: 0,
            connected: None,
            report_due: true,
            dropped_segments: 0,
            dropped_bytes: 0,
            reconnects: 0,
        };
        let segments = pusher.segments()?;
        pusher.next_seq = segments.last().map_or(0, |(seq, _, _)| seq + 1);
        Ok(pusher)
    }

    /// Buffered segments, oldest first: (sequence number, path, size).
    fn segments(&self) -> Result<Vec<(u64, PathBuf, u64)>, PushError> {
        let dir = &self.config.buffer_dir;
        let err = |source| PushError::Buffer {
            path: dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(seq) = name
                .strip_suffix(SEGMENT_SUFFIX)
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let size = entry.metadata().map_err(err)?.len();
            out.push((seq, entry.path(), size));
        }
        out.sort_by_key(|s| s.0);
        Ok(out)
    }

    /// Segments dropped because the buffer was full, since this Pusher started.
    pub fn dropped_segments(&self) -> u64 {
        self.dropped_segments
    }

    /// Number of segments waiting to be sent.
    pub fn pending(&self) -> Result<u64, PushError> {
        Ok(self.segments()?.len() as u64)
    }

    /// Stores a write request holding `series` as the newest segment, dropping the oldest
    /// segments while the buffer is over its cap.
    pub fn enqueue(&mut self, series: &[Series]) -> Result<(), PushError> {
        let path = self
            .config
            .buffer_dir
            .join(format!("{:020}{SEGMENT_SUFFIX}", self.next_seq));
        compress(&encode_write_request(series))
            .and_then(|body| write_atomic(&path, &body))
            .map_err(|source| PushError::Buffer {
                path: path.clone(),
                source,
            })?;
        self.next_seq += 1;
        let segments = self.segments()?;
        let mut total: u64 = segments.iter().map(|s| s.2).sum();
        for (_, old, size) in &segments {
            if total <= self.config.max_buffer_bytes {
                break;
            }
            fs::remove_file(old).map_err(|source| PushError::Buffer {
                path: old.clone(),
                source,
            })?;
            total -= size;
            self.dropped_segments += 1;
            self.dropped_bytes += size;
        }
        Ok(())
    }

    /// Sends buffered segments oldest first until one fails.
    pub fn flush(&mut self) -> Result<FlushReport, PushError> {
        let mut report = FlushReport::default();
        let segments = self.segments()?;
        let mut left = segments.len() as u64;
        for (_, path, _) in segments {
            let body = fs::read(&path).map_err(|source| PushError::Buffer {
                path: path.clone(),
                source,
            })?;
            match self.post(&body) {
                Ok(status) if (200..300).contains(&status) => report.sent += 1,
                Ok(status) if (400..500).contains(&status) && status != 429 => {
                    report.rejected += 1;
                }
                Ok(status) => {
                    report.error = Some(format!("receiver answered {status}"));
                    self.mark(true);
                    break;
                }
                Err(e) => {
                    report.error = Some(e.to_string());
                    self.mark(false);
                    break;
                }
            }
            self.mark(true);
            fs::remove_file(&path).map_err(|source| PushError::Buffer {
                path: path.clone(),
                source,
            })?;
            left -= 1;
        }
        report.connected = self.connected == Some(true);
        report.pending = left;
        Ok(report)
    }

    fn mark(&mut self, reached: bool) {
        if reached && self.connected == Some(false) {
            self.reconnects += 1;
            self.report_due = true;
        }
        self.connected = Some(reached);
    }

    /// One push interval: buffers this tick's series (heartbeat, guest metrics and, when
    /// due, the full state report) and sends what the buffer holds. If this tick
    /// reconnected, a full state report is buffered and sent right after.
    pub fn tick(&mut self, sample: &Sample, now: SystemTime) -> Result<FlushReport, PushError> {
        let series = self.series_for(sample, now, self.report_due);
        let full = self.report_due;
        self.enqueue(&series)?;
        if full {
            self.report_due = false;
        }
        let mut report = self.flush()?;
        if self.report_due && report.connected && report.pending == 0 {
            self.report_due = false;
            let series = self.series_for(sample, now, true);
            self.enqueue(&series)?;
            let second = self.flush()?;
            report.sent += second.sent;
            report.rejected += second.rejected;
            report.pending = second.pending;
            report.connected = second.connected;
            report.error = second.error;
        }
        Ok(report)
    }

    /// The series of one tick at `now`; `full` adds the node's `_info` and allocatable series.
    pub fn series_for(&self, sample: &Sample, now: SystemTime, full: bool) -> Vec<Series> {
        let ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let node = self.config.node.clone();
        let mut out = vec![
            gauge(
                "edgevisor_push_heartbeat_timestamp_seconds",
                &node,
                ms as f64 / 1000.0,
                ms,
            ),
            gauge(
                "edgevisor_push_dropped_segments_total",
                &node,
                self.dropped_segments as f64,
                ms,
            ),
            gauge(
                "edgevisor_push_dropped_bytes_total",
                &node,
                self.dropped_bytes as f64,
                ms,
            ),
            gauge(
                "edgevisor_push_reconnects_total",
                &node,
                self.reconnects as f64,
                ms,
            ),
        ];
        for (name, mut labels, value) in parse_text(&render(sample)) {
            if !full && name.starts_with("edgevisor_node") {
                continue;
            }
            labels.push(("__name__".into(), name));
            labels.push(("node".into(), node.clone()));
            labels.sort();
            out.push(Series {
                labels,
                value,
                timestamp_ms: ms,
            });
        }
        out
    }

    fn post(&self, body: &[u8]) -> io::Result<u16> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host has no address"))?;
        let mut stream = TcpStream::connect_timeout(&addr, self.config.timeout)?;
        stream.set_read_timeout(Some(self.config.timeout))?;
        stream.set_write_timeout(Some(self.config.timeout))?;
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Encoding: snappy\r\n\
             Content-Type: application/x-protobuf\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n\
             User-Agent: edgevisor-agent/{}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.path,
            self.host,
            self.port,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        if let Some(token) = &self.config.bearer_token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()?;
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line)?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not an HTTP status line: {:?}", status_line.trim_end()),
                )
            })?;
        // Drain the rest so the receiver never sees a reset; bounded by the read timeout.
        let mut sink = Vec::new();
        let _ = reader.take(1 << 20).read_to_end(&mut sink);
        Ok(status)
    }
}

fn gauge(name: &str, node: &str, value: f64, timestamp_ms: i64) -> Series {
    Series {
        labels: vec![
            ("__name__".into(), name.into()),
            ("node".into(), node.into()),
        ],
        value,
        timestamp_ms,
    }
}

/// One sample line: metric name, labels in their written order, value.
pub type ParsedSample = (String, Vec<(String, String)>, f64);

/// Parses sample lines of OpenMetrics text (as [`render`] writes them) into name, labels and
/// value; comments and malformed lines are skipped.
pub fn parse_text(text: &str) -> Vec<ParsedSample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(parsed) = parse_line(line) {
            out.push(parsed);
        }
    }
    out
}

fn parse_line(line: &str) -> Option<ParsedSample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' => {}
                '=' => {
                    chars.next(); // opening quote
                    let mut value = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        rest = &body[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Encodes a remote-write `WriteRequest` (prometheus/prompb: timeseries = 1; TimeSeries:
/// labels = 1, samples = 2; Label: name = 1, value = 2; Sample: value = 1 double,
/// timestamp = 2 int64).
pub fn encode_write_request(series: &[Series]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in series {
        let mut ts = Vec::new();
        for (name, value) in &s.labels {
            let mut label = Vec::new();
            put_bytes(&mut label, 1, name.as_bytes());
            put_bytes(&mut label, 2, value.as_bytes());
            put_bytes(&mut ts, 1, &label);
        }
        let mut sample = Vec::new();
        put_varint(&mut sample, 1 << 3 | 1);
        sample.extend_from_slice(&s.value.to_le_bytes());
        put_varint(&mut sample, 2 << 3);
        put_varint(&mut sample, s.timestamp_ms as u64);
        put_bytes(&mut ts, 2, &sample);
        put_bytes(&mut out, 1, &ts);
    }
    out
}

/// Snappy block compression, as remote-write requires (fails only past 4 GiB).
pub fn compress(bytes: &[u8]) -> io::Result<Vec<u8>> {
    snap::raw::Encoder::new()
        .compress_vec(bytes)
        .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:9201/api/v1/write").unwrap(),
            ("127.0.0.1".into(), 9201, "/api/v1/write".into())
        );
        assert_eq!(
            parse_url("http://receiver").unwrap(),
            ("receiver".into(), 80, "/".into())
        );
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http://x:port/").is_err());
        assert!(parse_url("http:///path").is_err());
    }

    #[test]
    fn varints() {
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
    }

    #[test]
    fn parse_rendered_line() {
        let (name, labels, value) =
            parse_line(r#"edgevisor_vm_exits_total{vm="a\"b",reason="io"} 7"#).unwrap();
        assert_eq!(name, "edgevisor_vm_exits_total");
        assert_eq!(
            labels,
            [("vm".into(), "a\"b".into()), ("reason".into(), "io".into())]
        );
        assert_eq!(value, 7.0);
        assert_eq!(parse_line("up 1.5").unwrap().2, 1.5);
    }

    #[test]
    fn encoding_round_trips_through_snappy() {
        let s = gauge("up", "n1", 1.0, 1000);
        let raw = encode_write_request(&[s]);
        let back = snap::raw::Decoder::new()
            .decompress_vec(&compress(&raw).unwrap())
            .unwrap();
        assert_eq!(back, raw);
        // timeseries(1, LEN) first.
        assert_eq!(raw[0], 0x0a);
    }
}
