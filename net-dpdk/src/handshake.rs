//! The vhost-user conversation: connecting, negotiating features, and handing guest memory
//! and vrings to the back end.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::VhostUserNetError;
use devices::virtio::Memory;

/// The back end's VIRTIO_F_VERSION_1 offer.
const VERSION_1: u64 = 1 << 32;
/// vhost-user's own virtio feature bit: the back end speaks protocol features.
pub(crate) const PROTOCOL_FEATURES: u64 = 1 << 30;
/// At most this many regions fit into one SET_MEM_TABLE (DPDK's and QEMU's limit).
pub const MAX_MEM_REGIONS: usize = 8;
/// Protocol features edgevisor asks for (intersected with the back end's).
const WANTED_PROTOCOL: VhostUserProtocolFeatures = VhostUserProtocolFeatures::REPLY_ACK
    .union(VhostUserProtocolFeatures::MQ)
    .union(VhostUserProtocolFeatures::CONFIG);

/// Who connects to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The back end listens on the socket (testpmd's default); edgevisor connects.
    Client,
    /// Edgevisor listens; the back end connects (testpmd's `client=1`).
    Server,
}

/// What one connection negotiated.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Negotiated {
    /// GET_FEATURES.
    pub backend_features: u64,
    /// The protocol features both sides agreed on.
    pub protocol: VhostUserProtocolFeatures,
}

fn protocol_err(
    path: &Path,
    request: &'static str,
) -> impl FnOnce(vhost::Error) -> VhostUserNetError {
    let path = path.to_path_buf();
    move |source| VhostUserNetError::Protocol {
        path,
        request,
        source,
    }
}

/// Client mode, one attempt: connects to a listening back end. No stat of the path first:
/// this also runs on the event loop (reconnects), whose seccomp filter allows connect but
/// not stat; connect's ENOENT says the same.
pub(crate) fn connect_once(path: &Path) -> Result<UnixStream, VhostUserNetError> {
    UnixStream::connect(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            VhostUserNetError::SocketMissing {
                path: path.to_path_buf(),
            }
        } else {
            VhostUserNetError::Connect {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Server mode: creates the listening socket (replacing a stale socket file left behind).
pub(crate) fn listen(path: &Path) -> Result<UnixListener, VhostUserNetError> {
    use std::os::unix::fs::FileTypeExt;
    let err = |source| VhostUserNetError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Server mode: waits up to `wait` for the back end to connect.
pub(crate) fn accept(
    listener: &UnixListener,
    path: &Path,
    wait: Duration,
) -> Result<UnixStream, VhostUserNetError> {
    let deadline = Instant::now() + wait;
    loop {
        match listener.accept() {
            // accept4 without SOCK_NONBLOCK: the connection is blocking even though the
            // listener is not (O_NONBLOCK is not inherited on Linux).
            Ok((stream, _)) => return Ok(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(VhostUserNetError::AcceptTimeout {
                        path: path.to_path_buf(),
                        seconds: wait.as_secs(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(VhostUserNetError::Listen {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// SET_OWNER, GET_FEATURES and the protocol-feature exchange on a fresh connection; with
/// more than one queue pair, GET_QUEUE_NUM must report at least `pairs`.
pub(crate) fn negotiate(
    frontend: &mut Frontend,
    path: &Path,
    pairs: u16,
) -> Result<Negotiated, VhostUserNetError> {
    frontend
        .set_owner()
        .map_err(protocol_err(path, "SET_OWNER"))?;
    let backend_features = frontend
        .get_features()
        .map_err(protocol_err(path, "GET_FEATURES"))?;
    if backend_features & VERSION_1 == 0 {
        return Err(VhostUserNetError::FeatureRefused {
            path: path.to_path_buf(),
            feature: "VIRTIO_F_VERSION_1",
        });
    }
    let mut protocol = VhostUserProtocolFeatures::empty();
    if backend_features & PROTOCOL_FEATURES != 0 {
        let offered = frontend
            .get_protocol_features()
            .map_err(protocol_err(path, "GET_PROTOCOL_FEATURES"))?;
        protocol = offered & WANTED_PROTOCOL;
        frontend
            .set_protocol_features(protocol)
            .map_err(protocol_err(path, "SET_PROTOCOL_FEATURES"))?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every later request waits for the back end's verdict, so a refusal is
            // reported at the request that caused it.
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
    }
    if pairs > 1 {
        if !protocol.contains(VhostUserProtocolFeatures::MQ) {
            return Err(VhostUserNetError::NoMultiqueue {
                path: path.to_path_buf(),
                pairs,
            });
        }
        let offered = frontend
            .get_queue_num()
            .map_err(protocol_err(path, "GET_QUEUE_NUM"))?;
        if offered < u64::from(pairs) {
            return Err(VhostUserNetError::TooFewQueues {
                path: path.to_path_buf(),
                pairs,
                offered,
            });
        }
    }
    Ok(Negotiated {
        backend_features,
        protocol,
    })
}

/// The memory table for SET_MEM_TABLE: every region must be file-backed (memfd/hugetlbfs).
pub(crate) fn memory_table(
    mem: &Memory,
) -> Result<Vec<VhostUserMemoryRegionInfo>, VhostUserNetError> {
    let mut table = Vec::new();
    for region in mem.iter() {
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).map_err(|_| {
            VhostUserNetError::MemoryNotShared {
                guest_addr: region.start_addr().0,
            }
        })?;
        table.push(info);
    }
    if table.len() > MAX_MEM_REGIONS {
        return Err(VhostUserNetError::TooManyRegions {
            regions: table.len(),
            max: MAX_MEM_REGIONS,
        });
    }
    Ok(table)
}

/// The used ring's idx as the guest sees it: where a restarted back end must resume.
pub(crate) fn used_index(mem: &Memory, queue: &Queue) -> Option<u16> {
    mem.read_obj::<u16>(GuestAddress(queue.used_ring()).checked_add(2)?)
        .ok()
}

fn host_address(mem: &Memory, queue: usize, guest: u64) -> Result<u64, VhostUserNetError> {
    mem.get_host_address(GuestAddress(guest))
        .map(|p| p as u64)
        .map_err(|_| VhostUserNetError::RingOutsideMemory {
            queue,
            guest_addr: guest,
        })
}

/// Everything the back end needs to run the queues.
pub(crate) struct StartState<'a> {
    pub mem: &'a Memory,
    pub queues: &'a [Queue],
    /// Features the driver accepted (masked with the back end's offer here).
    pub acked_features: u64,
    pub kicks: &'a [std::sync::Arc<EventFd>],
    pub calls: &'a [EventFd],
    /// Where each vring starts (the queues' next_avail on first start, the used idx read
    /// from guest memory after a reconnect).
    pub bases: &'a [u16],
    /// Rings of pairs below this are enabled, the others handed over disabled.
    pub enabled_pairs: u16,
}

/// SET_FEATURES, SET_MEM_TABLE and per ready queue SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE.
/// Returns the indexes of the rings handed over.
pub(crate) fn start(
    frontend: &mut Frontend,
    negotiated: &Negotiated,
    path: &Path,
    state: &StartState<'_>,
) -> Result<Vec<usize>, VhostUserNetError> {
    let mut started = Vec::new();
    let mut features = state.acked_features & negotiated.backend_features;
    if negotiated.backend_features & PROTOCOL_FEATURES != 0 {
        features |= PROTOCOL_FEATURES;
    }
    frontend
        .set_features(features)
        .map_err(protocol_err(path, "SET_FEATURES"))?;
    let table = memory_table(state.mem)?;
    frontend
        .set_mem_table(&table)
        .map_err(protocol_err(path, "SET_MEM_TABLE"))?;
    for (index, queue) in state.queues.iter().enumerate() {
        if !queue.ready() {
            continue;
        }
        let (Some(kick), Some(call)) = (state.kicks.get(index), state.calls.get(index)) else {
            continue;
        };
        let config = VringConfigData {
            queue_max_size: queue.max_size(),
            queue_size: queue.size(),
            flags: 0,
            desc_table_addr: host_address(state.mem, index, queue.desc_table())?,
            used_ring_addr: host_address(state.mem, index, queue.used_ring())?,
            avail_ring_addr: host_address(state.mem, index, queue.avail_ring())?,
            log_addr: None,
        };
        let base = state.bases.get(index).copied().unwrap_or(0);
        frontend
            .set_vring_num(index, queue.size())
            .map_err(protocol_err(path, "SET_VRING_NUM"))?;
        frontend
            .set_vring_addr(index, &config)
            .map_err(protocol_err(path, "SET_VRING_ADDR"))?;
        frontend
            .set_vring_base(index, base)
            .map_err(protocol_err(path, "SET_VRING_BASE"))?;
        frontend
            .set_vring_call(index, call)
            .map_err(protocol_err(path, "SET_VRING_CALL"))?;
        frontend
            .set_vring_kick(index, kick)
            .map_err(protocol_err(path, "SET_VRING_KICK"))?;
        if features & PROTOCOL_FEATURES != 0 {
            frontend
                .set_vring_enable(index, index / 2 < usize::from(state.enabled_pairs))
                .map_err(protocol_err(path, "SET_VRING_ENABLE"))?;
        }
        started.push(index);
    }
    Ok(started)
}

/// SET_VRING_ENABLE for each running ring: on for the first `pairs` pairs, off for the rest.
pub(crate) fn enable_rings(
    frontend: &mut Frontend,
    path: &Path,
    rings: &[usize],
    pairs: u16,
) -> Result<(), VhostUserNetError> {
    for &index in rings {
        frontend
            .set_vring_enable(index, index / 2 < usize::from(pairs))
            .map_err(protocol_err(path, "SET_VRING_ENABLE"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{FileOffset, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

    #[test]
    fn private_memory_is_refused_and_memfd_memory_is_described() {
        let private = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let Err(err) = memory_table(&private) else {
            panic!("private memory was accepted");
        };
        assert!(
            matches!(err, VhostUserNetError::MemoryNotShared { guest_addr: 0 }),
            "{err}"
        );
        assert!(err.to_string().contains("shared=on"), "{err}");

        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd
        // or -1.
        let fd = unsafe { libc::memfd_create(c"edgevisor-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(2 << 20).unwrap();
        let region = MmapRegion::from_file(FileOffset::new(file, 1 << 20), 1 << 20).unwrap();
        let region = GuestRegionMmap::new(region, GuestAddress(0x10_0000)).unwrap();
        let shared = GuestMemoryMmap::from_regions(vec![region]).unwrap();
        let table = memory_table(&shared).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(table[0].guest_phys_addr, 0x10_0000);
        assert_eq!(table[0].memory_size, 1 << 20);
        assert_eq!(table[0].mmap_offset, 1 << 20);
    }

    #[test]
    fn a_missing_socket_is_named_as_such() {
        let path = std::env::temp_dir().join(format!("edgevisor-none-{}.sock", std::process::id()));
        let err = connect_once(&path).unwrap_err();
        assert!(
            matches!(err, VhostUserNetError::SocketMissing { .. }),
            "{err}"
        );
    }
}
