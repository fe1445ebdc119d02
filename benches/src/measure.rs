//! One measured run of a child process: time to its first byte on stdout, time to
//! its exit, and its peak resident set size.
//!
//! The clock starts just before `spawn`. A reader thread stamps the first byte of
//! stdout. The exit is stamped by `waitid(WNOWAIT)`, which leaves the child a zombie
//! until a watchdog thread that kills it after the time limit has been stopped, so the
//! watchdog can never signal a recycled pid; `wait4` then reaps it and yields
//! `ru_maxrss`.
//!
//! The child is started with fork + exec, not `posix_spawn`: exec records the
//! high-water mark of the address space it replaces in the child's `ru_maxrss`, and
//! with `posix_spawn` (vfork) that address space is the bench's own, so every child
//! would show at least the bench's peak RSS. A forked copy starts its high-water mark
//! afresh but holds the bench's anonymous pages, so a child never shows less than the
//! bench's anonymous RSS at fork time: see [`own_anon_rss_kib`].

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::error::BenchError;

/// What one run of a child did and cost.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// From spawn to the first byte on the child's stdout; `None` if it wrote nothing.
    pub first_output: Option<Duration>,
    /// From spawn to the child's exit.
    pub exit: Duration,
    /// Peak resident set size of the child, KiB (`ru_maxrss`).
    pub peak_rss_kib: u64,
    /// How the child ended.
    pub status: ExitStatus,
    /// Whether the bench killed it for running past the time limit.
    pub timed_out: bool,
    /// Everything it wrote on stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote on stderr.
    pub stderr: Vec<u8>,
}

/// What a reader thread saw on one pipe.
struct Captured {
    first_byte: Option<Instant>,
    bytes: Vec<u8>,
}

/// Runs `argv` with stdin closed and stdout/stderr captured, killing it after `timeout`.
pub fn measure(argv: &[OsString], timeout: Duration) -> Result<RunOutcome, BenchError> {
    let (program, args) = argv.split_first().ok_or_else(|| BenchError::Spawn {
        program: String::new(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "empty command line"),
    })?;
    let name = program.to_string_lossy().into_owned();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the hook runs in the forked child before exec and does nothing, so it is
    // async-signal-safe; it is there only to make std fork instead of posix_spawn.
    unsafe {
        command.pre_exec(|| Ok(()));
    }

    let start = Instant::now();
    let mut child = command.spawn().map_err(|source| BenchError::Spawn {
        program: name.clone(),
        source,
    })?;
    let stdout = child.stdout.take().map(spawn_reader);
    let stderr = child.stderr.take().map(spawn_reader);
    let pid = match libc::pid_t::try_from(child.id()) {
        Ok(pid) => pid,
        Err(_) => {
            // Cannot happen on Linux (pid_max <= 2^22); std can still kill and reap it.
            let _ = child.kill();
            let _ = child.wait();
            return Err(BenchError::Thread { program: name });
        }
    };

    let (stop, stopped) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || match stopped.recv_timeout(timeout) {
        Err(RecvTimeoutError::Timeout) => {
            // SAFETY: `pid` is our child and is not reaped before this thread is joined,
            // so the pid cannot name another process; kill has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            true
        }
        Ok(()) | Err(RecvTimeoutError::Disconnected) => false,
    });

    let exited = wait_for_exit(pid);
    let exited_at = Instant::now();
    // The receiver lives until the watchdog returns; a send error means it already has.
    let _ = stop.send(());
    let timed_out = watchdog.join();
    if exited.is_err() {
        // Make sure nothing is left running or unreaped before reporting.
        // SAFETY: as above, `pid` is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let reaped = reap(pid);
    let stdout = join_reader(stdout);
    let stderr = join_reader(stderr);

    let wait_error = |source| BenchError::Wait {
        program: name.clone(),
        pid,
        source,
    };
    exited.map_err(wait_error)?;
    let (status, usage) = reaped.map_err(wait_error)?;
    let thread_error = || BenchError::Thread {
        program: name.clone(),
    };
    let timed_out = timed_out.map_err(|_| thread_error())?;
    let stdout = stdout.ok_or_else(thread_error)?;
    let stderr = stderr.ok_or_else(thread_error)?;

    Ok(RunOutcome {
        first_output: stdout
            .first_byte
            .map(|at| at.saturating_duration_since(start)),
        exit: exited_at.saturating_duration_since(start),
        peak_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        status,
        timed_out,
        stdout: stdout.bytes,
        stderr: stderr.bytes,
    })
}

/// The bench process's anonymous resident memory, KiB (`RssAnon` in
/// /proc/self/status): the floor under the `ru_maxrss` of a child it forks now.
/// `None` when /proc cannot tell.
pub fn own_anon_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_rss_anon_kib(&status)
}

fn parse_rss_anon_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let value = line.trim_start_matches("RssAnon:").trim();
    value.strip_suffix("kB")?.trim().parse().ok()
}

fn spawn_reader<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<Captured> {
    thread::spawn(move || {
        let mut captured = Captured {
            first_byte: None,
            bytes: Vec::new(),
        };
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if captured.first_byte.is_none() {
                        captured.first_byte = Some(Instant::now());
                    }
                    captured.bytes.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        captured
    })
}

fn join_reader(reader: Option<JoinHandle<Captured>>) -> Option<Captured> {
    match reader {
        Some(handle) => handle.join().ok(),
        None => Some(Captured {
            first_byte: None,
            bytes: Vec::new(),
        }),
    }
}

/// Blocks until `pid` has exited, leaving it unreaped.
fn wait_for_exit(pid: libc::pid_t) -> io::Result<()> {
    let id = libc::id_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        // SAFETY: `siginfo_t` is plain old data, valid when all zero.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes one `siginfo_t` into the valid, exclusive pointer it gets;
        // WNOWAIT leaves the child waitable.
        let rc = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Reaps `pid`, returning how it ended and what it used.
fn reap(pid: libc::pid_t) -> io::Result<(ExitStatus, libc::rusage)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `rusage` is plain old data, valid when all zero.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 writes an int and one `rusage` into the valid, exclusive
        // pointers it gets.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            return Ok((ExitStatus::from_raw(status), usage));
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by tests that hold much memory or judge a child's RSS, so that no child is
    /// forked while another test holds a large allocation.
    static RSS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn sh(script: &str) -> Vec<OsString> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn captures_output_exit_code_and_order_of_events() {
        let outcome = measure(
            &sh("sleep 0.05; printf 'PROBE PASS\\n'; sleep 0.1; echo oops >&2; exit 3"),
            Duration::from_secs(10),
        )
        .expect("sh runs");
        assert_eq!(outcome.status.code(), Some(3));
        assert!(!outcome.timed_out);
        assert_eq!(outcome.stdout, b"PROBE PASS\n");
        assert_eq!(outcome.stderr, b"oops\n");
        let first = outcome.first_output.expect("wrote on stdout");
        assert!(
            first >= Duration::from_millis(50),
            "first byte at {first:?}"
        );
        assert!(
            outcome.exit >= first + Duration::from_millis(100),
            "exit at {:?}, first byte at {first:?}",
            outcome.exit
        );
        assert!(outcome.peak_rss_kib > 0);
    }

    #[test]
    fn silent_child_has_no_first_output() {
        let outcome = measure(&sh("exit 0"), Duration::from_secs(10)).expect("sh runs");
        assert_eq!(outcome.first_output, None);
        assert_eq!(outcome.status.code(), Some(0));
    }

    #[test]
    fn peak_rss_sees_a_child_that_grows() {
        let _lock = RSS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // Keep ~64 MiB of a string resident in the shell for a moment.
        let big = measure(
            &sh("x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo ${#x}"),
            Duration::from_secs(30),
        )
        .expect("sh runs");
        let small = measure(&sh("echo 1"), Duration::from_secs(10)).expect("sh runs");
        assert_eq!(big.stdout, b"67108864\n");
        assert!(
            big.peak_rss_kib > small.peak_rss_kib + 32 * 1024,
            "big {} KiB, small {} KiB",
            big.peak_rss_kib,
            small.peak_rss_kib
        );
    }

    #[test]
    fn child_past_the_time_limit_is_killed() {
        let started = Instant::now();
        let outcome = measure(&sh("exec sleep 30"), Duration::from_millis(200)).expect("sh runs");
        assert!(outcome.timed_out);
        assert_eq!(outcome.status.signal(), Some(libc::SIGKILL));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn missing_program_is_a_spawn_error_naming_it() {
        let err = measure(
            &["/nonexistent/edgevisor-bench-test".into()],
            Duration::from_secs(1),
        )
        .expect_err("cannot start");
        assert!(matches!(err, BenchError::Spawn { .. }), "{err:?}");
        assert!(err
            .to_string()
            .contains("/nonexistent/edgevisor-bench-test"));
    }

    #[test]
    fn own_anon_rss_is_read_from_proc() {
        assert!(own_anon_rss_kib().is_some_and(|kib| kib > 0));
        let status = "Name:\tx\nRssAnon:\t    1234 kB\nRssFile:\t 99 kB\n";
        assert_eq!(parse_rss_anon_kib(status), Some(1234));
        assert_eq!(parse_rss_anon_kib("Name:\tx\n"), None);
    }

    #[test]
    fn child_rss_does_not_inherit_the_bench_peak() {
        // Raise this process's high-water mark far above a shell's size, then free it:
        // a vfork-based spawn would report at least this peak for the child.
        let _lock = RSS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let big = vec![1u8; 128 << 20];
        std::hint::black_box(&big);
        drop(big);
        let outcome = measure(&sh("exit 0"), Duration::from_secs(10)).expect("sh runs");
        assert!(
            outcome.peak_rss_kib < 64 * 1024,
            "child shows {} KiB",
            outcome.peak_rss_kib
        );
    }
}
