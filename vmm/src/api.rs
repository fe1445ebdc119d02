//! The per-VM control socket (`edgevisor run --api-socket PATH`).
//!
//! A Unix stream socket speaking a tiny subset of HTTP/1.1: one request per connection, no
//! request body, the response carries `Content-Length` and `Connection: close`. So
//! `curl --unix-socket PATH http://vm/state` works, and so does [`call`] below.
//!
//! | request | answer |
//! |---|---|
//! | `GET /state` | 200, the [`StateDocument`]: state, pid, boot summary, timings, counters (vCPU exits by reason among them) |
//! | `PUT /pause` | 200 and the document once every vCPU is parked; 409 if the VM has exited |
//! | `PUT /resume` | 200 and the document; 409 if the VM has exited |
//! | `PUT /stop` | 200 and the document; the VM ends with reason `stopped` (exit code 8) |
//!
//! Errors are JSON too: `{"error": "<one sentence>"}` with 400, 404, 405 or 409.
//!
//! The socket is bound before the VM is built (a bad path boots nothing), served by one
//! thread that installs the `api` seccomp filter itself, and removed when the VM ends. A
//! socket file left behind by a killed edgevisor (nobody accepts on it) is replaced; a live
//! one is refused.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::seccomp::{self, ThreadKind};
use crate::state::{CountersReport, VmState};
use crate::timings::TimingsReport;
use crate::vm::{BootSummary, VmControl};

/// Longest request head (request line and headers) the socket reads.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request, or to take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the control socket could not be set up or a call to it failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Another process serves this path.
    #[error(
        "control socket {0} is in use by a running VM: give each VM its own --api-socket path"
    )]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("control socket path {0} exists and is not a socket: remove it or choose another --api-socket path")]
    NotASocket(PathBuf),
    /// bind(2) or listen(2) failed.
    #[error("cannot listen on control socket {path}: {source}; check that its directory exists and is writable")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The wake-up eventfd or the thread could not be created.
    #[error("cannot start the control socket thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The thread's seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// A client call failed at the transport level.
    #[error("control socket {path}: {source}; is the VM still running?")]
    Call {
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A client call got an answer that is not HTTP with a JSON body.
    #[error(
        "control socket {path} gave an answer that is not HTTP/1.1 with a JSON body: {detail}"
    )]
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// What `GET /state` (and every successful PUT) answers.
#[derive(Debug, Clone, Serialize)]
pub struct StateDocument {
    /// `running`, `paused` or `exited`.
    pub state: &'static str,
    /// Why the VM ended, once it has.
    pub exit: Option<crate::exit::ExitReason>,
    /// The edgevisor process id.
    pub pid: u32,
    /// What was booted.
    pub boot: BootSummary,
    /// Boot phases so far (microseconds since the process started).
    pub timings: TimingsReport,
    /// VM-wide counters so far.
    pub counters: CountersReport,
    /// Per virtio device counters so far.
    pub virtio: std::collections::BTreeMap<String, devices::virtio::VirtioCounterSnapshot>,
}

impl StateDocument {
    fn of(control: &VmControl) -> StateDocument {
        let (state, exit) = match control.state() {
            VmState::Running => ("running", None),
            VmState::Paused => ("paused", None),
            VmState::Exited(reason) => ("exited", Some(reason)),
        };
        StateDocument {
            state,
            exit,
            pid: std::process::id(),
            boot: control.summary().clone(),
            timings: control.timings(),
            counters: control.counters(),
            virtio: control.virtio_counters(),
        }
    }
}

/// A bound control socket, not yet served. Dropping it removes the socket file.
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ApiServer {
    /// Binds `path`, replacing a stale socket file nobody accepts on.
    pub fn bind(path: &Path) -> Result<ApiServer, ApiError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ApiError::NotASocket(path.to_path_buf()));
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(ApiError::InUse(path.to_path_buf())),
                Err(_) => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let bind_err = |source| ApiError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let server = ApiServer {
            listener,
            path: path.to_path_buf(),
        };
        server.listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(server)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves the socket from its own thread until [`ApiThread::shutdown`]. With `filter`
    /// the thread installs the `api` seccomp filter before it accepts anything.
    pub fn spawn(self, control: VmControl, filter: bool) -> Result<ApiThread, ApiError> {
        let program = filter
            .then(|| seccomp::compile(ThreadKind::Api))
            .transpose()?;
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(ApiError::Thread)?;
        let thread_wake = wake.try_clone().map_err(ApiError::Thread)?;
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                let ready = match &program {
                    Some(p) => seccomp::apply(ThreadKind::Api, p),
                    None => Ok(()),
                };
                let ok = ready.is_ok();
                let _ = ready_tx.send(ready);
                if !ok {
                    return;
                }
                if seccomp::selftest_requested(ThreadKind::Api) {
                    seccomp::run_selftest(ThreadKind::Api);
                }
                self.serve(&control, &thread_wake);
            })
            .map_err(ApiError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(ApiThread {
                wake,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e.into())
            }
            Err(_) => {
                let _ = thread.join();
                Err(ApiError::Thread(std::io::Error::other(
                    "the control socket thread ended before it started serving",
                )))
            }
        }
    }

    /// Accepts and answers clients until `wake` fires.
    fn serve(&self, control: &VmControl, wake: &EventFd) {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfd structs for the whole call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            if fds[0].revents != 0 {
                if let Ok((stream, _)) = self.listener.accept() {
                    serve_client(stream, control);
                }
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The running control socket thread.
pub struct ApiThread {
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl ApiThread {
    /// Stops serving, removes the socket file and joins the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.wake.write(1);
            let _ = thread.join();
        }
    }
}

impl Drop for ApiThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads one request head; `None` if the client sent garbage, too much or nothing in time.
fn read_request_head(stream: &mut UnixStream) -> Option<(String, String)> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST_HEAD {
            return None;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.lines().next()?.split_whitespace();
    let method = words.next()?.to_string();
    let target = words.next()?.to_string();
    words
        .next()?
        .starts_with("HTTP/1.")
        .then_some((method, target))
}

/// Answers one client.
fn serve_client(mut stream: UnixStream, control: &VmControl) {
    // Linux's accept4 does not pass the listener's O_NONBLOCK on: the stream blocks, with
    // timeouts.
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let (status, body) = match read_request_head(&mut stream) {
        None => (400, error_body("the request is not an HTTP/1.1 request head of at most 8 KiB ending in an empty line")),
        Some((method, target)) => route(&method, &target, control),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Conflict",
    };
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes());
}

fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

fn state_body(control: &VmControl) -> String {
    serde_json::to_string(&StateDocument::of(control))
        .unwrap_or_else(|e| error_body(&format!("cannot encode the VM state: {e}")))
}

/// Dispatches one request; returns the status and JSON body.
fn route(method: &str, target: &str, control: &VmControl) -> (u16, String) {
    let exited = || {
        (
            409,
            error_body("the VM has exited: there is nothing to pause or resume"),
        )
    };
    match (method, target) {
        ("GET", "/state") => (200, state_body(control)),
        ("PUT", "/pause") => match control.pause() {
            true => (200, state_body(control)),
            false => exited(),
        },
        ("PUT", "/resume") => match control.resume() {
            true => (200, state_body(control)),
            false => exited(),
        },
        ("PUT", "/stop") => {
            control.stop();
            (200, state_body(control))
        }
        (_, "/state" | "/pause" | "/resume" | "/stop") => (
            405,
            error_body(&format!(
                "{method} is not allowed on {target}: use GET /state, or PUT /pause, /resume or /stop"
            )),
        ),
        _ => (
            404,
            error_body(&format!(
                "no such resource {target:?}: use GET /state, or PUT /pause, /resume or /stop"
            )),
        ),
    }
}

/// Calls a VM's control socket: `method` (`GET` or `PUT`) on `route` (`/state`, `/pause`,
/// ...). Returns the HTTP status and the JSON body.
pub fn call(
    socket: &Path,
    method: &str,
    route: &str,
    timeout: Duration,
) -> Result<(u16, serde_json::Value), ApiError> {
    let io_err = |source| ApiError::Call {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io_err)?;
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let request = format!("{method} {route} HTTP/1.1\r\nHost: vm\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io_err)?;
    let mut answer = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut answer)
        .map_err(io_err)?;
    parse_answer(&answer).map_err(|detail| ApiError::BadAnswer {
        path: socket.to_path_buf(),
        detail,
    })
}

/// Splits an HTTP answer into status and JSON body.
fn parse_answer(answer: &[u8]) -> Result<(u16, serde_json::Value), String> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {:?}", head.lines().next()))?;
    let body = serde_json::from_slice(&answer[split + 4..]).map_err(|e| e.to_string())?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_split_into_status_and_json() {
        let (status, body) =
            parse_answer(b"HTTP/1.1 409 Conflict\r\nContent-Length: 13\r\n\r\n{\"error\":\"x\"}")
                .unwrap();
        assert_eq!(status, 409);
        assert_eq!(body["error"], "x");
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_answer(b"garbage\r\n\r\n{}").is_err());
    }

    #[test]
    fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = std::env::temp_dir().join(format!("edgevisor-api-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.sock");
        let first = ApiServer::bind(&path).unwrap();
        assert!(matches!(ApiServer::bind(&path), Err(ApiError::InUse(_))));
        // A socket file whose listener is gone (as after kill -9) is replaced.
        let stale = UnixListener::bind(dir.join("stale.sock")).unwrap();
        drop(stale);
        let second = ApiServer::bind(&dir.join("stale.sock")).unwrap();
        drop(second);
        assert!(!dir.join("stale.sock").exists(), "drop removes the socket");
        std::fs::write(dir.join("file"), b"x").unwrap();
        assert!(matches!(
            ApiServer::bind(&dir.join("file")),
            Err(ApiError::NotASocket(_))
        ));
        drop(first);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
