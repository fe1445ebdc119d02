//! A virtio-net device whose data path is a vhost-user back end (DPDK testpmd, OVS-DPDK).
//!
//! [`VhostUserNet`] implements [`devices::virtio::VirtioDevice`]: the guest sees a virtio-net
//! card (RX queue 0, TX queue 1 per pair) and the VMM only does the control path. On
//! activation the back end receives the guest memory (SET_MEM_TABLE with each region's memfd),
//! the vring addresses and the queues' kick eventfds (which KVM signals on QueueNotify), so
//! packets never cross the VMM process. The back end signals used buffers on one call eventfd
//! per queue; the event loop relays those into the device's interrupt, because the
//! virtio-mmio driver must read InterruptStatus.
//!
//! Threads: [`VirtioDevice::activate`] and [`VirtioDevice::reset`] run on a vCPU thread (the
//! driver's status write), whose seccomp filter has no socket calls and which must not block
//! on a slow back end. They only record the wanted state and signal an eventfd; the event
//! loop then talks to the back end (GET_VRING_BASE to stop, the whole start sequence to
//! start). Queues kicked in between are not lost: every kick eventfd is signalled once the
//! rings are handed over.
//!
//! A back end that goes away (socket hang-up) is reconnected: a timer retries the connection
//! (client mode) or accepts the next back end (server mode) and the whole state is sent again,
//! each vring resuming at its used ring's idx read from guest memory.

mod ctrl;
mod error;
mod handshake;
pub mod sriov;
pub mod vfio;
mod watchdog;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use devices::log::RateLimited;
use devices::virtio::counters::bump;
use devices::virtio::queue::{QueueHandler, RequestQueue};
use devices::virtio::{
    device_type, features, ActivateError, Activation, Interrupt, Memory, VirtioCounters,
    VirtioDevice, BACKEND_EVENT_BASE,
};
use event_manager::{EventOps, EventSet, Events};
use vhost::vhost_user::Frontend;
use vhost::VhostBackend;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

pub use ctrl::{VIRTIO_NET_ERR, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ, VIRTIO_NET_OK};
pub use error::VhostUserNetError;
pub use handshake::{Mode, MAX_MEM_REGIONS};
use handshake::{Negotiated, StartState};
pub use watchdog::REPLY_TIMEOUT;

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Most queue pairs a device accepts. With more than one pair the device offers
/// VIRTIO_NET_F_MQ and VIRTIO_NET_F_CTRL_VQ; the control virtqueue (the last queue) is
/// answered by edgevisor, and the back end must report at least that many pairs
/// (GET_QUEUE_NUM, protocol feature MQ).
pub const MAX_QUEUE_PAIRS: u16 = 8;
/// How long [`VhostUserNet::connect`] in server mode waits for the back end to connect
/// (client mode tries once: the back end must already listen).
pub const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// How often a lost back end is retried.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(200);

/// virtio-net feature: the device has a MAC address in its config space.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// virtio-net feature: the driver can merge receive buffers.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
/// virtio-net feature: the config space has a link status.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// Link-up bit of the config status field.
const LINK_UP: u16 = 1;
/// Features passed through when the back end offers them.
const PASSTHROUGH_FEATURES: u64 =
    VIRTIO_NET_F_MRG_RXBUF | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC;

/// Event data: the vhost-user socket hung up.
pub const EVENT_SOCKET: u32 = BACKEND_EVENT_BASE;
/// Event data: the reconnect timer fired.
pub const EVENT_RECONNECT: u32 = BACKEND_EVENT_BASE + 1;
/// Event data: activate or reset changed what the back end should run.
pub const EVENT_SYNC: u32 = BACKEND_EVENT_BASE + 2;
/// Event data: the guest kicked the control virtqueue.
pub const EVENT_CTRL: u32 = BACKEND_EVENT_BASE + 3;
/// Event data of queue `q`'s call eventfd: `EVENT_CALL_BASE + q`.
pub const EVENT_CALL_BASE: u32 = BACKEND_EVENT_BASE + 0x10;

/// Guest-triggered control-queue log lines, rate limited.
static CTRL_LOG: RateLimited = RateLimited::new();

/// What an activated device keeps to (re)start the back end.
struct Active {
    /// Which activation this is (bumped by every activate).
    generation: u64,
    /// The rings were handed to some back end before: a new back end resumes each ring at
    /// the used idx in guest memory, not at the queue's initial next_avail.
    started_before: bool,
    mem: Memory,
    queues: Vec<Queue>,
    acked_features: u64,
    interrupt: Arc<Interrupt>,
    /// The kick eventfds of the data queues (`queues`), in the same order.
    kicks: Vec<Arc<EventFd>>,
    /// The driver accepted VIRTIO_NET_F_MQ: all `max_pairs` pairs are data queues.
    mq: bool,
    /// Queue pairs the driver uses now (1 until a VQ_PAIRS_SET).
    pairs: u16,
    /// The control virtqueue when the driver accepted VIRTIO_NET_F_CTRL_VQ and set it up.
    ctrl: Option<RequestQueue>,
    /// Its kick eventfd, which the event loop watches while this activation lasts.
    ctrl_kick: Option<Arc<EventFd>>,
}

/// A virtio-net device served by a vhost-user back end.
pub struct VhostUserNet {
    path: PathBuf,
    mode: Mode,
    listener: Option<UnixListener>,
    frontend: Option<Frontend>,
    negotiated: Negotiated,
    config: [u8; 10],
    queue_sizes: Vec<u16>,
    calls: Vec<EventFd>,
    timer: TimerFd,
    sync: EventFd,
    active: Option<Active>,
    generation: u64,
    /// Queue pairs offered (`max_virtqueue_pairs`).
    max_pairs: u16,
    /// The control queue kick eventfd registered with the event loop.
    ctrl_watched: Option<RawFd>,
    /// The generation the connected back end runs, and which rings it got.
    started: Option<(u64, Vec<usize>)>,
    reconnects: u64,
    starts: u64,
    counters: Arc<VirtioCounters>,
    /// Ends a conversation the back end stops answering ([`REPLY_TIMEOUT`]).
    watchdog: watchdog::Watchdog,
}

/// `result` of a conversation the watchdog guarded: a [`VhostUserNetError::NoReply`] if the
/// deadline passed (the request failed because the socket was shut down).
fn answered<T>(
    armed: &watchdog::Armed<'_>,
    path: &Path,
    result: Result<T, VhostUserNetError>,
) -> Result<T, VhostUserNetError> {
    if armed.fired() {
        return Err(VhostUserNetError::NoReply {
            path: path.to_path_buf(),
            seconds: REPLY_TIMEOUT.as_secs(),
        });
    }
    result
}

impl std::fmt::Debug for VhostUserNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserNet")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .field("connected", &self.frontend.is_some())
            .field("active", &self.active.is_some())
            .finish()
    }
}

fn random_mac() -> [u8; 6] {
    let mut bytes = [0u8; 3];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id();
        bytes.copy_from_slice(&t.to_le_bytes()[..3]);
    }
    // 52:54:00 is the locally administered prefix QEMU/KVM guests use.
    [0x52, 0x54, 0x00, bytes[0], bytes[1], bytes[2]]
}

impl VhostUserNet {
    /// Connects to (client) or waits for (server) the back end at `socket`, takes ownership
    /// of the session and negotiates features. `queues` is the number of RX/TX pairs.
    /// In server mode a failure removes the socket file it created, so nothing is left behind.
    pub fn connect(
        socket: &Path,
        mode: Mode,
        mac: Option<[u8; 6]>,
        queues: u16,
    ) -> Result<VhostUserNet, VhostUserNetError> {
        let result = Self::connect_inner(socket, mode, mac, queues);
        if result.is_err() && mode == Mode::Server {
            use std::os::unix::fs::FileTypeExt;
            // listen() replaced any stale socket with its own: a socket there now is ours.
            let ours = std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket());
            if ours {
                let _ = std::fs::remove_file(socket);
            }
        }
        result
    }

    fn connect_inner(
        socket: &Path,
        mode: Mode,
        mac: Option<[u8; 6]>,
        queues: u16,
    ) -> Result<VhostUserNet, VhostUserNetError> {
        if queues == 0 || queues > MAX_QUEUE_PAIRS {
            return Err(VhostUserNetError::BadQueueCount {
                queues,
                max: MAX_QUEUE_PAIRS,
            });
        }
        let vrings = usize::from(queues) * 2;
        let (listener, stream) = match mode {
            Mode::Client => (None, handshake::connect_once(socket)?),
            Mode::Server => {
                let listener = handshake::listen(socket)?;
                let stream = handshake::accept(&listener, socket, CONNECT_WAIT)?;
                (Some(listener), stream)
            }
        };
        let watchdog = watchdog::Watchdog::spawn().map_err(VhostUserNetError::Watchdog)?;
        let mut frontend = Frontend::from_stream(stream, vrings as u64);
        let negotiated = {
            let armed = watchdog.arm(frontend.as_raw_fd(), REPLY_TIMEOUT);
            answered(
                &armed,
                socket,
                handshake::negotiate(&mut frontend, socket, queues),
            )?
        };
        let calls = (0..vrings)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VhostUserNetError::EventFd)?;
        let timer = TimerFd::new().map_err(|e| {
            VhostUserNetError::EventFd(std::io::Error::from_raw_os_error(e.errno()))
        })?;
        let sync = EventFd::new(libc::EFD_NONBLOCK).map_err(VhostUserNetError::EventFd)?;
        let mac = mac.unwrap_or_else(random_mac);
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&queues.to_le_bytes());
        Ok(VhostUserNet {
            path: socket.to_path_buf(),
            mode,
            listener,
            frontend: Some(frontend),
            negotiated,
            config,
            // With multiqueue, the control virtqueue comes after the data queues.
            queue_sizes: vec![QUEUE_SIZE; if queues > 1 { vrings + 1 } else { vrings }],
            calls,
            timer,
            sync,
            active: None,
            generation: 0,
            max_pairs: queues,
            ctrl_watched: None,
            started: None,
            reconnects: 0,
            starts: 0,
            counters: Arc::new(VirtioCounters::default()),
            watchdog,
        })
    }

    /// The MAC address in the config space.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        mac
    }

    /// The virtio features the back end offered (GET_FEATURES).
    pub fn backend_features(&self) -> u64 {
        self.negotiated.backend_features
    }

    /// The vhost-user protocol features both sides agreed on.
    pub fn protocol_features(&self) -> u64 {
        self.negotiated.protocol.bits()
    }

    /// True while a back end is connected.
    pub fn is_connected(&self) -> bool {
        self.frontend.is_some()
    }

    /// How many times a lost back end was reconnected.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Each queue's call eventfd (what the back end signals on used buffers).
    pub fn call_events(&self) -> &[EventFd] {
        &self.calls
    }

    /// How many times the rings were handed to a back end (first start, restarts after a
    /// reset, and after each reconnect).
    pub fn starts(&self) -> u64 {
        self.starts
    }

    /// True while the connected back end runs the rings of the current activation.
    pub fn is_running(&self) -> bool {
        self.started.is_some()
    }

    fn socket_events(&self) -> Option<Events> {
        let fd = self.frontend.as_ref()?.as_raw_fd();
        Some(Events::with_data_raw(
            fd,
            EVENT_SOCKET,
            EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR,
        ))
    }

    /// Brings the back end in line with what the driver wants: stops rings of an activation
    /// that was reset (or replaced) and hands over the rings of the current one. Runs on the
    /// event loop. A failure leaves the rings stopped and is returned for the log.
    pub fn sync_backend(&mut self) -> Result<(), VhostUserNetError> {
        let wanted = self.active.as_ref().map(|a| a.generation);
        if let Some((generation, rings)) = &self.started {
            if Some(*generation) != wanted {
                if let Some(frontend) = &self.frontend {
                    // GET_VRING_BASE stops a ring in the back end (and waits for its answer).
                    let _armed = self.watchdog.arm(frontend.as_raw_fd(), REPLY_TIMEOUT);
                    for &index in rings {
                        let _ = frontend.get_vring_base(index);
                    }
                }
                self.started = None;
            }
        }
        if self.started.is_some() || self.frontend.is_none() {
            return Ok(());
        }
        let Some(active) = self.active.as_ref() else {
            return Ok(());
        };
        let Some(frontend) = self.frontend.as_mut() else {
            return Ok(());
        };
        let bases: Vec<u16> = active
            .queues
            .iter()
            .map(|q| {
                if active.started_before {
                    handshake::used_index(&active.mem, q).unwrap_or(0)
                } else {
                    virtio_queue::QueueT::next_avail(q)
                }
            })
            .collect();
        let state = StartState {
            mem: &active.mem,
            queues: &active.queues,
            acked_features: active.acked_features,
            kicks: &active.kicks,
            calls: &self.calls,
            bases: &bases,
            enabled_pairs: active.pairs,
        };
        let rings = {
            let armed = self.watchdog.arm(frontend.as_raw_fd(), REPLY_TIMEOUT);
            let result = handshake::start(frontend, &self.negotiated, &self.path, &state);
            answered(&armed, &self.path, result)?
        };
        self.started = Some((active.generation, rings));
        self.starts += 1;
        if let Some(active) = self.active.as_mut() {
            active.started_before = true;
            // Anything the guest queued before the back end had the rings: have it looked at,
            // and let the driver see anything completed just before a loss.
            for kick in &active.kicks {
                let _ = kick.write(1);
            }
            active.interrupt.signal_used_queue();
        }
        Ok(())
    }

    /// One reconnection attempt; true when a back end is connected again.
    fn try_reconnect(&mut self) -> Result<bool, VhostUserNetError> {
        let stream = match (&self.listener, self.mode) {
            (Some(listener), Mode::Server) => {
                match handshake::accept(listener, &self.path, Duration::ZERO) {
                    Ok(stream) => stream,
                    Err(VhostUserNetError::AcceptTimeout { .. }) => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            _ => match handshake::connect_once(&self.path) {
                Ok(stream) => stream,
                Err(_) => return Ok(false),
            },
        };
        let mut frontend = Frontend::from_stream(stream, self.calls.len() as u64);
        self.negotiated = {
            let armed = self.watchdog.arm(frontend.as_raw_fd(), REPLY_TIMEOUT);
            answered(
                &armed,
                &self.path,
                handshake::negotiate(&mut frontend, &self.path, self.max_pairs),
            )?
        };
        self.frontend = Some(frontend);
        self.started = None;
        self.sync_backend()?;
        self.reconnects += 1;
        Ok(true)
    }

    fn on_hang_up(&mut self, ops: &mut EventOps) {
        if let Some(events) = self.socket_events() {
            let _ = ops.remove(events);
        }
        self.frontend = None;
        self.started = None;
        eprintln!(
            "edgevisor: the vhost-user back end on {} went away; reconnecting",
            self.path.display()
        );
        if let Err(e) = self
            .timer
            .reset(RECONNECT_INTERVAL, Some(RECONNECT_INTERVAL))
        {
            eprintln!("edgevisor: cannot arm the vhost-user reconnect timer: {e}");
        }
    }

    fn on_timer(&mut self, ops: &mut EventOps) {
        let _ = self.timer.wait();
        if self.frontend.is_some() {
            let _ = self.timer.clear();
            return;
        }
        match self.try_reconnect() {
            Ok(false) => {}
            Ok(true) => {
                let _ = self.timer.clear();
                if let Some(events) = self.socket_events() {
                    if let Err(e) = ops.add(events) {
                        eprintln!("edgevisor: cannot watch the vhost-user socket: {e:?}");
                    }
                }
                eprintln!(
                    "edgevisor: the vhost-user back end on {} is back (reconnect {}, rings {})",
                    self.path.display(),
                    self.reconnects,
                    if self.started.is_some() {
                        "handed over again"
                    } else {
                        "not started: the driver has not activated the device"
                    }
                );
            }
            Err(e) => {
                // A half-done handshake: drop the connection and try again later.
                self.frontend = None;
                self.started = None;
                eprintln!("edgevisor: reconnecting the vhost-user back end failed: {e}");
            }
        }
    }

    fn on_sync(&mut self, ops: &mut EventOps) {
        let _ = self.sync.read();
        // The control queue's kick first: in a new activation its eventfd may belong to a
        // data queue that the back end is about to get.
        self.watch_ctrl(ops);
        if let Err(e) = self.sync_backend() {
            eprintln!("edgevisor: {e}");
        }
        self.serve_ctrl();
    }

    /// Watches the control queue's kick eventfd of the current activation (and only it).
    fn watch_ctrl(&mut self, ops: &mut EventOps) {
        let wanted = self
            .active
            .as_ref()
            .and_then(|a| a.ctrl_kick.as_ref())
            .map(|k| k.as_raw_fd());
        if wanted == self.ctrl_watched {
            return;
        }
        if let Some(fd) = self.ctrl_watched.take() {
            let _ = ops.remove(Events::with_data_raw(fd, EVENT_CTRL, EventSet::IN));
        }
        if let Some(fd) = wanted {
            match ops.add(Events::with_data_raw(fd, EVENT_CTRL, EventSet::IN)) {
                Ok(()) => self.ctrl_watched = Some(fd),
                Err(e) => eprintln!("edgevisor: cannot watch the control virtqueue: {e:?}"),
            }
        }
    }

    fn on_ctrl_kick(&mut self) {
        let Some(kick) = self.active.as_ref().and_then(|a| a.ctrl_kick.clone()) else {
            return;
        };
        if kick.read().is_err() {
            return;
        }
        bump(&self.counters.kicks, 1);
        self.serve_ctrl();
    }

    /// Answers every command on the control virtqueue (see [`ctrl`]). A VQ_PAIRS_SET that
    /// changes the pair count turns the back end's rings on or off (SET_VRING_ENABLE) when
    /// it runs them; a back end that is away gets the count with the rings on reconnect.
    pub fn serve_ctrl(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(mut queue) = active.ctrl.take() else {
            return;
        };
        let (max, mq, mut pairs) = (self.max_pairs, active.mq, active.pairs);
        let counters = self.counters.clone();
        queue.drain(&counters, &CTRL_LOG, "net-vhost-user ctrl", |mem, chain| {
            let mut command = [0u8; ctrl::MAX_COMMAND];
            let read = chain.read_at(mem, 0, &mut command).unwrap_or(0);
            let ack_at = chain.writable_len().checked_sub(1);
            let (Some(ack_at), true) = (ack_at, read >= 2) else {
                bump(&counters.malformed_chains, 1);
                CTRL_LOG.warn(format_args!(
                    "virtio-net ctrl: command chain refused: {read} readable bytes (2 needed) and {} writable (1 needed)",
                    chain.writable_len()
                ));
                return 0;
            };
            let verdict = ctrl::decide(&command[..read], max, mq);
            if verdict.ack != VIRTIO_NET_OK {
                bump(&counters.unsupported_requests, 1);
            }
            if let Some(n) = verdict.pairs {
                pairs = n;
            }
            bump(&counters.requests, 1);
            match chain.write_at(mem, ack_at, &[verdict.ack]) {
                Ok(1) => 1,
                _ => 0,
            }
        });
        active.ctrl = Some(queue);
        if pairs != active.pairs {
            active.pairs = pairs;
            if let Err(e) = self.enable_pairs(pairs) {
                eprintln!("edgevisor: {e}");
            }
        }
    }

    /// Tells a running back end which rings to serve: those of the first `pairs` pairs.
    fn enable_pairs(&mut self, pairs: u16) -> Result<(), VhostUserNetError> {
        let (Some((_, rings)), Some(frontend)) = (&self.started, self.frontend.as_mut()) else {
            return Ok(());
        };
        // With REPLY_ACK the back end answers each SET_VRING_ENABLE: guard the wait.
        let armed = self.watchdog.arm(frontend.as_raw_fd(), REPLY_TIMEOUT);
        let result = handshake::enable_rings(frontend, &self.path, rings, pairs);
        answered(&armed, &self.path, result)
    }

    /// Queue pairs the driver uses now (1 unless it sent VQ_PAIRS_SET), or 0 while the
    /// device is not active.
    pub fn active_pairs(&self) -> u16 {
        self.active.as_ref().map_or(0, |a| a.pairs)
    }

    /// Drains queue `index`'s call eventfd and interrupts the guest if it was signalled.
    /// The event loop does this on [`EVENT_CALL_BASE`] events; tests without an event loop
    /// may call it directly.
    pub fn relay_call(&mut self, index: usize) -> bool {
        let Some(call) = self.calls.get(index) else {
            return false;
        };
        if call.read().is_err() {
            return false;
        }
        if let Some(active) = &self.active {
            active.interrupt.signal_used_queue();
        }
        true
    }
}

impl Drop for VhostUserNet {
    fn drop(&mut self) {
        // Server mode created the socket file: remove it with the listener.
        if self.listener.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl VirtioDevice for VhostUserNet {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn name(&self) -> &'static str {
        "net-vhost-user"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn offered_features(&self) -> u64 {
        let multiqueue = if self.max_pairs > 1 {
            VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ
        } else {
            0
        };
        features::VERSION_1
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | multiqueue
            | (self.negotiated.backend_features & PASSTHROUGH_FEATURES)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        // Refuse unshared memory up front (no I/O), even while the back end is away.
        handshake::memory_table(&activation.mem).map_err(|e| ActivateError {
            device: "net-vhost-user",
            detail: e.to_string(),
        })?;
        let acked = activation.acked_features;
        // virtio 1.2, 5.1.2: with MQ the pairs are queues 0..2N and the control queue is 2N;
        // without it there is one pair and the control queue (if any) is queue 2.
        let mq = self.max_pairs > 1 && acked & VIRTIO_NET_F_MQ != 0;
        let data_vrings = if mq {
            usize::from(self.max_pairs) * 2
        } else {
            2
        };
        let mut queues = activation.queues;
        let mut kicks = activation.queue_events;
        let mut ctrl = None;
        let mut ctrl_kick = None;
        if acked & VIRTIO_NET_F_CTRL_VQ != 0 && data_vrings < queues.len() {
            let queue = queues.swap_remove(data_vrings);
            if virtio_queue::QueueT::ready(&queue) {
                ctrl = Some(RequestQueue {
                    mem: activation.mem.clone(),
                    queue: QueueHandler::new(queue),
                    interrupt: activation.interrupt.clone(),
                });
                ctrl_kick = kicks.get(data_vrings).cloned();
            }
        }
        queues.truncate(data_vrings);
        kicks.truncate(data_vrings);
        self.generation += 1;
        self.active = Some(Active {
            generation: self.generation,
            started_before: false,
            mem: activation.mem,
            queues,
            acked_features: acked,
            interrupt: activation.interrupt,
            kicks,
            mq,
            pairs: 1,
            ctrl,
            ctrl_kick,
        });
        // The event loop hands the rings over (or the reconnect path does, once a back end
        // is back).
        let _ = self.sync.write(1);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        let _ = self.sync.write(1);
    }

    fn queue_notified(&mut self, _index: usize) {}

    fn handles_kicks_itself(&self) -> bool {
        true
    }

    fn backend_events(&self) -> Vec<(RawFd, u32, EventSet)> {
        let mut events: Vec<(RawFd, u32, EventSet)> = self
            .calls
            .iter()
            .enumerate()
            .map(|(q, call)| (call.as_raw_fd(), EVENT_CALL_BASE + q as u32, EventSet::IN))
            .collect();
        events.push((self.timer.as_raw_fd(), EVENT_RECONNECT, EventSet::IN));
        events.push((self.sync.as_raw_fd(), EVENT_SYNC, EventSet::IN));
        if let Some(socket) = self.socket_events() {
            events.push((socket.fd(), EVENT_SOCKET, socket.event_set()));
        }
        events
    }

    fn backend_event(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            EVENT_SOCKET => self.on_hang_up(ops),
            EVENT_RECONNECT => self.on_timer(ops),
            EVENT_SYNC => self.on_sync(ops),
            EVENT_CTRL => self.on_ctrl_kick(),
            data if data >= EVENT_CALL_BASE => {
                self.relay_call((data - EVENT_CALL_BASE) as usize);
            }
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
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_silent_backend_in_server_mode_is_cut_off_and_its_socket_file_removed() {
        let dir = std::env::temp_dir().join(format!("net-dpdk-silent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("vm.sock");
        // The "back end" connects (as testpmd with client=1 would), reads, never answers.
        let path = socket.clone();
        let peer = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let conn = loop {
                match UnixStream::connect(&path) {
                    Ok(conn) => break conn,
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => panic!("connect {}: {e}", path.display()),
                }
            };
            let mut got = Vec::new();
            let _ = (&conn).read_to_end(&mut got);
            got.len()
        });
        let started = std::time::Instant::now();
        let err = VhostUserNet::connect(&socket, Mode::Server, None, 1).unwrap_err();
        let took = started.elapsed();
        assert!(peer.join().unwrap() > 0, "no request was sent");
        assert!(
            matches!(err, VhostUserNetError::NoReply { seconds: 5, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("did not answer within 5 s"),
            "{err}"
        );
        assert!(
            took >= REPLY_TIMEOUT && took < Duration::from_secs(15),
            "{took:?}"
        );
        assert!(!socket.exists(), "the socket file was left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
