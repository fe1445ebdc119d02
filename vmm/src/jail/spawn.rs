//! The jailed child: fork, then in the child join the cgroups, enter the network namespace,
//! pivot_root into the jail, set rlimits, close inherited descriptors, drop to the jailed
//! uid/gid and exec the VMM with an empty environment.
//!
//! The child reports a failed step through a close-on-exec pipe: EOF without a message means
//! the exec succeeded. The parent then waits for the child (forwarding SIGTERM, SIGINT, SIGHUP
//! and SIGQUIT to it) and exits with its exit code, or with `--daemonize` returns at once.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use super::rlimit::ResourceLimit;

/// Errors of starting the jailed VMM.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{what} failed: {source}; check that the jailer runs as root")]
    Parent {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the jailed VMM could not start ({0}); fix that and run the jailer again (it removed the jail it made)")]
    Child(String),
    #[error("{0:?} contains a NUL byte; remove it")]
    Nul(String),
}

/// Everything the child needs, prepared before fork.
#[derive(Debug)]
pub struct ChildPlan {
    /// The jail's root directory on the host.
    pub root: PathBuf,
    /// The VMM's path inside the jail (`/edgevisor`).
    pub exec_in_jail: PathBuf,
    /// The VMM's arguments (after `--`).
    pub args: Vec<String>,
    /// `cgroup.procs` files to write the child's pid into.
    pub cgroup_procs: Vec<PathBuf>,
    /// An open network namespace file to enter.
    pub netns: Option<OwnedFd>,
    /// Resource limits.
    pub rlimits: Vec<ResourceLimit>,
    /// The uid and gid to drop to; `None` stays root.
    pub ids: Option<(u32, u32)>,
    /// Detach: new session, stdio on /dev/null, the parent returns once the exec succeeded.
    pub daemonize: bool,
}

/// How the jailed VMM ended, seen by the jailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The VMM exited with this code (128 + N when signal N killed it).
    Exited(i32),
    /// `--daemonize`: the VMM runs as this pid.
    Detached(i32),
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe and takes plain integers.
        unsafe { libc::kill(pid, sig) };
    }
}

const FORWARDED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

fn set_handlers(handler: libc::sighandler_t) {
    for sig in FORWARDED {
        // SAFETY: an all-zero sigaction is valid (empty mask, no flags); `act` lives across
        // the call and `handler` is SIG_DFL or an extern "C" fn that only calls kill.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handler;
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

fn os_err(what: &'static str) -> SpawnError {
    SpawnError::Parent {
        what,
        source: std::io::Error::last_os_error(),
    }
}

fn cstr(s: &[u8]) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::Nul(String::from_utf8_lossy(s).into_owned()))
}

/// Forks the jailed child and waits as the plan says.
pub fn spawn(plan: ChildPlan) -> Result<Outcome, SpawnError> {
    let mut argv = vec![cstr(plan.exec_in_jail.as_os_str().as_bytes())?];
    for a in &plan.args {
        argv.push(cstr(a.as_bytes())?);
    }
    let devnull = if plan.daemonize {
        Some(
            File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|source| SpawnError::Parent {
                    what: "opening /dev/null",
                    source,
                })?,
        )
    } else {
        None
    };
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("pipe2"));
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read_end, write_end) =
        unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    set_handlers(forward as *const () as libc::sighandler_t);
    // SAFETY: getpid has no preconditions.
    let jailer = unsafe { libc::getpid() };
    // SAFETY: the jailer is single-threaded here, so the child may run ordinary code until exec.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        set_handlers(libc::SIG_DFL);
        return Err(os_err("fork"));
    }
    if pid == 0 {
        drop(read_end);
        let err = match child(
            &plan,
            &argv,
            devnull.as_ref(),
            write_end.as_raw_fd(),
            jailer,
        ) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        let mut pipe = File::from(write_end);
        let _ = std::io::Write::write_all(&mut pipe, err.as_bytes());
        // SAFETY: _exit ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(127) };
    }
    CHILD.store(pid, Ordering::SeqCst);
    drop(write_end);
    drop(devnull);
    let mut message = String::new();
    let mut read_end = read_end;
    let _ = read_end.read_to_string(&mut message);
    if !message.is_empty() {
        let _ = wait(pid);
        return Err(SpawnError::Child(message));
    }
    if plan.daemonize {
        return Ok(Outcome::Detached(pid));
    }
    wait(pid).map(Outcome::Exited)
}

/// Waits for `pid`; its exit code, or 128 + the signal that killed it.
fn wait(pid: libc::pid_t) -> Result<i32, SpawnError> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into the integer we pass.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(128 + libc::WTERMSIG(status));
            }
            continue;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(SpawnError::Parent {
                what: "waitpid",
                source: e,
            });
        }
    }
}

fn check(rc: libc::c_int, what: &str) -> Result<(), String> {
    if rc != 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn path_c(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", p.display()))
}

/// The child's steps up to exec; returns only on failure, with a message for the parent.
fn child(
    plan: &ChildPlan,
    argv: &[CString],
    devnull: Option<&File>,
    keep_fd: RawFd,
    jailer: libc::pid_t,
) -> Result<Infallible, String> {
    set_handlers(libc::SIG_DFL);
    if let Some(null) = devnull {
        // SAFETY: setsid takes no arguments; the child is not a process group leader.
        if unsafe { libc::setsid() } < 0 {
            return Err(format!("setsid: {}", std::io::Error::last_os_error()));
        }
        for target in 0..3 {
            // SAFETY: dup2 on a descriptor we own onto the standard descriptors.
            if unsafe { libc::dup2(null.as_raw_fd(), target) } < 0 {
                return Err(format!(
                    "dup2 /dev/null: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    for procs in &plan.cgroup_procs {
        std::fs::write(procs, me.to_string())
            .map_err(|e| format!("joining cgroup {}: {e}", procs.display()))?;
    }
    if let Some(ns) = &plan.netns {
        // SAFETY: setns on an open namespace descriptor we own.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        check(rc, "setns into the network namespace")?;
    }
    enter_jail(&plan.root)?;
    for limit in &plan.rlimits {
        limit.apply().map_err(|e| e.to_string())?;
    }
    close_inherited_fds(keep_fd);
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS and integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(rc, "prctl(PR_SET_NO_NEW_PRIVS)")?;
    if let Some((uid, gid)) = plan.ids {
        // SAFETY: setgroups with an empty list reads no memory.
        let rc = unsafe { libc::setgroups(0, std::ptr::null()) };
        check(rc, "setgroups([])")?;
        // SAFETY: setgid takes a plain integer.
        let rc = unsafe { libc::setgid(gid) };
        check(rc, "setgid")?;
        // SAFETY: setuid takes a plain integer.
        let rc = unsafe { libc::setuid(uid) };
        check(rc, "setuid")?;
    }
    if !plan.daemonize {
        // The VMM does not outlive a jailer that waits for it: whoever kills the jailer (an
        // agent giving up on a stop) kills the VM. Set after the id change, which clears it.
        // SAFETY: prctl with PR_SET_PDEATHSIG and integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        check(rc, "prctl(PR_SET_PDEATHSIG)")?;
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != jailer {
            return Err("the jailer ended before the VMM started".into());
        }
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: argv[0] is the program path; both arrays are NULL-terminated and point at
    // CStrings that live until execve returns (it returns only on failure).
    unsafe { libc::execve(argv_ptrs[0], argv_ptrs.as_ptr(), envp.as_ptr()) };
    Err(format!(
        "exec {} in the jail: {}",
        plan.exec_in_jail.display(),
        std::io::Error::last_os_error()
    ))
}

/// New mount namespace, `/` made a recursive slave (nothing propagates back to the host), the
/// jail root bind-mounted onto itself, pivot_root into it, the old root detached.
fn enter_jail(root: &Path) -> Result<(), String> {
    let root_c = path_c(root)?;
    let slash = c"/";
    let dot = c".";
    // SAFETY: unshare takes a flag word.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    check(rc, "unshare(CLONE_NEWNS)")?;
    // SAFETY: mount with NUL-terminated paths (or NULL where the kernel ignores the argument).
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            slash.as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        )
    };
    check(rc, "making / a recursive slave mount")?;
    // SAFETY: mount with source and target the same NUL-terminated path, NULL fstype and data.
    let rc = unsafe {
        libc::mount(
            root_c.as_ptr(),
            root_c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    check(rc, "bind-mounting the jail root onto itself")?;
    // SAFETY: chdir with a NUL-terminated path.
    let rc = unsafe { libc::chdir(root_c.as_ptr()) };
    check(rc, "chdir into the jail")?;
    // pivot_root(".", "."): the old root ends up stacked on top of the new one, then detached.
    // SAFETY: the raw syscall takes two NUL-terminated paths.
    let rc =
        unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as libc::c_int;
    check(rc, "pivot_root")?;
    // SAFETY: umount2 with a NUL-terminated path and a flag word.
    let rc = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
    check(rc, "detaching the old root")?;
    // SAFETY: chdir with a NUL-terminated path.
    let rc = unsafe { libc::chdir(slash.as_ptr()) };
    check(rc, "chdir /")
}

/// Closes every descriptor above 2 except `keep` (the close-on-exec error pipe).
fn close_inherited_fds(keep: RawFd) {
    let ranges = [(3, keep - 1), (keep + 1, RawFd::MAX)];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: close_range only closes descriptors in the range; none is used afterwards.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) };
        if rc != 0 {
            // Kernels before 5.9: close one by one up to the (just set) open-file limit.
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the struct we pass.
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
            let top = RawFd::try_from(lim.rlim_cur.min(1 << 20)).unwrap_or(1 << 20);
            for fd in first..=last.min(top) {
                // SAFETY: closing a descriptor number; EBADF for unused ones is harmless.
                unsafe { libc::close(fd) };
            }
        }
    }
}
