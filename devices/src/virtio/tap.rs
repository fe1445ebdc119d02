//! TAP devices: the host end of a virtio-net card.
//!
//! [`Tap::open`] attaches to (or creates) a TAP interface through `/dev/net/tun` with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte virtio-net header
//! (`virtio_net_hdr_v1`), so every frame read carries the header the guest expects and
//! every frame written starts with one. The descriptor is non-blocking, for the event loop.
//! No offloads are enabled (`TUNSETOFFLOAD 0`): the kernel hands us complete, checksummed
//! frames and never a GSO super-frame.
//!
//! A TAP that did not exist is created non-persistent and brought up; it disappears when
//! the [`Tap`] is dropped (the tool "removes what it created"). An existing TAP is used as
//! the administrator configured it and outlives us.
//!
//! The read and write helpers do `readv`/`writev` straight between the TAP and guest memory
//! ([`VolatileSlice`]s of a validated descriptor chain), without a bounce buffer.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::VolatileSlice;

/// Length of the virtio-net header the TAP reads and writes before each frame
/// (`virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers).
pub const VNET_HDR_LEN: usize = 12;

/// Longest interface name Linux accepts (IFNAMSIZ - 1 for the terminating NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

const TUN_PATH: &str = "/dev/net/tun";

/// Why a TAP could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name does not fit in IFNAMSIZ.
    #[error(
        "TAP name {name:?} is {len} bytes long, but Linux interface names have at most 15 \
         bytes: choose a shorter name"
    )]
    NameTooLong {
        /// The name given.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The name is empty or has characters an interface name cannot have.
    #[error(
        "TAP name {name:?} is not a valid interface name: use 1 to 15 characters without \
         '/', ':', whitespace or NUL, other than \".\" and \"..\""
    )]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// The TAP does not exist and we were not asked to create it.
    #[error(
        "TAP {name:?} does not exist: create it first (ip tuntap add dev {name} mode tap) or \
         let edgevisor create it"
    )]
    Missing {
        /// The name given.
        name: String,
    },
    /// The tun driver's device node is missing.
    #[error(
        "/dev/net/tun does not exist, so TAP {name:?} cannot be opened: load the tun kernel \
         module (modprobe tun)"
    )]
    NoTunDevice {
        /// The name given.
        name: String,
    },
    /// Not allowed to open /dev/net/tun, create the TAP or attach to it.
    #[error(
        "permission denied opening TAP {name:?}: run with CAP_NET_ADMIN (e.g. as root) or \
         use a TAP whose owner is this user ({source})"
    )]
    PermissionDenied {
        /// The name given.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// An interface of that name exists but is not a TAP.
    #[error(
        "interface {name:?} exists but is not a TAP device: pick another name or remove \
         that interface"
    )]
    NotATap {
        /// The name given.
        name: String,
    },
    /// Another process already has the (single-queue) TAP open.
    #[error("TAP {name:?} is already in use by another process: give each VM its own TAP")]
    Busy {
        /// The name given.
        name: String,
    },
    /// Any other step failed.
    #[error("could not set up TAP {name:?} ({step}): {source}")]
    Setup {
        /// The name given.
        name: String,
        /// What we were doing.
        step: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// What one read from the TAP produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapRead {
    /// A whole frame of this many bytes, header included.
    Frame(usize),
    /// A frame longer than the buffers offered; it was dropped.
    TooLong,
}

/// An open TAP interface (see the module documentation).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
    if_index: u32,
}

/// An `ifreq` naming `name` (which must already be validated to fit).
fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is a plain C struct (a name array and a union of integers, sockaddrs
    // and a pointer) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    req
}

/// A datagram socket for interface ioctls (SIOCGIFINDEX, SIOCSIFFLAGS), in the calling
/// thread's network namespace.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we just opened and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface index of `name`, or `None` when no interface has that name.
fn interface_index(socket: &OwnedFd, name: &str) -> io::Result<Option<u32>> {
    let mut req = ifreq_for(name);
    // SAFETY: SIOCGIFINDEX reads the name from and writes the index into `req`, which is a
    // valid, exclusively borrowed ifreq for the duration of the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENODEV) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: the kernel filled the ifindex member of the union on success.
    let index = unsafe { req.ifr_ifru.ifru_ifindex };
    Ok(Some(index as u32))
}

/// Sets IFF_UP on `name`.
fn bring_up(socket: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = ifreq_for(name);
    // SAFETY: SIOCGIFFLAGS writes the flags into `req`, a valid exclusively borrowed ifreq.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the flags member of the union on success.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS only reads `req`, a valid ifreq naming the interface.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), TapError> {
    if name.len() > MAX_NAME_LEN {
        return Err(TapError::NameTooLong {
            name: name.to_string(),
            len: name.len(),
        });
    }
    let bad_char = |c: char| c == '/' || c == ':' || c == '\0' || c.is_whitespace();
    if name.is_empty() || name == "." || name == ".." || name.contains(bad_char) {
        return Err(TapError::InvalidName {
            name: name.to_string(),
        });
    }
    Ok(())
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

impl Tap {
    /// Opens the TAP called `name`, creating it (non-persistent, up) when it does not exist
    /// and `create_if_missing` is set. The interface is looked up in the calling thread's
    /// network namespace.
    pub fn open(name: &str, create_if_missing: bool) -> Result<Tap, TapError> {
        validate_name(name)?;
        let setup = |step: &'static str| {
            move |source: io::Error| TapError::Setup {
                name: name.to_string(),
                step,
                source,
            }
        };
        let socket = control_socket().map_err(setup("opening a control socket"))?;
        let existed = interface_index(&socket, name)
            .map_err(setup("looking the interface up"))?
            .is_some();
        if !existed && !create_if_missing {
            return Err(TapError::Missing {
                name: name.to_string(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TapError::NoTunDevice {
                    name: name.to_string(),
                },
                _ if is_permission(&e) => TapError::PermissionDenied {
                    name: name.to_string(),
                    source: e,
                },
                _ => setup("opening /dev/net/tun")(e),
            })?;

        let mut req = ifreq_for(name);
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads (and may update the name in) `req`, a valid exclusively
        // borrowed ifreq, on a descriptor of /dev/net/tun we own.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::PermissionDenied {
                    name: name.to_string(),
                    source: e,
                },
                Some(libc::EINVAL) if existed => TapError::NotATap {
                    name: name.to_string(),
                },
                Some(libc::EBUSY) => TapError::Busy {
                    name: name.to_string(),
                },
                _ => setup("TUNSETIFF")(e),
            });
        }
        // From here on, a TAP we created vanishes again when `file` is closed on an error.
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points to a live
        // local.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(setup("TUNSETVNETHDRSZ")(io::Error::last_os_error()));
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value (no pointer): no offloads.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
            return Err(setup("TUNSETOFFLOAD")(io::Error::last_os_error()));
        }
        if !existed {
            bring_up(&socket, name).map_err(setup("bringing the interface up"))?;
        }
        let if_index = interface_index(&socket, name)
            .map_err(setup("reading the interface index"))?
            .ok_or_else(|| setup("reading the interface index")(io::ErrorKind::NotFound.into()))?;
        Ok(Tap {
            file,
            name: name.to_string(),
            created: !existed,
            if_index,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether [`Tap::open`] created the interface (it then disappears on drop).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The interface index (for AF_PACKET sockets and netlink).
    pub fn if_index(&self) -> u32 {
        self.if_index
    }

    /// Reads one frame (header first) into `slices` of guest memory with one `readv`.
    /// `ErrorKind::WouldBlock` means no frame is waiting. The kernel silently truncates a
    /// frame longer than the buffers, so one extra byte of our own ends the vector: a frame
    /// that reaches it did not fit, and is reported as [`TapRead::TooLong`] (it is gone from
    /// the TAP either way).
    pub fn read_volatile(&self, slices: &[VolatileSlice<'_, ()>]) -> io::Result<TapRead> {
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
        let mut overflow = [0u8; 1];
        let mut iovecs: Vec<libc::iovec> = guards
            .iter()
            .zip(slices)
            .map(|(g, s)| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        iovecs.push(libc::iovec {
            iov_base: overflow.as_mut_ptr().cast(),
            iov_len: overflow.len(),
        });
        let capacity: usize = slices.iter().map(|s| s.len()).sum();
        loop {
            // SAFETY: every iovec points to writable memory of `iov_len` bytes: each guest
            // slice lies inside one region whose guard keeps the mapping for the call, and
            // the last one is our local `overflow`; readv writes at most that much into each.
            let n = unsafe {
                libc::readv(
                    self.file.as_raw_fd(),
                    iovecs.as_ptr(),
                    iovecs.len() as libc::c_int,
                )
            };
            if n >= 0 {
                let n = n as usize;
                return Ok(if n > capacity {
                    TapRead::TooLong
                } else {
                    TapRead::Frame(n)
                });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Writes one frame: `header` (the virtio-net header) then `slices` of guest memory,
    /// with one `writev`.
    pub fn write_volatile(
        &self,
        header: &[u8],
        slices: &[VolatileSlice<'_, ()>],
    ) -> io::Result<usize> {
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
        let mut iovecs = Vec::with_capacity(slices.len() + 1);
        iovecs.push(libc::iovec {
            iov_base: header.as_ptr() as *mut libc::c_void,
            iov_len: header.len(),
        });
        iovecs.extend(guards.iter().zip(slices).map(|(g, s)| libc::iovec {
            iov_base: g.as_ptr() as *mut libc::c_void,
            iov_len: s.len(),
        }));
        loop {
            // SAFETY: every iovec points to `iov_len` readable bytes: `header` is borrowed
            // for the call and each slice lies inside one guest-memory region whose guard
            // keeps the mapping; writev only reads through them.
            let n = unsafe {
                libc::writev(
                    self.file.as_raw_fd(),
                    iovecs.as_ptr(),
                    iovecs.len() as libc::c_int,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Reads one frame (header first) into `buf`.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &self.file, buf)
    }

    /// Writes one frame (header first) from `buf`.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut &self.file, buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_syscall() {
        let long = "a".repeat(16);
        match Tap::open(&long, true) {
            Err(TapError::NameTooLong { len, .. }) => assert_eq!(len, 16),
            other => panic!("expected NameTooLong, got {other:?}"),
        }
        for bad in ["", "a/b", "a b", "a:b", "a\0b", ".", ".."] {
            assert!(
                matches!(Tap::open(bad, true), Err(TapError::InvalidName { .. })),
                "{bad:?} was accepted"
            );
        }
        assert!(validate_name(&"a".repeat(15)).is_ok());
        assert!(validate_name("tap0").is_ok());
    }

    #[test]
    fn error_sentences_name_the_input() {
        let e = TapError::NotATap { name: "lo".into() };
        assert!(e.to_string().contains("\"lo\""));
        let e = TapError::Missing {
            name: "tap7".into(),
        };
        assert!(e.to_string().contains("ip tuntap add dev tap7 mode tap"));
    }
}
