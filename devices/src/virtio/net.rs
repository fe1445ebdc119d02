//! virtio-net on a TAP (virtio 1.2, section 5.1): one RX and one TX queue, a MAC address and
//! a link status in the configuration space, no offloads.
//!
//! Data path (all on the event-loop thread):
//! * TX: each chain is a 12-byte `virtio_net_hdr_v1` followed by the frame. The chain's
//!   readable buffers go to the TAP with one `writev` straight from guest memory, behind a
//!   header of our own: nothing was negotiated that lets the guest ask for checksum or
//!   segmentation offload, so its header is replaced by a zeroed one and a hostile guest
//!   cannot hand the kernel a GSO request. Chains shorter than the header or longer than
//!   [`MAX_CHAIN_BYTES`] are refused (used length 0, `malformed_chains`). A frame the TAP
//!   does not take (including EAGAIN, which a TAP practically never returns) is dropped and
//!   counted in `io_errors`: the chain is completed, so the guest's TX ring never stalls on a
//!   slow host. At most [`TX_BATCH`] chains are served per wake-up; the rest are served after
//!   the other devices of the event loop had their turn (a self-wake through our eventfd).
//! * RX: when the TAP is readable, up to [`RX_BATCH`] frames are read, each with one `readv`
//!   straight into the writable buffers of one RX chain (the TAP writes the header first);
//!   `num_buffers` is set to 1 and the chain completed with the length read. When the guest
//!   has no RX buffer left, the device stops watching the TAP for input (level-triggered
//!   epoll would otherwise wake the loop forever) and frames wait in the TAP's queue; the
//!   guest's next RX kick writes our wake eventfd, whose handler watches the TAP again and
//!   delivers what waited. While the device is not active, the TAP is not watched either.
//!   A frame longer than the guest's buffer is dropped and counted in `dropped_no_buffer`
//!   (see [`Tap::read_volatile`]: never truncated); the buffer stays for the next frame.
//!
//! If the TAP hangs up (its interface deleted under us), the device stops watching it, clears
//! `VIRTIO_NET_S_LINK_UP` and raises a configuration interrupt; TX frames are then dropped
//! and counted as `io_errors`.
//!
//! Interrupts follow `needs_notification` (VIRTIO_F_EVENT_IDX is offered), and queues are
//! drained with `enable_notification` so the driver keeps kicking.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use vmm_sys_util::eventfd::EventFd;

use super::counters::{bump, VirtioCounters};
use super::queue::{DescriptorChainView, Popped, QueueHandler};
use super::tap::{Tap, TapRead, VNET_HDR_LEN};
use super::{
    device_type, features, ActivateError, Activation, Interrupt, Memory, VirtioDevice,
    BACKEND_EVENT_BASE,
};
use crate::log::RateLimited;

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Longest TX chain accepted: the header plus a 65550-byte frame.
pub const MAX_CHAIN_BYTES: u64 = 65562;
/// Frames delivered per TAP wake-up at most.
pub const RX_BATCH: usize = 64;
/// TX chains served per kick or self-wake at most.
pub const TX_BATCH: usize = 256;

/// Feature: the configuration space holds the MAC address.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Feature: the configuration space holds the link status.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// Link status bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Back-end event data of the TAP.
pub const EVENT_TAP: u32 = BACKEND_EVENT_BASE;
/// Back-end event data of the wake eventfd (RX re-arm, TX continuation, activation).
pub const EVENT_WAKE: u32 = BACKEND_EVENT_BASE + 1;

/// Bytes of configuration space we serve: `mac` (6) and `status` (2).
pub const CONFIG_LEN: usize = 8;
/// Offset of `num_buffers` in the virtio-net header.
const NUM_BUFFERS_OFFSET: u64 = 10;

const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];

static LOG: RateLimited = RateLimited::new();

/// Why the device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The wake eventfd could not be created.
    #[error(
        "could not create the event descriptor for the virtio-net device on TAP {tap:?}: \
         {source}; raise the open-file limit"
    )]
    WakeEvent {
        /// TAP name.
        tap: String,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
}

/// The device-specific configuration space (`struct virtio_net_config`, the part we offer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfigSpace {
    /// MAC address.
    pub mac: [u8; 6],
    /// Link status bits ([`VIRTIO_NET_S_LINK_UP`]).
    pub status: u16,
}

impl NetConfigSpace {
    /// The bytes as the driver sees them (little-endian).
    pub fn bytes(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        b[..6].copy_from_slice(&self.mac);
        b[6..8].copy_from_slice(&self.status.to_le_bytes());
        b
    }

    /// Fills `data` from `offset`; bytes past the end (and offsets that overflow) read 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| bytes.get(at))
                .copied()
                .unwrap_or(0);
        }
    }
}

/// Why a MAC address given by the user was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six two-digit hex bytes.
    #[error(
        "MAC address {0:?} is not six two-digit hex bytes separated by ':': write it like \
         52:54:00:12:34:56"
    )]
    Syntax(String),
    /// A multicast (group) address.
    #[error(
        "MAC address {0:?} is a multicast address (bit 0 of the first byte is set): give the \
         NIC a unicast address, e.g. 02:xx:xx:xx:xx:xx"
    )]
    Multicast(String),
    /// All zeroes.
    #[error("MAC address {0:?} is all zeroes: give the NIC a real unicast address")]
    Zero(String),
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with '-') into a unicast MAC address.
pub fn parse_mac(text: &str) -> Result<[u8; 6], MacError> {
    let syntax = || MacError::Syntax(text.to_string());
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(syntax());
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(syntax());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
    }
    if mac[0] & 0x01 != 0 {
        return Err(MacError::Multicast(text.to_string()));
    }
    if mac == [0; 6] {
        return Err(MacError::Zero(text.to_string()));
    }
    Ok(mac)
}

/// A random unicast, locally administered MAC address (getrandom(2); a clock-and-pid mix if
/// that fails).
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most 6 bytes into our 6-byte array.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mix = nanos ^ (u64::from(std::process::id()) << 24);
        mac.copy_from_slice(&mix.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & !0x01) | 0x02;
    mac
}

struct Active {
    mem: Memory,
    rx: QueueHandler,
    tx: QueueHandler,
    interrupt: Arc<Interrupt>,
}

/// The virtio-net device.
pub struct Net {
    tap: Tap,
    config: NetConfigSpace,
    counters: Arc<VirtioCounters>,
    wake: EventFd,
    active: Option<Active>,
    /// Whether the TAP is watched for input (see the module documentation).
    rx_armed: bool,
    /// TX stopped at [`TX_BATCH`] with chains left; the wake handler continues.
    tx_more: bool,
    /// The TAP hung up; it is no longer watched.
    tap_lost: bool,
}

/// What happened to one RX chain.
enum RxOutcome {
    /// A frame of this many bytes (header included) was written.
    Delivered(u32),
    /// No frame waiting: the chain was put back.
    Empty,
    /// The read failed; the chain was put back.
    Failed,
}

impl Net {
    /// A device on `tap` with `mac`, or a random locally administered MAC when `None`.
    pub fn new(tap: Tap, mac: Option<[u8; 6]>) -> Result<Net, NetError> {
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| NetError::WakeEvent {
            tap: tap.name().to_string(),
            source,
        })?;
        Ok(Net {
            tap,
            config: NetConfigSpace {
                mac: mac.unwrap_or_else(random_mac),
                status: VIRTIO_NET_S_LINK_UP,
            },
            counters: Arc::new(VirtioCounters::default()),
            wake,
            active: None,
            rx_armed: true,
            tx_more: false,
            tap_lost: false,
        })
    }

    /// The MAC address the guest sees.
    pub fn mac(&self) -> [u8; 6] {
        self.config.mac
    }

    /// The TAP.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Whether the TAP is currently watched for input (false while the guest has no RX
    /// buffer or the device is not active).
    pub fn rx_armed(&self) -> bool {
        self.rx_armed
    }

    fn poke(&self) {
        if self.wake.write(1).is_err() {
            bump(&self.counters.io_errors, 1);
        }
    }

    fn watch_tap(&mut self, ops: &mut EventOps, watch: bool) {
        let set = if watch {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        match ops.modify(Events::with_data_raw(self.tap.as_raw_fd(), EVENT_TAP, set)) {
            Ok(()) => self.rx_armed = watch,
            Err(e) => {
                bump(&self.counters.io_errors, 1);
                LOG.warn(format_args!(
                    "virtio-net {}: cannot change the TAP's event registration: {e:?}",
                    self.tap.name()
                ));
            }
        }
    }

    /// Serves the TX queue (up to [`TX_BATCH`] chains).
    fn process_tx(&mut self) {
        self.tx_more = false;
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut served = 0usize;
        loop {
            if served == TX_BATCH {
                self.tx_more = true;
                break;
            }
            let Some(popped) = active.tx.pop_or_enable(&active.mem) else {
                break;
            };
            served += 1;
            let chain = match popped {
                Popped::Chain(chain) => chain,
                Popped::Malformed(e) => {
                    bump(&self.counters.malformed_chains, 1);
                    LOG.warn(format_args!("virtio-net: malformed TX chain refused: {e}"));
                    continue;
                }
            };
            transmit(&self.tap, &active.mem, &chain, &self.counters);
            if active.tx.complete(&active.mem, chain.head, 0).is_err() {
                bump(&self.counters.malformed_chains, 1);
            }
        }
        if served > 0 && active.tx.needs_notification(&active.mem) {
            active.interrupt.signal_used_queue();
        }
        if self.tx_more {
            self.poke();
        }
    }

    /// Delivers up to [`RX_BATCH`] frames; stops watching the TAP when the guest has no
    /// buffer or the device is inactive.
    fn process_rx(&mut self, ops: &mut EventOps) {
        let Some(active) = self.active.as_mut() else {
            if self.rx_armed {
                self.watch_tap(ops, false);
            }
            return;
        };
        let mut completed = false;
        let mut frames = 0usize;
        let mut out_of_buffers = false;
        while frames < RX_BATCH {
            let Some(popped) = active.rx.pop_or_enable(&active.mem) else {
                out_of_buffers = true;
                break;
            };
            let chain = match popped {
                Popped::Chain(chain) => chain,
                Popped::Malformed(e) => {
                    completed = true;
                    frames += 1;
                    bump(&self.counters.malformed_chains, 1);
                    LOG.warn(format_args!("virtio-net: malformed RX chain refused: {e}"));
                    continue;
                }
            };
            if chain.writable_len() < VNET_HDR_LEN as u64 {
                completed = true;
                frames += 1;
                bump(&self.counters.malformed_chains, 1);
                LOG.warn(format_args!(
                    "virtio-net: RX chain of {} writable bytes refused: the header alone is {}",
                    chain.writable_len(),
                    VNET_HDR_LEN
                ));
                if active.rx.complete(&active.mem, chain.head, 0).is_err() {
                    bump(&self.counters.malformed_chains, 1);
                }
                continue;
            }
            match receive(&self.tap, &active.mem, &chain, &self.counters) {
                RxOutcome::Delivered(len) => {
                    frames += 1;
                    completed = true;
                    if active.rx.complete(&active.mem, chain.head, len).is_err() {
                        bump(&self.counters.malformed_chains, 1);
                    }
                }
                RxOutcome::Empty => {
                    active.rx.undo_pop();
                    break;
                }
                RxOutcome::Failed => {
                    frames += 1;
                    active.rx.undo_pop();
                }
            }
        }
        if completed && active.rx.needs_notification(&active.mem) {
            active.interrupt.signal_used_queue();
        }
        if out_of_buffers && self.rx_armed {
            self.watch_tap(ops, false);
        }
    }

    /// The TAP reports an error or hang-up (its interface was deleted under us): epoll
    /// reports that whatever we ask for, so stop watching it for good, and tell the guest
    /// the link is down.
    fn tap_gone(&mut self, ops: &mut EventOps) {
        bump(&self.counters.io_errors, 1);
        LOG.warn(format_args!(
            "virtio-net {}: the TAP reported an error or hang-up (was the interface \
             deleted?); the guest's link is now down",
            self.tap.name()
        ));
        let _ = ops.remove(Events::empty_raw(self.tap.as_raw_fd()));
        self.rx_armed = false;
        self.tap_lost = true;
        self.config.status &= !VIRTIO_NET_S_LINK_UP;
        if let Some(active) = &self.active {
            active.interrupt.signal_config_change();
        }
    }

    fn wake_event(&mut self, ops: &mut EventOps) {
        // Several pokes may have coalesced; one pass serves them all.
        let _ = self.wake.read();
        if self.active.is_some() && !self.rx_armed && !self.tap_lost {
            self.watch_tap(ops, true);
        }
        if self.rx_armed {
            self.process_rx(ops);
        }
        if self.tx_more {
            self.process_tx();
        }
    }
}

/// Sends one TX chain to the TAP, counting the outcome.
fn transmit(tap: &Tap, mem: &Memory, chain: &DescriptorChainView, counters: &VirtioCounters) {
    let len = chain.readable_len();
    if len < VNET_HDR_LEN as u64 || len > MAX_CHAIN_BYTES {
        bump(&counters.malformed_chains, 1);
        LOG.warn(format_args!(
            "virtio-net: TX chain of {len} bytes refused: it must hold the {VNET_HDR_LEN}-byte \
             header and at most {MAX_CHAIN_BYTES} bytes in all"
        ));
        return;
    }
    let slices = match chain.readable_slices(mem, VNET_HDR_LEN as u64) {
        Ok(s) => s,
        Err(e) => {
            bump(&counters.malformed_chains, 1);
            LOG.warn(format_args!("virtio-net: TX chain refused: {e}"));
            return;
        }
    };
    // No offload was negotiated: the kernel gets a plain header whatever the guest wrote.
    let header = [0u8; VNET_HDR_LEN];
    match tap.write_volatile(&header, &slices) {
        Ok(_) => {
            bump(&counters.tx_packets, 1);
            bump(&counters.tx_bytes, len - VNET_HDR_LEN as u64);
        }
        Err(e) => {
            bump(&counters.io_errors, 1);
            LOG.warn(format_args!(
                "virtio-net {}: frame dropped, the TAP refused it: {e}",
                tap.name()
            ));
        }
    }
}

/// Reads one frame from the TAP into an RX chain.
fn receive(
    tap: &Tap,
    mem: &Memory,
    chain: &DescriptorChainView,
    counters: &VirtioCounters,
) -> RxOutcome {
    let slices = match chain.writable_slices(mem, 0) {
        Ok(s) => s,
        Err(e) => {
            // Cannot happen for a validated chain; treat it like a failed read.
            bump(&counters.io_errors, 1);
            LOG.warn(format_args!("virtio-net: RX buffer unusable: {e}"));
            return RxOutcome::Failed;
        }
    };
    match tap.read_volatile(&slices) {
        Ok(TapRead::Frame(n)) if n >= VNET_HDR_LEN => {
            // Without VIRTIO_NET_F_MRG_RXBUF every frame fills exactly one chain; the TAP
            // leaves num_buffers as it found it.
            if chain
                .write_at(mem, NUM_BUFFERS_OFFSET, &1u16.to_le_bytes())
                .is_err()
            {
                bump(&counters.io_errors, 1);
            }
            bump(&counters.rx_packets, 1);
            bump(&counters.rx_bytes, (n - VNET_HDR_LEN) as u64);
            RxOutcome::Delivered(n as u32)
        }
        Ok(TapRead::TooLong) => {
            bump(&counters.dropped_no_buffer, 1);
            LOG.warn(format_args!(
                "virtio-net {}: frame dropped, longer than the guest's RX buffer of {} bytes",
                tap.name(),
                chain.writable_len()
            ));
            RxOutcome::Failed
        }
        Ok(TapRead::Frame(n)) => {
            bump(&counters.io_errors, 1);
            LOG.warn(format_args!(
                "virtio-net {}: the TAP returned a {n}-byte frame, shorter than its header",
                tap.name()
            ));
            RxOutcome::Failed
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => RxOutcome::Empty,
        Err(e) => {
            bump(&counters.io_errors, 1);
            LOG.warn(format_args!(
                "virtio-net {}: reading a frame from the TAP failed: {e}",
                tap.name()
            ));
            RxOutcome::Failed
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn name(&self) -> &'static str {
        "net"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn offered_features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let mut queues = activation.queues.into_iter();
        let (Some(rx), Some(tx), None) = (queues.next(), queues.next(), queues.next()) else {
            return Err(ActivateError {
                device: "net",
                detail: "the transport must hand over exactly two queues (RX and TX)".into(),
            });
        };
        self.active = Some(Active {
            mem: activation.mem,
            rx: QueueHandler::new(rx),
            tx: QueueHandler::new(tx),
            interrupt: activation.interrupt,
        });
        self.tx_more = false;
        // Watch the TAP again (it may have been parked while inactive) and serve anything
        // that waited: done on the event-loop thread, which owns the registrations.
        self.poke();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.tx_more = false;
    }

    fn queue_notified(&mut self, index: usize) {
        match index {
            // New RX buffers: re-watch the TAP if it was parked (nothing to do otherwise:
            // frames wake us through the TAP).
            RX_QUEUE if !self.rx_armed && !self.tap_lost => self.poke(),
            TX_QUEUE => self.process_tx(),
            _ => {}
        }
    }

    fn backend_events(&self) -> Vec<(RawFd, u32, EventSet)> {
        vec![
            (self.tap.as_raw_fd(), EVENT_TAP, EventSet::IN),
            (self.wake.as_raw_fd(), EVENT_WAKE, EventSet::IN),
        ]
    }

    fn backend_event(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            EVENT_TAP
                if events
                    .event_set()
                    .intersects(EventSet::ERROR | EventSet::HANG_UP) =>
            {
                self.tap_gone(ops)
            }
            EVENT_TAP => self.process_rx(ops),
            EVENT_WAKE => self.wake_event(ops),
            _ => {}
        }
    }

    fn counters(&self) -> Arc<VirtioCounters> {
        self.counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn space() -> NetConfigSpace {
        NetConfigSpace {
            mac: MAC,
            status: VIRTIO_NET_S_LINK_UP,
        }
    }

    #[test]
    fn config_reads_at_every_offset_and_size() {
        let expected = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x01, 0x00];
        let s = space();
        assert_eq!(s.bytes(), expected);
        for size in [1usize, 2, 3, 4, 8, 16] {
            for offset in 0..(CONFIG_LEN as u64 + 4) {
                let mut data = vec![0xAAu8; size];
                s.read(offset, &mut data);
                for (i, got) in data.iter().enumerate() {
                    let at = offset as usize + i;
                    let want = expected.get(at).copied().unwrap_or(0);
                    assert_eq!(*got, want, "offset {offset} size {size} byte {i}");
                }
            }
        }
    }

    #[test]
    fn config_reads_far_out_and_overflowing_are_zero() {
        let s = space();
        for offset in [0x100, u64::MAX - 1, u64::MAX] {
            let mut data = [0xAAu8; 4];
            s.read(offset, &mut data);
            assert_eq!(data, [0; 4], "offset {offset:#x}");
        }
        let mut empty = [0u8; 0];
        s.read(0, &mut empty);
    }

    #[test]
    fn link_status_is_little_endian_at_offset_6() {
        let s = NetConfigSpace {
            mac: MAC,
            status: 0x0201,
        };
        let mut data = [0u8; 2];
        s.read(6, &mut data);
        assert_eq!(data, [0x01, 0x02]);
    }

    #[test]
    fn mac_strings_parse_or_say_why_not() {
        assert_eq!(parse_mac("52:54:00:12:34:56"), Ok(MAC));
        assert_eq!(
            parse_mac("52-54-00-12-34-5A"),
            Ok([0x52, 0x54, 0, 0x12, 0x34, 0x5a])
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52:54:00:12:34:zz",
            "+2:54:00:12:34:56",
            "52::54:00:12:34",
        ] {
            assert_eq!(parse_mac(bad), Err(MacError::Syntax(bad.into())), "{bad:?}");
        }
        assert_eq!(
            parse_mac("01:00:5e:00:00:01"),
            Err(MacError::Multicast("01:00:5e:00:00:01".into()))
        );
        assert_eq!(
            parse_mac("00:00:00:00:00:00"),
            Err(MacError::Zero("00:00:00:00:00:00".into()))
        );
        assert!(MacError::Syntax("x".into())
            .to_string()
            .contains("52:54:00:12:34:56"));
    }

    #[test]
    fn random_macs_are_unicast_locally_administered_and_differ() {
        let macs: Vec<[u8; 6]> = (0..8).map(|_| random_mac()).collect();
        for mac in &macs {
            assert_eq!(mac[0] & 0x01, 0, "multicast bit set in {mac:02x?}");
            assert_eq!(mac[0] & 0x02, 0x02, "not locally administered: {mac:02x?}");
        }
        assert!(
            macs.windows(2).any(|w| w[0] != w[1]),
            "eight random MACs were all equal"
        );
    }
}
