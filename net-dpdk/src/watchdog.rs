//! A deadline for the back end's answers.
//!
//! The vhost crate retries a read that fails with EAGAIN or EINTR, so neither `SO_RCVTIMEO`
//! nor a signal can end its wait for a back end that accepted the connection and then went
//! silent. A small thread can: while a conversation is armed and runs past its deadline, the
//! thread shuts the socket down (`shutdown(SHUT_RDWR)`), the blocked read sees end-of-file,
//! the request fails, and the caller, seeing [`Armed::fired`], reports that the back end did
//! not answer. The socket is dead afterwards, as it should be: its stream is out of step.
//!
//! The thread is started with the device (on the main thread, before the VMM's filters are
//! installed) and installs its own seccomp filter first: futexes, `shutdown`, clocks and
//! thread exit; anything else fails with EPERM. Where no filter can be installed it warns and
//! runs anyway.

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

/// How long the back end may take over one conversation (the start-up negotiation, handing
/// over the rings, or a reconnect).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the watchdog thread may call.
const ALLOWED_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_futex,
    libc::SYS_shutdown,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_madvise,
    libc::SYS_munmap,
    libc::SYS_exit,
];

#[derive(Default)]
struct State {
    /// The socket and its deadline while a conversation runs.
    armed: Option<(RawFd, Instant)>,
    /// The last armed conversation ran out of time and its socket was shut down.
    fired: bool,
    /// The owner is gone: the thread ends.
    quit: bool,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// The watchdog thread of one device.
pub(crate) struct Watchdog {
    shared: Shared,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the thread.
    pub(crate) fn spawn() -> std::io::Result<Watchdog> {
        let filter = filter().map_err(std::io::Error::other)?;
        let shared: Shared = Arc::default();
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vhost-watchdog".into())
            .spawn(move || {
                // Without its filter (qemu-user, for one, has no seccomp) it still runs: a
                // missing deadline would let a silent back end hang the VMM.
                if let Err(e) = seccompiler::apply_filter(&filter) {
                    eprintln!("edgevisor: vhost-user watchdog: seccomp filter not installed: {e}");
                }
                watch(&theirs);
            })?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// Arms the deadline `limit` from now for a conversation on `fd`; disarmed when the
    /// guard drops, which must happen before `fd` is closed.
    pub(crate) fn arm(&self, fd: RawFd, limit: Duration) -> Armed<'_> {
        let mut state = lock(&self.shared);
        state.armed = Some((fd, Instant::now() + limit));
        state.fired = false;
        self.shared.1.notify_all();
        Armed { dog: self }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        lock(&self.shared).quit = true;
        self.shared.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An armed deadline.
pub(crate) struct Armed<'a> {
    dog: &'a Watchdog,
}

impl Armed<'_> {
    /// Whether the deadline passed and the socket was shut down.
    pub(crate) fn fired(&self) -> bool {
        lock(&self.dog.shared).fired
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        // Under the lock: once this returns, the thread can no longer touch the fd.
        lock(&self.dog.shared).armed = None;
        self.dog.shared.1.notify_all();
    }
}

fn watch(shared: &Shared) {
    let mut state = lock(shared);
    loop {
        if state.quit {
            return;
        }
        state = match state.armed {
            None => shared.1.wait(state).unwrap_or_else(|e| e.into_inner()),
            Some((fd, deadline)) => {
                let now = Instant::now();
                if now >= deadline {
                    // SAFETY: `fd` is the socket of the armed conversation; its owner keeps
                    // it open until the guard is dropped, which takes this lock first, so
                    // the fd cannot have been closed or reused. shutdown touches no memory.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                    state.fired = true;
                    state.armed = None;
                    continue;
                }
                shared
                    .1
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
    }
}

fn filter() -> Result<BpfProgram, String> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = ALLOWED_SYSCALLS
        .iter()
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("{e:?}"))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_silent_peer_is_cut_off_at_the_deadline_and_a_quick_one_is_not() {
        let dog = Watchdog::spawn().unwrap();
        let (mut ours, _silent) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let armed = dog.arm(ours.as_raw_fd(), Duration::from_millis(200));
        // A blocking read of a peer that never writes: only the shutdown ends it.
        let mut byte = [0u8; 1];
        assert_eq!(
            ours.read(&mut byte).unwrap(),
            0,
            "end-of-file after the shutdown"
        );
        let waited = start.elapsed();
        assert!(armed.fired());
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        drop(armed);

        // A conversation that ends in time is left alone, and the guard disarms.
        let (mut ours, mut peer) = UnixStream::pair().unwrap();
        let armed = dog.arm(ours.as_raw_fd(), Duration::from_millis(300));
        std::io::Write::write_all(&mut peer, b"x").unwrap();
        assert_eq!(ours.read(&mut byte).unwrap(), 1);
        assert!(!armed.fired());
        drop(armed);
        std::thread::sleep(Duration::from_millis(500));
        std::io::Write::write_all(&mut peer, b"y").unwrap();
        assert_eq!(ours.read(&mut byte).unwrap(), 1, "the socket still works");
    }
}
