//! One vsock stream between a guest port and a host Unix stream, with credit flow control
//! both ways.
//!
//! * Guest to host: the guest may have at most [`CONN_BUF_ALLOC`] bytes in flight (sent but
//!   not yet forwarded to the host stream, as our `fwd_cnt` tells it). Data goes to the host
//!   stream straight from guest memory; what the stream does not take at once is copied into
//!   a per-connection buffer, which the credit bounds. A guest that exceeds its credit is
//!   reset. Credit updates go out whenever [`CREDIT_UPDATE_THRESHOLD`] bytes were forwarded
//!   since the guest last heard our `fwd_cnt` (every packet to the guest carries it), or when
//!   the guest asks.
//! * Host to guest: data is read from the host stream straight into the guest's RX buffer,
//!   never more than the guest's advertised free space (`buf_alloc - (rx_cnt - fwd_cnt)`).
//!   With no space left, the stream is not read (and not watched for input), and one
//!   CREDIT_REQUEST is sent.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::packet::{op, Header, HDR_LEN, MAX_PKT_LEN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::sys;
use super::HOST_CID;
use crate::virtio::queue::DescriptorChainView;
use crate::virtio::Memory;

/// Receive buffer we advertise per connection (bytes the guest may have in flight to us).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Forwarded bytes after which the guest is sent a credit update.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;

const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_CREDIT_UPDATE: u8 = 4;
const P_CREDIT_REQUEST: u8 = 8;
const P_SHUTDOWN: u8 = 16;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent (or to be sent), waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows.
    Established,
}

/// What filling an RX buffer for this connection gave.
#[derive(Debug, PartialEq, Eq)]
pub enum RxFill {
    /// A packet of this many bytes (header included) was written.
    Packet(u32),
    /// Nothing to send now.
    Nothing,
    /// The connection is over: remove it and reset the guest's side.
    Kill,
}

/// Why a packet from the guest ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// The guest sent more than its credit allowed.
    CreditExceeded,
    /// The host stream failed or went away.
    HostGone,
    /// The guest sent data after it said it would send no more.
    DataAfterShutdown,
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    /// The host side.
    pub stream: UnixStream,
    /// Token of the stream in the inner epoll.
    pub token: u64,
    /// Host-side port (the guest's destination port for guest-initiated connections).
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    /// Life stage.
    pub state: ConnState,
    /// Whether the host side opened it (its local port was allocated by us).
    pub host_initiated: bool,
    /// Events currently registered in the inner epoll.
    pub interest: EventSet,
    /// Whether the connection is in the muxer's RX queue.
    pub queued: bool,
    /// The host stream reported input we have not read yet (its IN interest is off).
    pub data_ready: bool,
    /// The host stream hung up (fully closed) and was taken out of the epoll.
    pub host_hup: bool,
    /// SHUTDOWN flags the guest sent.
    pub guest_shutdown: u32,
    /// The guest shut both directions: reset it once `out` is flushed.
    pub closing: bool,
    host_eof: bool,
    pending: u8,
    shutdown_flags: u32,
    out: VecDeque<u8>,
    preamble_left: usize,
    write_shut: bool,
    fwd_cnt: u32,
    fwd_reported: u32,
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    credit_requested: bool,
}

impl Connection {
    /// A host-initiated connection to guest port `peer_port`: a REQUEST is pending.
    pub fn host_initiated(stream: UnixStream, token: u64, local_port: u32, peer_port: u32) -> Self {
        let mut c = Connection::new(stream, token, local_port, peer_port, ConnState::Connecting);
        c.pending = P_REQUEST;
        c.host_initiated = true;
        c
    }

    /// A guest-initiated connection the host accepted: a RESPONSE is pending.
    pub fn guest_initiated(stream: UnixStream, token: u64, request: &Header) -> Self {
        let mut c = Connection::new(
            stream,
            token,
            request.dst_port,
            request.src_port,
            ConnState::Established,
        );
        c.pending = P_RESPONSE;
        c.peer_credit_from(request);
        c
    }

    fn new(
        stream: UnixStream,
        token: u64,
        local_port: u32,
        peer_port: u32,
        state: ConnState,
    ) -> Self {
        Connection {
            stream,
            token,
            local_port,
            peer_port,
            state,
            host_initiated: false,
            interest: EventSet::empty(),
            queued: false,
            data_ready: false,
            host_hup: false,
            guest_shutdown: 0,
            closing: false,
            host_eof: false,
            pending: 0,
            shutdown_flags: 0,
            out: VecDeque::new(),
            preamble_left: 0,
            write_shut: false,
            fwd_cnt: 0,
            fwd_reported: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            credit_requested: false,
        }
    }

    /// Takes the guest's buffer space and consumed count from any packet it sent.
    pub fn peer_credit_from(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        self.credit_requested = false;
    }

    /// Bytes the guest can still take from us.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Guest bytes waiting in our buffer for the host stream.
    pub fn buffered(&self) -> usize {
        self.out.len() - self.preamble_left
    }

    fn may_read_host(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && self.guest_shutdown & SHUTDOWN_RCV == 0
    }

    /// The events the inner epoll should watch for this stream.
    pub fn desired_interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.may_read_host() && !self.data_ready && self.peer_credit() > 0 {
            set |= EventSet::IN;
        }
        if !self.out.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// Whether an RX buffer would get a packet from this connection.
    pub fn has_rx_work(&self) -> bool {
        if self.pending != 0 {
            return true;
        }
        self.data_ready
            && self.may_read_host()
            && (self.peer_credit() > 0 || !self.credit_requested)
    }

    /// The guest accepted our REQUEST: tell the host process which port it got.
    pub fn established(&mut self) {
        self.state = ConnState::Established;
        let line = format!("OK {}\n", self.local_port);
        self.preamble_left += line.len();
        self.out.extend(line.as_bytes());
    }

    /// The guest asked for our credit.
    pub fn want_credit_update(&mut self) {
        self.pending |= P_CREDIT_UPDATE;
    }

    /// The guest shut one or both directions. Returns true when the connection should be
    /// reset now (both directions closed and nothing left to forward).
    pub fn guest_shut(&mut self, flags: u32) -> bool {
        self.guest_shutdown |= flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
        if self.guest_shutdown & SHUTDOWN_SEND != 0 {
            self.closing = self.guest_shutdown & SHUTDOWN_RCV != 0;
            self.shut_host_write_if_flushed();
        }
        self.closing && self.out.is_empty()
    }

    fn shut_host_write_if_flushed(&mut self) {
        if self.out.is_empty() && !self.write_shut && self.guest_shutdown & SHUTDOWN_SEND != 0 {
            self.write_shut = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    fn forwarded(&mut self, n: usize) {
        let preamble = n.min(self.preamble_left);
        self.preamble_left -= preamble;
        self.fwd_cnt = self.fwd_cnt.wrapping_add((n - preamble) as u32);
        if self.fwd_cnt.wrapping_sub(self.fwd_reported) >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= P_CREDIT_UPDATE;
        }
    }

    /// Forwards an RW packet's `len` payload bytes (after the header in `chain`) to the host.
    pub fn guest_data(
        &mut self,
        mem: &Memory,
        chain: &DescriptorChainView,
        len: u32,
    ) -> Result<(), Kill> {
        if self.guest_shutdown & SHUTDOWN_SEND != 0 {
            return Err(Kill::DataAfterShutdown);
        }
        if self.buffered() + len as usize > CONN_BUF_ALLOC as usize {
            return Err(Kill::CreditExceeded);
        }
        if self.host_hup || self.write_shut {
            return Err(Kill::HostGone);
        }
        let mut sent = 0usize;
        if self.out.is_empty() {
            let slices = chain
                .readable_slices(mem, HDR_LEN as u64)
                .map_err(|_| Kill::HostGone)?;
            match sys::send_slices(self.stream.as_raw_fd(), &slices) {
                Ok(n) => sent = n.min(len as usize),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(Kill::HostGone),
            }
            self.forwarded(sent);
        }
        let rest = len as usize - sent;
        if rest > 0 {
            // Bounded by the credit check above: the guest supplied these bytes.
            let mut buf = vec![0u8; rest];
            let got = chain
                .read_at(mem, (HDR_LEN + sent) as u64, &mut buf)
                .map_err(|_| Kill::HostGone)?;
            self.out.extend(&buf[..got]);
        }
        Ok(())
    }

    /// Writes what waits in our buffer to the host stream. Returns true when the connection
    /// should be reset now (the guest is closing and everything went out).
    pub fn flush(&mut self) -> Result<bool, Kill> {
        while !self.out.is_empty() {
            let (a, b) = self.out.as_slices();
            match sys::send_bufs(self.stream.as_raw_fd(), &[a, b]) {
                Ok(0) => break,
                Ok(n) => {
                    self.out.drain(..n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(Kill::HostGone),
            }
        }
        if self.out.is_empty() {
            self.out.shrink_to(4096);
            self.shut_host_write_if_flushed();
        }
        Ok(self.closing && self.out.is_empty())
    }

    /// The host stream hung up: nothing more can be written to it, what it sent before may
    /// still be read. Returns true when the connection should be reset now (nothing left
    /// to read for the guest, or the guest is closing anyway).
    pub fn hung_up(&mut self) -> bool {
        self.host_hup = true;
        self.out.clear();
        self.preamble_left = 0;
        self.data_ready = self.may_read_host();
        !self.data_ready || self.closing
    }

    fn header(&mut self, op: u16, len: u32) -> Header {
        self.fwd_reported = self.fwd_cnt;
        self.pending &= !P_CREDIT_UPDATE;
        Header {
            src_cid: HOST_CID,
            dst_cid: 0,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    fn write_header(
        &mut self,
        mem: &Memory,
        chain: &DescriptorChainView,
        guest_cid: u64,
        op: u16,
        len: u32,
    ) -> RxFill {
        let mut hdr = self.header(op, len);
        hdr.dst_cid = guest_cid;
        if op == op::SHUTDOWN {
            hdr.flags = self.shutdown_flags;
        }
        match chain.write_at(mem, 0, &hdr.to_bytes()) {
            Ok(HDR_LEN) => RxFill::Packet(HDR_LEN as u32 + len),
            _ => RxFill::Kill,
        }
    }

    /// Writes the next packet for the guest into `chain` (which has room for at least a
    /// header).
    pub fn fill_rx(&mut self, mem: &Memory, chain: &DescriptorChainView, guest_cid: u64) -> RxFill {
        for (flag, op) in [(P_REQUEST, op::REQUEST), (P_RESPONSE, op::RESPONSE)] {
            if self.pending & flag != 0 {
                self.pending &= !flag;
                return self.write_header(mem, chain, guest_cid, op, 0);
            }
        }
        if self.data_ready && self.may_read_host() {
            match self.read_host(mem, chain, guest_cid) {
                RxFill::Nothing => {}
                other => return other,
            }
        }
        if self.pending & P_SHUTDOWN != 0 {
            self.pending &= !P_SHUTDOWN;
            return self.write_header(mem, chain, guest_cid, op::SHUTDOWN, 0);
        }
        if self.pending & P_CREDIT_UPDATE != 0 {
            return self.write_header(mem, chain, guest_cid, op::CREDIT_UPDATE, 0);
        }
        if self.pending & P_CREDIT_REQUEST != 0 {
            self.pending &= !P_CREDIT_REQUEST;
            return self.write_header(mem, chain, guest_cid, op::CREDIT_REQUEST, 0);
        }
        RxFill::Nothing
    }

    fn read_host(&mut self, mem: &Memory, chain: &DescriptorChainView, guest_cid: u64) -> RxFill {
        let credit = self.peer_credit();
        if credit == 0 {
            if !self.credit_requested {
                self.credit_requested = true;
                return self.write_header(mem, chain, guest_cid, op::CREDIT_REQUEST, 0);
            }
            return RxFill::Nothing;
        }
        let room = chain.writable_len().saturating_sub(HDR_LEN as u64);
        let limit = room.min(u64::from(credit)).min(u64::from(MAX_PKT_LEN)) as usize;
        if limit == 0 {
            return RxFill::Nothing;
        }
        let Ok(slices) = chain.writable_slices(mem, HDR_LEN as u64) else {
            return RxFill::Kill;
        };
        match sys::recv_slices(self.stream.as_raw_fd(), &slices, limit) {
            Ok(0) => {
                self.data_ready = false;
                self.host_eof = true;
                if self.host_hup {
                    return RxFill::Kill;
                }
                self.pending |= P_SHUTDOWN;
                self.shutdown_flags = SHUTDOWN_SEND;
                RxFill::Nothing
            }
            Ok(n) => {
                self.rx_cnt = self.rx_cnt.wrapping_add(n as u32);
                self.write_header(mem, chain, guest_cid, op::RW, n as u32)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.data_ready = false;
                if self.host_hup {
                    return RxFill::Kill;
                }
                RxFill::Nothing
            }
            Err(_) => RxFill::Kill,
        }
    }
}
