//! The guests' `edgevisor` processes: spawning them detached from the agent, and telling
//! from /proc whether a recorded one still lives.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::store::GuestDir;

/// Why a VM process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The console log could not be opened.
    #[error("cannot open the console log {path}: {source}")]
    Console {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A path contains a NUL byte.
    #[error("path {0} contains a NUL byte: use another state directory")]
    NulInPath(PathBuf),
    /// fork/exec failed.
    #[error("cannot run {binary}: {source}; check the agent's --edgevisor path")]
    Exec {
        /// The edgevisor binary.
        binary: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What /proc says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// State letter (R, S, D, Z, ...).
    pub state: char,
    /// Field 22: start time in clock ticks after boot.
    pub start_time: u64,
    /// Fields 14 and 15: user and system time in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads /proc/PID/stat; `None` when the process does not exist.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the
    // last ')'. Field 3 is then index 0.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        start_time: field(22)?,
        cpu_ticks: field(14)? + field(15)?,
    })
}

/// Whether `pid` is alive (not a zombie) and started at `start_time`.
pub fn alive(pid: u32, start_time: u64) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z' && s.start_time == start_time)
}

/// Whether `pid`'s command line has the argument `needle` (our guest's socket path, or its
/// jailer's `--id=`): tells a VM of ours from a process that reused its pid, when no start
/// time was recorded.
pub fn cmdline_mentions(pid: u32, needle: &OsStr) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = needle.as_bytes();
    raw.split(|b| *b == 0).any(|arg| arg == needle)
}

/// Whether `pid` is, or becomes, a process whose command line names `needle`. A child caught
/// between fork and exec still runs the agent's own executable and shows the agent's command
/// line; it is waited for (up to 10 s, which only a very loaded host needs), so that a VM
/// whose exec was merely slow is not taken for dead and leaked.
pub fn execs_with(pid: u32, needle: &OsStr) -> bool {
    let own = std::fs::read_link("/proc/self/exe").ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if cmdline_mentions(pid, needle) {
            return true;
        }
        if proc_stat(pid).is_none_or(|s| s.state == 'Z') {
            return false;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let before_exec = exe.is_some() && exe == own;
        if !before_exec || std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Resident memory of `pid` in bytes (VmRSS), if readable.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Clock ticks per second, for CPU times from /proc.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Sends SIGKILL to `pid` if it is still the process that started at `start_time`.
pub fn kill_if_same(pid: u32, start_time: u64) {
    if alive(pid, start_time) {
        // SAFETY: kill(2) with a pid we checked is our VM a moment ago; at worst it fails.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Formats `value` in decimal into `buf`, returning the digits' length (no allocation: this
/// runs between fork and exec).
fn format_decimal(mut value: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

fn cstring(path: &Path) -> Result<CString, SpawnError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SpawnError::NulInPath(path.into()))
}

/// The arguments of `edgevisor` for the guest in `dir`, run directly.
pub fn direct_args(dir: &GuestDir) -> Vec<OsString> {
    vec![
        "run".into(),
        "--config".into(),
        dir.config().into(),
        "--api-socket".into(),
        dir.socket().into(),
        "--report".into(),
        dir.report().into(),
    ]
}

/// Starts `binary args` for the guest in `dir` (`edgevisor run --config ... --api-socket ...
/// --report ...`, or the jailer that runs it), in its own session (so it outlives the agent
/// and no terminal signal reaches it), with stdout and stderr appended to its console log.
/// The child writes "PID GENERATION" to the pid file itself before exec, so a VM that exists
/// is always on record.
pub fn spawn_vm(
    binary: &Path,
    args: &[OsString],
    dir: &GuestDir,
    generation: u64,
) -> Result<Child, SpawnError> {
    let console_path = dir.console();
    let console_err = |source| SpawnError::Console {
        path: console_path.clone(),
        source,
    };
    let console = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&console_path)
        .map_err(console_err)?;
    let console2 = console.try_clone().map_err(console_err)?;
    let pid_path = cstring(&dir.pid_file())?;
    let generation_text = format!(" {generation}\n").into_bytes();
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console2);
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe calls (setsid, getpid, open, write, close) on memory prepared before
    // the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::open(
                pid_path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                0o644,
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut digits = [0u8; 20];
            let pid = format_decimal(libc::getpid() as u64, &mut digits);
            let ok = libc::write(fd, pid.as_ptr().cast(), pid.len()) == pid.len() as isize
                && libc::write(fd, generation_text.as_ptr().cast(), generation_text.len())
                    == generation_text.len() as isize;
            libc::close(fd);
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::other("cannot write the pid file"))
            }
        });
    }
    cmd.spawn().map_err(|source| SpawnError::Exec {
        binary: binary.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let line =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 2 0 987654 1000 20 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.start_time, 987654);
        assert_eq!(s.cpu_ticks, 10);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn this_process_is_alive_with_its_own_start_time_only() {
        let me = std::process::id();
        let stat = proc_stat(me).unwrap();
        assert!(alive(me, stat.start_time));
        assert!(!alive(me, stat.start_time + 1));
        assert!(resident_bytes(me).unwrap() > 0);
    }

    #[test]
    fn a_child_slow_to_exec_is_waited_for_and_a_stranger_is_not() {
        use std::os::unix::process::CommandExt;
        let marker = format!("edgevisor-execs-with-{}", std::process::id());
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "sleep 30", &marker]);
        // SAFETY: the closure runs in the forked child before exec and only sleeps
        // (nanosleep is async-signal-safe); it allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(|| {
                std::thread::sleep(std::time::Duration::from_millis(700));
                Ok(())
            })
        };
        let mut child = cmd.spawn().unwrap();
        // Caught between fork and exec: the child still runs this test binary.
        let waited = execs_with(child.id(), OsStr::new(&marker));
        let other = execs_with(child.id(), OsStr::new("some-other-guest"));
        let _ = child.kill();
        let _ = child.wait();
        assert!(waited, "a child 700 ms from its exec was not recognised");
        // Once it has exec'd into another program, a wrong marker is refused at once.
        assert!(!other);
        // A process that is not ours, and never will be, is refused at once.
        let started = std::time::Instant::now();
        assert!(!execs_with(1, OsStr::new(&marker)));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn decimals_format_without_allocation() {
        let mut buf = [0u8; 20];
        assert_eq!(format_decimal(0, &mut buf), b"0");
        assert_eq!(format_decimal(4_194_304, &mut buf), b"4194304");
        assert_eq!(format_decimal(u64::MAX, &mut buf), b"18446744073709551615");
    }
}
