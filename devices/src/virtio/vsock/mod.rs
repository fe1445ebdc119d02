//! virtio-vsock (virtio 1.2, section 5.10) with Firecracker's hybrid Unix-socket back end.
//!
//! Queues: RX (0, packets to the guest), TX (1, packets from the guest), EVENT (2, held but
//! never written: we send no transport events). Features: VERSION_1 only (stream sockets are
//! implied when no feature bit is negotiated). Configuration space: `guest_cid`, a 64-bit
//! little-endian value.
//!
//! The host side is described in [`muxer`]; per-connection flow control in [`conn`]; the
//! header checks in [`packet`]. Every TX packet must carry type STREAM, the guest's CID as
//! source, the host (2) as destination and a `len` equal to the payload the chain holds (at
//! most [`packet::MAX_PKT_LEN`]); anything else is refused and counted: chain-level faults
//! (short header, length mismatch, oversize) in `malformed_chains`, protocol faults (type,
//! CIDs, operation) in `unsupported_requests`, and a protocol fault from the guest's own CID is
//! answered with an RST as Linux does. The chain always goes back to the used ring and the
//! device keeps serving.
//!
//! The device exposes one back-end descriptor to the event loop ([`EVENT_BACKEND`]): the
//! muxer's inner epoll, which holds the listener, every host stream and a wake eventfd.

pub mod conn;
pub mod muxer;
pub mod packet;
mod sys;

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};

use super::counters::{bump, VirtioCounters};
use super::queue::{DescriptorChainView, Popped, QueueHandler};
use super::{
    device_type, features, ActivateError, Activation, Interrupt, Memory, VirtioDevice,
    BACKEND_EVENT_BASE,
};
use crate::log::RateLimited;
use muxer::Muxer;
use packet::{check_tx, op, Header, PacketError, HDR_LEN};

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The host's context id.
pub const HOST_CID: u64 = 2;
/// Connections open at once by default (host- and guest-initiated together).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Back-end event data of the inner epoll.
pub const EVENT_BACKEND: u32 = BACKEND_EVENT_BASE;
/// TX chains served per kick or wake-up at most.
pub const TX_BATCH: usize = 256;
/// RX packets delivered per kick or wake-up at most.
pub const RX_BATCH: usize = 256;
/// Bytes of configuration space: `guest_cid`.
pub const CONFIG_LEN: usize = 8;

const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

static LOG: RateLimited = RateLimited::new();

/// Logs a guest-triggerable line through the rate limiter.
fn vsock_log(line: std::fmt::Arguments) {
    LOG.warn(line);
}

/// Why the device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved or does not fit the 32 bits guests use.
    #[error(
        "guest CID {cid} cannot be used: 0, 1, 2 and 4294967295 are reserved and larger values \
         do not fit; choose a CID from 3 to 4294967294"
    )]
    InvalidCid {
        /// The CID given.
        cid: u64,
    },
    /// A cap of zero connections.
    #[error("a vsock device needs room for at least one connection; raise the connection cap")]
    NoConnections,
    /// Something already exists at the socket path.
    #[error(
        "the vsock socket path {path:?} already exists; remove the stale socket or choose \
         another path"
    )]
    PathExists {
        /// The path.
        path: PathBuf,
    },
    /// The listening socket could not be created.
    #[error(
        "cannot listen on the vsock socket {path:?}: {source}; check that its directory exists \
         and is writable and that the path is shorter than 108 bytes"
    )]
    Bind {
        /// The path.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// The inner epoll or its wake eventfd could not be set up.
    #[error(
        "cannot create the vsock device's event descriptors: {source}; raise the open-file limit"
    )]
    Epoll {
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
}

struct Active {
    mem: Memory,
    rx: QueueHandler,
    tx: QueueHandler,
    // Held so the driver's event buffers stay ours; no event is ever sent.
    _event: QueueHandler,
    interrupt: Arc<Interrupt>,
}

/// The vsock device.
pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    counters: Arc<VirtioCounters>,
    active: Option<Active>,
    tx_more: bool,
}

impl Vsock {
    /// A device for guest `guest_cid` listening on `uds_path` (which must not exist), with
    /// the default connection cap.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Vsock, VsockError> {
        Vsock::with_max_connections(guest_cid, uds_path, DEFAULT_MAX_CONNECTIONS)
    }

    /// Like [`Vsock::new`] with a cap of `max_connections` connections.
    pub fn with_max_connections(
        guest_cid: u64,
        uds_path: PathBuf,
        max_connections: usize,
    ) -> Result<Vsock, VsockError> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid { cid: guest_cid });
        }
        if max_connections == 0 {
            return Err(VsockError::NoConnections);
        }
        let counters = Arc::new(VirtioCounters::default());
        let muxer = Muxer::new(guest_cid, uds_path, max_connections, counters.clone())?;
        Ok(Vsock {
            guest_cid,
            muxer,
            counters,
            active: None,
            tx_more: false,
        })
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The listening socket's path.
    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// Connections open now (including host streams that have not sent CONNECT yet).
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Connection attempts refused so far because the cap was reached.
    pub fn refused_over_cap(&self) -> u64 {
        self.muxer.refused_over_cap()
    }

    /// Serves the TX queue (up to [`TX_BATCH`] chains), then delivers what that produced.
    fn process_tx(&mut self) {
        self.tx_more = false;
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut served = 0usize;
        loop {
            if served == TX_BATCH {
                self.tx_more = true;
                self.muxer.poke();
                break;
            }
            let Some(popped) = active.tx.pop_or_enable(&active.mem) else {
                break;
            };
            served += 1;
            match popped {
                Popped::Chain(chain) => {
                    tx_packet(
                        &mut self.muxer,
                        &active.mem,
                        &chain,
                        self.guest_cid,
                        &self.counters,
                    );
                    if active.tx.complete(&active.mem, chain.head, 0).is_err() {
                        bump(&self.counters.malformed_chains, 1);
                    }
                }
                Popped::Malformed(e) => {
                    bump(&self.counters.malformed_chains, 1);
                    vsock_log(format_args!(
                        "virtio-vsock: malformed TX chain refused: {e}"
                    ));
                }
            }
        }
        if served > 0 && active.tx.needs_notification(&active.mem) {
            active.interrupt.signal_used_queue();
        }
        self.process_rx();
    }

    /// Delivers up to [`RX_BATCH`] packets while the guest has buffers.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut completed = false;
        let mut served = 0usize;
        while self.muxer.has_rx() {
            if served == RX_BATCH {
                self.muxer.poke();
                break;
            }
            let Some(popped) = active.rx.pop_or_enable(&active.mem) else {
                // Out of buffers: the guest's next RX kick brings us back.
                break;
            };
            served += 1;
            let chain = match popped {
                Popped::Chain(chain) => chain,
                Popped::Malformed(e) => {
                    completed = true;
                    bump(&self.counters.malformed_chains, 1);
                    vsock_log(format_args!(
                        "virtio-vsock: malformed RX chain refused: {e}"
                    ));
                    continue;
                }
            };
            if chain.writable_len() < HDR_LEN as u64 || !chain.readable.is_empty() {
                completed = true;
                bump(&self.counters.malformed_chains, 1);
                vsock_log(format_args!(
                    "virtio-vsock: RX chain refused: it needs at least {HDR_LEN} device-writable \
                     bytes and no readable ones"
                ));
                if active.rx.complete(&active.mem, chain.head, 0).is_err() {
                    bump(&self.counters.malformed_chains, 1);
                }
                continue;
            }
            let Some(len) = self.muxer.next_rx(&active.mem, &chain) else {
                active.rx.undo_pop();
                break;
            };
            completed = true;
            bump(&self.counters.rx_packets, 1);
            bump(
                &self.counters.rx_bytes,
                u64::from(len).saturating_sub(HDR_LEN as u64),
            );
            if active.rx.complete(&active.mem, chain.head, len).is_err() {
                bump(&self.counters.malformed_chains, 1);
            }
        }
        if completed && active.rx.needs_notification(&active.mem) {
            active.interrupt.signal_used_queue();
        }
    }
}

/// Checks and forwards one TX packet.
fn tx_packet(
    muxer: &mut Muxer,
    mem: &Memory,
    chain: &DescriptorChainView,
    guest_cid: u64,
    counters: &VirtioCounters,
) {
    let total = chain.readable_len();
    let mut bytes = [0u8; HDR_LEN];
    let hdr = match chain.read_at(mem, 0, &mut bytes) {
        Ok(HDR_LEN) => Header::from_bytes(&bytes),
        _ => {
            bump(&counters.malformed_chains, 1);
            vsock_log(format_args!(
                "virtio-vsock: {}",
                PacketError::ShortHeader { len: total }
            ));
            return;
        }
    };
    if let Err(e) = check_tx(&hdr, total - HDR_LEN as u64, guest_cid) {
        match e {
            PacketError::LengthMismatch { .. } | PacketError::TooLong { .. } => {
                bump(&counters.malformed_chains, 1)
            }
            _ => bump(&counters.unsupported_requests, 1),
        }
        vsock_log(format_args!("virtio-vsock: TX packet refused: {e}"));
        let from_guest = hdr.src_cid == guest_cid && hdr.dst_cid == HOST_CID;
        let answerable = matches!(
            e,
            PacketError::BadType { .. }
                | PacketError::UnknownOp { .. }
                | PacketError::PayloadOnControl { .. }
        );
        if from_guest && answerable && hdr.op != op::RST {
            muxer.reject(&hdr);
        }
        return;
    }
    bump(&counters.requests, 1);
    bump(&counters.tx_packets, 1);
    bump(&counters.tx_bytes, u64::from(hdr.len));
    muxer.guest_packet(mem, chain, &hdr);
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn name(&self) -> &'static str {
        "vsock"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn offered_features(&self) -> u64 {
        features::VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let mut queues = activation.queues.into_iter();
        let (Some(rx), Some(tx), Some(event), None) =
            (queues.next(), queues.next(), queues.next(), queues.next())
        else {
            return Err(ActivateError {
                device: "vsock",
                detail: "the transport must hand over exactly three queues (RX, TX, event)".into(),
            });
        };
        self.active = Some(Active {
            mem: activation.mem,
            rx: QueueHandler::new(rx),
            tx: QueueHandler::new(tx),
            _event: QueueHandler::new(event),
            interrupt: activation.interrupt,
        });
        self.tx_more = false;
        // Deliver what waited (host connections made before the guest's driver started) from
        // the event-loop thread.
        self.muxer.poke();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.tx_more = false;
        self.muxer.reset();
    }

    fn queue_notified(&mut self, index: usize) {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => {}
        }
    }

    fn backend_events(&self) -> Vec<(RawFd, u32, EventSet)> {
        vec![(self.muxer.epoll_fd(), EVENT_BACKEND, EventSet::IN)]
    }

    fn backend_event(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() != EVENT_BACKEND {
            return;
        }
        self.muxer.process_events();
        if self.tx_more {
            self.process_tx();
        } else {
            self.process_rx();
        }
    }

    fn counters(&self) -> Arc<VirtioCounters> {
        self.counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ev-vsock-unit-{}-{name}", std::process::id()))
    }

    #[test]
    fn reserved_cids_are_refused() {
        for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
            let err = Vsock::new(cid, temp_path("cid")).err();
            assert!(
                matches!(err, Some(VsockError::InvalidCid { cid: c }) if c == cid),
                "{cid}"
            );
        }
        assert!(!temp_path("cid").exists());
    }

    #[test]
    fn config_space_is_the_cid_little_endian() {
        let path = temp_path("cfg");
        let dev = Vsock::new(0x0102_0304, path.clone()).unwrap();
        let mut all = [0xAAu8; 12];
        dev.read_config(0, &mut all);
        assert_eq!(all, [4, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut one = [0xAAu8; 1];
        dev.read_config(1, &mut one);
        assert_eq!(one, [3]);
        dev.read_config(u64::MAX, &mut one);
        assert_eq!(one, [0]);
        assert!(path.exists());
        drop(dev);
        assert!(
            !path.exists(),
            "the listening socket must go with the device"
        );
    }

    #[test]
    fn an_existing_path_is_refused_and_left_alone() {
        let path = temp_path("exists");
        std::fs::write(&path, b"keep").unwrap();
        let err = Vsock::new(3, path.clone()).err();
        assert!(matches!(err, Some(VsockError::PathExists { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
        std::fs::remove_file(&path).unwrap();
    }
}
