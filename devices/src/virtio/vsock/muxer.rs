//! The host side of the vsock device: Firecracker's hybrid Unix-socket model.
//!
//! * Host-initiated: a process connects to the listening socket at `uds_path` and writes
//!   `CONNECT <port>\n`. The muxer picks a local port (from [`FIRST_LOCAL_PORT`] upward) and
//!   sends the guest an OP_REQUEST from CID 2 and that port; when the guest answers
//!   OP_RESPONSE, the host process reads `OK <local port>\n` and the stream is connected.
//!   A guest RST closes the host stream.
//! * Guest-initiated: an OP_REQUEST to CID 2 port P connects to the Unix socket
//!   `<uds_path>_<P>`; success is answered with OP_RESPONSE, failure with OP_RST.
//!
//! Every descriptor (the listener, a wake eventfd, streams still sending their CONNECT line,
//! connected streams) lives in one inner epoll; the device hands only that epoll's descriptor
//! to the event loop. Registrations are level-triggered, and a stream is watched for input
//! only while its data can go somewhere (the guest has credit and no unread input is pending),
//! so a slow guest never makes the loop spin.
//!
//! Packets for the guest wait in two places: connections with something to say sit in a
//! round-robin queue (each knows what it owes: REQUEST, RESPONSE, data, SHUTDOWN, credit), and
//! RSTs for connections already gone sit in a bounded queue of headers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::conn::{ConnState, Connection, Kill, RxFill};
use super::packet::{op, Header, HDR_LEN};
use super::{sys, vsock_log, VsockError};
use crate::virtio::counters::{bump, VirtioCounters};
use crate::virtio::queue::DescriptorChainView;
use crate::virtio::Memory;

/// First local port handed to host-initiated connections.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Longest `CONNECT <port>\n` line accepted.
pub const MAX_CONNECT_LINE: usize = 64;
/// RSTs waiting for an RX buffer at most; more are dropped (and counted).
pub const MAX_PENDING_RSTS: usize = 1024;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_WAKE: u64 = 1;
const FIRST_TOKEN: u64 = 2;
const EVENTS_PER_WAKE: usize = 64;
const ACCEPTS_PER_WAKE: usize = 64;

/// A connection's identity: (host-side port, guest-side port).
pub type Key = (u32, u32);

/// A host stream that connected but has not sent its whole CONNECT line yet.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// Parses `CONNECT <port>` (the newline already removed; a trailing `\r` is allowed).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let mut words = text.split(' ');
    let (Some("CONNECT"), Some(port), None) = (words.next(), words.next(), words.next()) else {
        return None;
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// The path a guest connection to host port `port` goes to: `<uds_path>_<port>`.
pub fn guest_target(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = OsString::from(uds_path.as_os_str());
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// The connection table and its descriptors.
pub struct Muxer {
    epoll: Epoll,
    listener: UnixListener,
    wake: EventFd,
    uds_path: PathBuf,
    guest_cid: u64,
    max_connections: usize,
    conns: HashMap<Key, Connection>,
    handshakes: HashMap<u64, Handshake>,
    tokens: HashMap<u64, Key>,
    local_ports: HashSet<u32>,
    rx_queue: VecDeque<Key>,
    rsts: VecDeque<Header>,
    next_token: u64,
    next_local_port: u32,
    listener_paused: bool,
    refused: u64,
    counters: Arc<VirtioCounters>,
}

impl Muxer {
    /// Listens on `uds_path` (which must not exist yet).
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        max_connections: usize,
        counters: Arc<VirtioCounters>,
    ) -> Result<Muxer, VsockError> {
        if uds_path.symlink_metadata().is_ok() {
            return Err(VsockError::PathExists { path: uds_path });
        }
        let epoll = Epoll::new().map_err(|source| VsockError::Epoll { source })?;
        let wake =
            EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VsockError::Epoll { source })?;
        let listener = UnixListener::bind(&uds_path).map_err(|source| VsockError::Bind {
            path: uds_path.clone(),
            source,
        })?;
        let muxer = Muxer {
            epoll,
            listener,
            wake,
            uds_path,
            guest_cid,
            max_connections,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            tokens: HashMap::new(),
            local_ports: HashSet::new(),
            rx_queue: VecDeque::new(),
            rsts: VecDeque::new(),
            next_token: FIRST_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            listener_paused: false,
            refused: 0,
            counters,
        };
        // From here on, dropping `muxer` removes the socket file again.
        let setup = |m: &Muxer| -> io::Result<()> {
            m.listener.set_nonblocking(true)?;
            m.ctl(
                ControlOperation::Add,
                m.listener.as_raw_fd(),
                EventSet::IN,
                TOKEN_LISTENER,
            )?;
            m.ctl(
                ControlOperation::Add,
                m.wake.as_raw_fd(),
                EventSet::IN,
                TOKEN_WAKE,
            )
        };
        setup(&muxer).map_err(|source| VsockError::Epoll { source })?;
        Ok(muxer)
    }

    fn ctl(
        &self,
        operation: ControlOperation,
        fd: RawFd,
        set: EventSet,
        token: u64,
    ) -> io::Result<()> {
        self.epoll.ctl(operation, fd, EpollEvent::new(set, token))
    }

    /// The inner epoll's descriptor (readable when anything inside needs attention).
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The listening socket's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Connections open (including host streams still sending their CONNECT line).
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// Connection attempts refused because the cap was reached (host and guest side).
    pub fn refused_over_cap(&self) -> u64 {
        self.refused
    }

    /// Makes the inner epoll readable, so the event loop calls the device back.
    pub fn poke(&self) {
        if self.wake.write(1).is_err() {
            bump(&self.counters.io_errors, 1);
        }
    }

    /// Whether an RX buffer would get a packet now.
    pub fn has_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rx_queue.is_empty()
    }

    /// Forgets every connection (device reset: the guest forgot them too). Host streams are
    /// closed; the listener stays.
    pub fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.kill(key, false);
        }
        self.rx_queue.clear();
        self.rsts.clear();
    }

    /// Serves what the inner epoll reports (one batch; level-triggered, so the rest fires
    /// again).
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENTS_PER_WAKE];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                bump(&self.counters.io_errors, 1);
                vsock_log(format_args!("virtio-vsock: inner epoll wait failed: {e}"));
                return;
            }
        };
        for event in &events[..n] {
            let set = event.event_set();
            match event.data() {
                TOKEN_LISTENER => self.accept(),
                TOKEN_WAKE => {
                    let _ = self.wake.read();
                }
                token if self.handshakes.contains_key(&token) => self.handshake(token),
                token => {
                    if let Some(&key) = self.tokens.get(&token) {
                        self.stream_event(key, set);
                    }
                }
            }
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_WAKE {
            let stream = match sys::accept_nonblocking(self.listener.as_raw_fd()) {
                Ok(stream) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                Err(e) => {
                    // Out of descriptors or memory: the listener would stay readable and
                    // wake the loop forever, so stop watching it until a connection closes.
                    bump(&self.counters.io_errors, 1);
                    vsock_log(format_args!(
                        "virtio-vsock: accept on {:?} failed: {e}; new host connections wait \
                         until one closes",
                        self.uds_path
                    ));
                    self.watch_listener(false);
                    return;
                }
            };
            if self.connection_count() >= self.max_connections {
                // Closing it tells the host process at once.
                self.refused += 1;
                continue;
            }
            let token = self.token();
            let fd = stream.as_raw_fd();
            if self
                .ctl(ControlOperation::Add, fd, EventSet::IN, token)
                .is_err()
            {
                bump(&self.counters.io_errors, 1);
                continue;
            }
            self.handshakes.insert(
                token,
                Handshake {
                    stream,
                    line: Vec::new(),
                },
            );
        }
    }

    /// Turns the listener's input events on or off.
    fn watch_listener(&mut self, on: bool) {
        if self.listener_paused != on {
            return;
        }
        let set = if on { EventSet::IN } else { EventSet::empty() };
        let fd = self.listener.as_raw_fd();
        match self.ctl(ControlOperation::Modify, fd, set, TOKEN_LISTENER) {
            Ok(()) => self.listener_paused = !on,
            Err(_) => bump(&self.counters.io_errors, 1),
        }
    }

    fn drop_handshake(&mut self, token: u64) {
        self.watch_listener(true);
        if let Some(h) = self.handshakes.remove(&token) {
            let _ = self.ctl(
                ControlOperation::Delete,
                h.stream.as_raw_fd(),
                EventSet::empty(),
                token,
            );
        }
    }

    /// Reads the CONNECT line byte by byte, so that data the host sends right after it stays
    /// in the stream for the guest.
    fn handshake(&mut self, token: u64) {
        let Some(h) = self.handshakes.get_mut(&token) else {
            return;
        };
        let port = loop {
            match sys::recv_byte(h.stream.as_raw_fd()) {
                Ok(Some(b'\n')) => break parse_connect(&h.line),
                Ok(Some(b)) if h.line.len() < MAX_CONNECT_LINE => h.line.push(b),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Too long, end of stream, or an error.
                _ => break None,
            }
        };
        let Some(port) = port else {
            self.drop_handshake(token);
            return;
        };
        let Some(h) = self.handshakes.remove(&token) else {
            return;
        };
        self.watch_listener(true);
        let Some(local) = self.allocate_local_port() else {
            let _ = self.ctl(
                ControlOperation::Delete,
                h.stream.as_raw_fd(),
                EventSet::empty(),
                token,
            );
            self.refused += 1;
            return;
        };
        let key = (local, port);
        if self.conns.contains_key(&key) {
            self.kill(key, true);
        }
        let mut conn = Connection::host_initiated(h.stream, token, local, port);
        // Still registered for input from the handshake; `refresh` turns that off until the
        // guest accepts.
        conn.interest = EventSet::IN;
        self.local_ports.insert(local);
        self.tokens.insert(token, key);
        self.conns.insert(key, conn);
        self.refresh(key);
        self.schedule(key);
    }

    fn allocate_local_port(&mut self) -> Option<u32> {
        let span = u32::MAX - FIRST_LOCAL_PORT;
        for _ in 0..span.min(1 << 20) {
            let port = self.next_local_port;
            self.next_local_port = if port == u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                port + 1
            };
            if !self.local_ports.contains(&port) {
                return Some(port);
            }
        }
        None
    }

    fn stream_event(&mut self, key: Key, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            let fd = conn.stream.as_raw_fd();
            let token = conn.token;
            let kill = conn.hung_up() || conn.state == ConnState::Connecting;
            conn.interest = EventSet::empty();
            let _ = self.ctl(ControlOperation::Delete, fd, EventSet::empty(), token);
            if kill {
                self.kill(key, true);
            } else {
                self.schedule(key);
            }
            return;
        }
        if set.contains(EventSet::OUT) {
            match conn.flush() {
                Ok(false) => {}
                Ok(true) => return self.kill(key, true),
                Err(_) => {
                    bump(&self.counters.io_errors, 1);
                    return self.kill(key, true);
                }
            }
        }
        if set.contains(EventSet::IN) {
            conn.data_ready = true;
        }
        self.refresh(key);
        self.schedule(key);
    }

    /// Makes the inner epoll watch what the connection currently needs.
    fn refresh(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.host_hup {
            return;
        }
        let want = conn.desired_interest();
        if want == conn.interest {
            return;
        }
        let event = EpollEvent::new(want, conn.token);
        match self
            .epoll
            .ctl(ControlOperation::Modify, conn.stream.as_raw_fd(), event)
        {
            Ok(()) => conn.interest = want,
            Err(e) => {
                bump(&self.counters.io_errors, 1);
                vsock_log(format_args!(
                    "virtio-vsock: cannot change a stream's epoll registration: {e}"
                ));
            }
        }
    }

    /// Queues the connection for RX if it has something to say.
    fn schedule(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if !conn.queued && conn.has_rx_work() {
                conn.queued = true;
                self.rx_queue.push_back(key);
            }
        }
    }

    /// Removes a connection (closing its host stream); `rst` tells the guest.
    fn kill(&mut self, key: Key, rst: bool) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        self.watch_listener(true);
        self.tokens.remove(&conn.token);
        if conn.host_initiated {
            self.local_ports.remove(&conn.local_port);
        }
        if conn.queued {
            // Keeps the queue no longer than the connection table, whatever the guest does.
            self.rx_queue.retain(|k| *k != key);
        }
        if !conn.host_hup {
            let _ = self.ctl(
                ControlOperation::Delete,
                conn.stream.as_raw_fd(),
                EventSet::empty(),
                conn.token,
            );
        }
        if rst {
            let hdr = Header {
                src_port: conn.peer_port,
                dst_port: conn.local_port,
                ..Header::default()
            };
            self.push_rst(hdr.reset_reply(self.guest_cid));
        }
    }

    fn push_rst(&mut self, hdr: Header) {
        if self.rsts.len() >= MAX_PENDING_RSTS {
            bump(&self.counters.dropped_no_buffer, 1);
            return;
        }
        self.rsts.push_back(hdr);
    }

    /// Answers a refused packet from the guest with an RST.
    pub fn reject(&mut self, hdr: &Header) {
        self.push_rst(hdr.reset_reply(self.guest_cid));
    }

    /// Acts on a packet from the guest whose header passed [`super::packet::check_tx`].
    pub fn guest_packet(&mut self, mem: &Memory, chain: &DescriptorChainView, hdr: &Header) {
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.op == op::REQUEST {
            self.guest_connect(hdr);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if hdr.op != op::RST {
                self.push_rst(hdr.reset_reply(self.guest_cid));
            }
            return;
        };
        conn.peer_credit_from(hdr);
        let kill = match (conn.state, hdr.op) {
            (_, op::RST) => return self.kill(key, false),
            (ConnState::Connecting, op::RESPONSE) => {
                conn.established();
                // Tell the host process at once; what does not fit waits for OUT.
                conn.flush().is_err()
            }
            (ConnState::Connecting, _) | (_, op::RESPONSE) => true,
            (_, op::RW) => match conn.guest_data(mem, chain, hdr.len) {
                Ok(()) => false,
                Err(Kill::CreditExceeded) => {
                    bump(&self.counters.unsupported_requests, 1);
                    vsock_log(format_args!(
                        "virtio-vsock: guest port {} sent past its credit; connection reset",
                        hdr.src_port
                    ));
                    true
                }
                Err(Kill::DataAfterShutdown) => {
                    bump(&self.counters.unsupported_requests, 1);
                    vsock_log(format_args!(
                        "virtio-vsock: guest port {} sent data after SHUTDOWN; connection reset",
                        hdr.src_port
                    ));
                    true
                }
                Err(Kill::HostGone) => {
                    bump(&self.counters.io_errors, 1);
                    true
                }
            },
            (_, op::SHUTDOWN) => conn.guest_shut(hdr.flags),
            (_, op::CREDIT_REQUEST) => {
                conn.want_credit_update();
                false
            }
            // CREDIT_UPDATE: the credit was taken above.
            _ => false,
        };
        if kill {
            self.kill(key, true);
        } else {
            self.refresh(key);
            self.schedule(key);
        }
    }

    fn guest_connect(&mut self, hdr: &Header) {
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            // A second REQUEST for a live connection: the guest lost track; start over.
            self.kill(key, false);
            self.push_rst(hdr.reset_reply(self.guest_cid));
            return;
        }
        if self.connection_count() >= self.max_connections {
            self.refused += 1;
            self.push_rst(hdr.reset_reply(self.guest_cid));
            return;
        }
        let target = guest_target(&self.uds_path, hdr.dst_port);
        let stream = match sys::connect_nonblocking(&target) {
            Ok(stream) => stream,
            Err(_) => {
                self.push_rst(hdr.reset_reply(self.guest_cid));
                return;
            }
        };
        let token = self.token();
        if self
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EventSet::empty(),
                token,
            )
            .is_err()
        {
            bump(&self.counters.io_errors, 1);
            self.push_rst(hdr.reset_reply(self.guest_cid));
            return;
        }
        let conn = Connection::guest_initiated(stream, token, hdr);
        self.tokens.insert(token, key);
        self.conns.insert(key, conn);
        self.refresh(key);
        self.schedule(key);
    }

    /// Writes the next packet for the guest into `chain` (at least a header's room); returns
    /// the bytes written, or `None` when nothing is waiting.
    pub fn next_rx(&mut self, mem: &Memory, chain: &DescriptorChainView) -> Option<u32> {
        loop {
            if let Some(hdr) = self.rsts.pop_front() {
                return Some(match chain.write_at(mem, 0, &hdr.to_bytes()) {
                    Ok(HDR_LEN) => HDR_LEN as u32,
                    _ => 0,
                });
            }
            let key = self.rx_queue.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            match conn.fill_rx(mem, chain, self.guest_cid) {
                RxFill::Packet(n) => {
                    self.refresh(key);
                    self.schedule(key);
                    return Some(n);
                }
                RxFill::Nothing => self.refresh(key),
                RxFill::Kill => self.kill(key, true),
            }
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_parse_or_are_refused() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"CONNECT 4294967296",
            b"CONNECT -1",
            b"CONNECT +5",
            b"connect 5",
            b"CONNECT 5 6",
            b"CONNECT  5",
            b"\xffCONNECT 5",
        ] {
            assert_eq!(
                parse_connect(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn guest_targets_append_the_port() {
        assert_eq!(
            guest_target(Path::new("/run/v.sock"), 52),
            PathBuf::from("/run/v.sock_52")
        );
    }
}
