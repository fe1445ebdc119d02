//! Non-blocking Unix stream I/O for the vsock back end: scatter/gather straight between guest
//! memory and a socket, sends that never raise SIGPIPE, and an accept and a connect that never
//! block the event loop.
//!
//! System calls made here, on the event-loop thread: `accept4`, `socket` (AF_UNIX), `connect`,
//! `sendmsg`, `readv`, `read`, `shutdown` (from std), `close`; the muxer adds `epoll_wait`,
//! `epoll_ctl` and eventfd reads and writes.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use vm_memory::VolatileSlice;

const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;

fn retry<T: PartialOrd + Default>(mut call: impl FnMut() -> T) -> io::Result<T> {
    loop {
        let n = call();
        if n >= T::default() {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn sendmsg(fd: RawFd, iovecs: &mut [libc::iovec]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; all zeroes (no name, no control data) is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovecs.as_mut_ptr();
    msg.msg_iovlen = iovecs.len();
    // SAFETY: `msg` points at `iovecs`, each of which the caller made point at readable
    // memory of `iov_len` bytes that stays mapped for the call; sendmsg only reads it.
    let n = retry(|| unsafe { libc::sendmsg(fd, &msg, SEND_FLAGS) })?;
    Ok(n as usize)
}

/// Sends `bufs` in order with one call; returns how many bytes the socket took (EAGAIN is an
/// error of kind `WouldBlock`).
pub fn send_bufs(fd: RawFd, bufs: &[&[u8]]) -> io::Result<usize> {
    let mut iovecs: Vec<libc::iovec> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    if iovecs.is_empty() {
        return Ok(0);
    }
    sendmsg(fd, &mut iovecs)
}

/// Sends guest memory straight to the socket.
pub fn send_slices(fd: RawFd, slices: &[VolatileSlice<'_, ()>]) -> io::Result<usize> {
    let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
    let mut iovecs: Vec<libc::iovec> = guards
        .iter()
        .zip(slices)
        .filter(|(_, s)| !s.is_empty())
        .map(|(g, s)| libc::iovec {
            iov_base: g.as_ptr() as *mut libc::c_void,
            iov_len: s.len(),
        })
        .collect();
    if iovecs.is_empty() {
        return Ok(0);
    }
    sendmsg(fd, &mut iovecs)
}

/// Receives at most `limit` bytes straight into guest memory; 0 means end of stream.
pub fn recv_slices(fd: RawFd, slices: &[VolatileSlice<'_, ()>], limit: usize) -> io::Result<usize> {
    let mut left = limit;
    let mut bounded = Vec::with_capacity(slices.len());
    for s in slices {
        if left == 0 {
            break;
        }
        let n = s.len().min(left);
        let sub = s
            .subslice(0, n)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        bounded.push(sub);
        left -= n;
    }
    let guards: Vec<_> = bounded.iter().map(|s| s.ptr_guard_mut()).collect();
    let iovecs: Vec<libc::iovec> = guards
        .iter()
        .zip(&bounded)
        .map(|(g, s)| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: s.len(),
        })
        .collect();
    if iovecs.is_empty() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: every iovec points at writable guest memory of `iov_len` bytes inside one
    // region, kept mapped by its guard for the call; readv writes at most that much.
    let n = retry(|| unsafe { libc::readv(fd, iovecs.as_ptr(), iovecs.len() as libc::c_int) })?;
    Ok(n as usize)
}

/// Receives one byte: `Ok(None)` at end of stream.
pub fn recv_byte(fd: RawFd) -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    // SAFETY: read writes at most one byte into our one-byte buffer.
    let n = retry(|| unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) })?;
    Ok((n == 1).then_some(b[0]))
}

/// Accepts a connection on a non-blocking listener; the stream is non-blocking and
/// close-on-exec from the start (no extra fcntl or ioctl).
pub fn accept_nonblocking(listener: RawFd) -> io::Result<UnixStream> {
    // SAFETY: accept4 with null address pointers writes no address; the result is checked.
    let fd = retry(|| unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: a descriptor accept4 just created and nobody else owns.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Connects to the Unix stream socket at `path` without ever blocking: a listener whose
/// backlog is full fails with `WouldBlock` instead of stalling the event loop. The stream is
/// non-blocking.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain data; all zeroes is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    retry(|| unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    })?;
    Ok(UnixStream::from(owned))
}
