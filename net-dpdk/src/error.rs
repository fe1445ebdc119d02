//! Errors of the vhost-user-net frontend.

use std::path::PathBuf;

/// Why the vhost-user-net device could not connect, negotiate or start.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserNetError {
    /// Client mode: nothing exists at the socket path.
    #[error(
        "the vhost-user socket {path} does not exist: start the back end (e.g. dpdk-testpmd) \
         first, or use mode=server so edgevisor creates the socket"
    )]
    SocketMissing {
        /// The socket path given.
        path: PathBuf,
    },
    /// Client mode: connecting to the socket failed.
    #[error("could not connect to the vhost-user socket {path}: {source}; check that a back end listens there")]
    Connect {
        /// The socket path given.
        path: PathBuf,
        /// What connect(2) said.
        source: std::io::Error,
    },
    /// Server mode: binding or accepting on the socket failed.
    #[error("could not listen for a vhost-user back end on {path}: {source}; check the directory exists and no other process owns the socket")]
    Listen {
        /// The socket path given.
        path: PathBuf,
        /// What bind(2)/accept(2) said.
        source: std::io::Error,
    },
    /// Server mode: no back end connected in time.
    #[error("no vhost-user back end connected to {path} within {seconds} s: start the back end in client mode (e.g. testpmd client=1)")]
    AcceptTimeout {
        /// The socket path given.
        path: PathBuf,
        /// How long we waited.
        seconds: u64,
    },
    /// The back end took the connection but did not answer in time.
    #[error("the vhost-user back end on {path} did not answer within {seconds} s (it took the connection); check that a vhost-user back end listens there and is not stuck")]
    NoReply {
        /// The socket path.
        path: PathBuf,
        /// The limit.
        seconds: u64,
    },
    /// The thread that enforces the answer deadline could not be started.
    #[error("cannot start the vhost-user watchdog thread: {0}")]
    Watchdog(std::io::Error),
    /// A vhost-user request failed or the back end answered it with an error.
    #[error("the vhost-user back end on {path} failed the {request} request: {source}; check the back end's log")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// Which request ("SET_MEM_TABLE", ...).
        request: &'static str,
        /// The vhost crate's error.
        source: vhost::Error,
    },
    /// The back end does not offer a feature the device cannot work without.
    #[error("the vhost-user back end on {path} refused the {feature} feature, which edgevisor requires: use a back end that supports it")]
    FeatureRefused {
        /// The socket path.
        path: PathBuf,
        /// The feature's name.
        feature: &'static str,
    },
    /// A guest memory region has no file behind it, so the back end cannot map it.
    #[error(
        "guest memory at {guest_addr:#x} is not shared with other processes, so the vhost-user \
         back end cannot map it: start the VM with --mem SIZE,shared=on"
    )]
    MemoryNotShared {
        /// Guest physical address of the region.
        guest_addr: u64,
    },
    /// Too many memory regions for one SET_MEM_TABLE message.
    #[error("guest memory has {regions} regions but vhost-user carries at most {max}: use fewer NUMA nodes or memory slots")]
    TooManyRegions {
        /// Region count.
        regions: usize,
        /// The protocol's limit.
        max: usize,
    },
    /// A queue's rings are not inside guest memory.
    #[error("virtqueue {queue}'s ring at guest address {guest_addr:#x} is outside guest memory: the guest driver configured a bad queue")]
    RingOutsideMemory {
        /// Queue index.
        queue: usize,
        /// The offending guest address.
        guest_addr: u64,
    },
    /// The queue count asked for is unusable.
    #[error("queues={queues} is not supported: give between 1 and {max} queue pairs")]
    BadQueueCount {
        /// What was asked.
        queues: u16,
        /// Our maximum.
        max: u16,
    },
    /// More than one queue pair was asked for, but the back end does not speak multiqueue.
    #[error("queues={pairs} needs a multiqueue vhost-user back end, but the one on {path} does not offer the MQ protocol feature: use queues=1 or a back end started with several queues")]
    NoMultiqueue {
        /// The socket path.
        path: PathBuf,
        /// Pairs asked for.
        pairs: u16,
    },
    /// The back end serves fewer queue pairs than asked for (GET_QUEUE_NUM).
    #[error("queues={pairs} is more than the {offered} queue pairs the vhost-user back end on {path} serves: lower queues= or start the back end with more queues")]
    TooFewQueues {
        /// The socket path.
        path: PathBuf,
        /// Pairs asked for.
        pairs: u16,
        /// What GET_QUEUE_NUM answered.
        offered: u64,
    },
    /// Creating an eventfd or timerfd failed.
    #[error("could not create an eventfd for the vhost-user device: {0}; check the process's file descriptor limit")]
    EventFd(std::io::Error),
}
