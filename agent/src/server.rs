//! The agent's HTTP API on TCP (bearer token required) and on a Unix socket (no token: the
//! socket file is mode 0600), one thread per connection with a bounded count.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/guests` | `{"guests": [guest, ...]}` |
//! | `POST /v1/guests` | 201 and the guest; body: a Firecracker-style config plus `"id"` |
//! | `GET /v1/guests/ID` | the guest: state, desired, pid, config, boot, timings, exit |
//! | `PUT /v1/guests/ID/start` `stop` `pause` `resume` | the guest after the operation |
//! | `DELETE /v1/guests/ID` | `{"id", "deleted": true, "exit"}` |
//! | `GET /v1/guests/ID/console` | the end (at most 1 MiB) of its console log, text/plain |
//! | `GET /v1/node/capabilities` | the node's capabilities document |
//! | `GET /metrics` | OpenMetrics text |
//!
//! Errors are `{"error": "<one sentence>"}` with a 4xx or 5xx status; a failed request
//! changes nothing.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::{self, Request, Response};
use crate::metrics::{self, NodeSample, Sample};
use crate::supervisor::{AgentError, Supervisor};

/// Most connections served at once; more get 503.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request or take the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes read and dropped after refusing a request.
const DRAIN_LIMIT: u64 = 4 << 20;

/// What the connection threads share.
pub struct Agent {
    /// The guests.
    pub supervisor: Supervisor,
    /// The bearer token TCP clients must send.
    pub token: String,
    active: AtomicUsize,
    started: Instant,
}

impl Agent {
    /// An agent serving `supervisor`, with `token` for TCP clients.
    pub fn new(supervisor: Supervisor, token: String) -> Agent {
        Agent {
            supervisor,
            token,
            active: AtomicUsize::new(0),
            started: Instant::now(),
        }
    }
}

/// Counts a connection for as long as it lives.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream we can serve: TCP or Unix.
trait Stream: Read + Write + Send + 'static {
    fn set_timeouts(&self, timeout: Duration);
    fn shutdown_write(&self);
}

impl Stream for std::net::TcpStream {
    fn set_timeouts(&self, timeout: Duration) {
        let _ = self.set_read_timeout(Some(timeout));
        let _ = self.set_write_timeout(Some(timeout));
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, timeout: Duration) {
        let _ = self.set_read_timeout(Some(timeout));
        let _ = self.set_write_timeout(Some(timeout));
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// Serves TCP clients forever.
pub fn serve_tcp(listener: TcpListener, agent: Arc<Agent>) {
    for stream in listener.incoming().flatten() {
        dispatch(stream, &agent, true);
    }
}

/// Serves Unix socket clients forever.
pub fn serve_unix(listener: UnixListener, agent: Arc<Agent>) {
    for stream in listener.incoming().flatten() {
        dispatch(stream, &agent, false);
    }
}

/// Hands a connection to a new thread, or answers 503 when too many are open.
fn dispatch<S: Stream>(mut stream: S, agent: &Arc<Agent>, needs_token: bool) {
    stream.set_timeouts(CLIENT_TIMEOUT);
    if agent.active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        agent.active.fetch_sub(1, Ordering::AcqRel);
        stream.set_timeouts(Duration::from_millis(200));
        let _ = Response::error(
            503,
            &format!("the agent is serving {MAX_CONNECTIONS} connections already: retry shortly"),
        )
        .write_to(&mut stream);
        return;
    }
    let worker = agent.clone();
    let spawned = std::thread::Builder::new()
        .name("api-client".into())
        .spawn(move || {
            let _slot = Slot(&worker.active);
            serve_connection(&mut stream, &worker, needs_token);
        });
    if spawned.is_err() {
        // The closure (and with it the slot) never ran.
        agent.active.fetch_sub(1, Ordering::AcqRel);
    }
}

fn serve_connection(stream: &mut impl Stream, agent: &Agent, needs_token: bool) {
    let response = match http::read_request(stream) {
        Ok(request) => {
            if needs_token && !authorized(&request, &agent.token) {
                Response::error(
                    401,
                    "missing or wrong bearer token: send \"Authorization: Bearer <token>\" with the agent's token",
                )
            } else {
                route(agent, &request)
            }
        }
        Err(Some(response)) => {
            // The client may still be sending (a body over the cap): answer, then read and
            // drop what it sends for a moment, so closing does not reset the connection
            // before it has read the answer.
            let _ = response.write_to(stream);
            stream.shutdown_write();
            stream.set_timeouts(Duration::from_millis(500));
            let _ = std::io::copy(&mut stream.take(DRAIN_LIMIT), &mut std::io::sink());
            return;
        }
        Err(None) => return,
    };
    let _ = response.write_to(stream);
}

/// Whether the request carries the token (compared in constant time).
fn authorized(request: &Request, token: &str) -> bool {
    let Some(sent) = request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (sent.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn result(status: u16, r: Result<serde_json::Value, AgentError>) -> Response {
    match r {
        Ok(doc) => Response::json(status, &doc),
        Err(e) => Response::error(e.status(), &e.to_string()),
    }
}

/// Answers one authorised request.
pub fn route(agent: &Agent, request: &Request) -> Response {
    let sup = &agent.supervisor;
    let path = request.path.trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = request.method.as_str();
    match (method, segments.as_slice()) {
        ("GET", ["metrics"]) => metrics_response(agent, request),
        ("GET", ["v1", "node", "capabilities"]) => capabilities_response(),
        ("GET", ["v1", "guests"]) => Response::json(200, &sup.list()),
        ("POST", ["v1", "guests"]) => result(201, sup.create(&request.body)),
        ("GET", ["v1", "guests", id]) => result(200, sup.get(id)),
        ("DELETE", ["v1", "guests", id]) => result(200, sup.delete(id)),
        ("PUT", ["v1", "guests", id, "start"]) => result(200, sup.start(id)),
        ("PUT", ["v1", "guests", id, "stop"]) => result(200, sup.stop(id)),
        ("PUT", ["v1", "guests", id, "pause"]) => result(200, sup.pause_or_resume(id, true)),
        ("PUT", ["v1", "guests", id, "resume"]) => result(200, sup.pause_or_resume(id, false)),
        ("GET", ["v1", "guests", id, "console"]) => match sup.console(id) {
            Ok(bytes) => Response::text(200, "text/plain; charset=utf-8", bytes),
            Err(e) => Response::error(e.status(), &e.to_string()),
        },
        (
            _,
            ["metrics"]
            | ["v1", "node", "capabilities"]
            | ["v1", "guests"]
            | ["v1", "guests", _]
            | ["v1", "guests", _, "start" | "stop" | "pause" | "resume" | "console"],
        ) => Response::error(
            405,
            &format!("{method} is not allowed on {path}: see the API table in the agent's documentation"),
        ),
        _ => Response::error(
            404,
            &format!("no such resource {path:?}: the API lives under /v1 (guests, node/capabilities) and /metrics"),
        ),
    }
}

fn capabilities_response() -> Response {
    match serde_json::to_value(crate::capabilities::collect()) {
        Ok(doc) => Response::json(200, &doc),
        Err(e) => Response::error(500, &format!("cannot encode the capabilities: {e}")),
    }
}

/// One metrics sample of the node and its guests.
pub fn sample(agent: &Agent) -> Sample {
    Sample {
        node: NodeSample {
            capabilities: Some(crate::capabilities::collect()),
            agent_uptime_seconds: agent.started.elapsed().as_secs_f64(),
        },
        vms: agent.supervisor.vm_samples(),
    }
}

/// OpenMetrics when the scraper's Accept header asks for it, else the classic text format.
fn metrics_response(agent: &Agent, request: &Request) -> Response {
    let (content_type, text) = metrics::negotiate(request.header("accept"), &sample(agent));
    Response::text(200, content_type, text.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/v1/guests".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        assert!(authorized(
            &request(&[("authorization", "Bearer s3cret")]),
            "s3cret"
        ));
        assert!(!authorized(
            &request(&[("authorization", "Bearer s3cre")]),
            "s3cret"
        ));
        assert!(!authorized(
            &request(&[("authorization", "Bearer s3cretx")]),
            "s3cret"
        ));
        assert!(!authorized(
            &request(&[("authorization", "Basic s3cret")]),
            "s3cret"
        ));
        assert!(!authorized(&request(&[]), "s3cret"));
    }
}
