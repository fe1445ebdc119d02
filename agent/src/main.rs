//! `edgevisor-agent`: the node daemon. Serves the guest API on TCP (bearer token) and on a
//! Unix socket, supervises one `edgevisor run` process per guest, and re-adopts them after
//! a restart. See `agent::server` for the API.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use agent::jail::JailOptions;
use agent::push::{PushConfig, Pusher};
use agent::server::{self, Agent};
use agent::store::Store;
use agent::supervisor::{Launcher, Supervisor};
use clap::Parser;

/// How long a new agent waits for what a killed predecessor still holds.
const HANDOVER: Duration = Duration::from_secs(2);

#[derive(Parser)]
#[command(
    name = "edgevisor-agent",
    version,
    about = "edgevisor's node agent: guest lifecycle, capabilities and metrics over HTTP"
)]
struct Cli {
    /// Directory for the agent's state (one runtime directory per guest).
    #[arg(long)]
    state_dir: PathBuf,
    /// TCP address to serve the API on (bearer token required), e.g. 127.0.0.1:8470.
    #[arg(long)]
    listen: Option<String>,
    /// Unix socket path to serve the API on (no token; the socket is mode 0600).
    #[arg(long)]
    unix: Option<PathBuf>,
    /// File holding the bearer token TCP clients must send (required with --listen).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The edgevisor binary to run guests with (default: next to this binary, else PATH).
    #[arg(long)]
    edgevisor: Option<PathBuf>,
    /// Write the node's capabilities as node-feature-discovery feature lines into this
    /// features.d directory, at start and every minute.
    #[arg(long)]
    nfd_dir: Option<PathBuf>,
    /// Push metrics to this Prometheus remote-write URL (http://host[:port]/path).
    #[arg(long)]
    push_url: Option<String>,
    /// File holding a bearer token for the remote-write receiver.
    #[arg(long, requires = "push_url")]
    push_token_file: Option<PathBuf>,
    /// Directory buffering unsent pushes (default STATE/push-buffer).
    #[arg(long, requires = "push_url")]
    push_buffer: Option<PathBuf>,
    /// Most bytes kept in the push buffer; the oldest pushes are dropped beyond it.
    #[arg(long, default_value_t = 64 << 20, requires = "push_url")]
    push_buffer_bytes: u64,
    /// Seconds between pushes.
    #[arg(long, default_value_t = 15, requires = "push_url")]
    push_interval: u64,
    /// The `node` label of pushed series (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Start every guest through this edgevisor-jailer: own mount namespace and root,
    /// cgroups, rlimits, dropped ids, empty environment (needs --jail-uid and --jail-gid).
    #[arg(long, requires_all = ["jail_uid", "jail_gid"])]
    jailer: Option<PathBuf>,
    /// The uid jailed VMMs run as (e.g. 65534); kernels, initrds and disks must be readable
    /// by it, writable disks writable.
    #[arg(long, requires = "jailer")]
    jail_uid: Option<u32>,
    /// The gid jailed VMMs run as.
    #[arg(long, requires = "jailer")]
    jail_gid: Option<u32>,
    /// Where jails are made (`DIR/edgevisor/ID/root`); writable disks must be on its
    /// filesystem.
    #[arg(long, requires = "jailer", default_value = vmm::jail::DEFAULT_CHROOT_BASE)]
    jail_base: PathBuf,
    /// A cgroup limit KEY=VALUE for every jailed guest (repeatable), as the jailer's --cgroup:
    /// cpu.max, cpu.weight, memory.max, pids.max, cpuset.cpus, cpuset.mems.
    #[arg(long = "jail-cgroup", value_name = "KEY=VALUE", requires = "jailer")]
    jail_cgroups: Vec<String>,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("give --listen ADDR, --unix PATH or both: the agent has nothing to serve on")]
    NoListener,
    #[error("--listen needs --token-file: TCP clients must authenticate with a bearer token")]
    NoToken,
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {0} is empty: put a secret of at least 16 characters in it")]
    EmptyToken(PathBuf),
    #[error(
        "another edgevisor-agent uses the state directory {0}: stop it or use another --state-dir"
    )]
    Locked(PathBuf),
    #[error("cannot {what} {target}: {source}")]
    Io {
        what: &'static str,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the Unix socket {0} is served by a running process: stop it or choose another --unix path"
    )]
    UnixInUse(PathBuf),
    #[error("{0} exists and is not a socket: remove it or choose another --unix path")]
    NotASocket(PathBuf),
    #[error("--jailer {path} {why}")]
    Jailer { path: PathBuf, why: &'static str },
    #[error("--jail-{flag} 4294967295 is the kernel's \"no change\" value; give a real id")]
    JailId { flag: &'static str },
    #[error("--jail-base {0} is not an absolute path; give one")]
    JailBase(PathBuf),
    #[error("--state-dir {0} is under /run or /dev, which the jail uses itself: jailed guests read their config from the state directory at the same path, so use another one (e.g. /var/lib/edgevisor)")]
    JailedStateDir(PathBuf),
    #[error("--jail-cgroup: {0}")]
    JailCgroup(String),
    #[error(transparent)]
    Store(#[from] agent::store::StoreError),
    #[error(transparent)]
    Agent(#[from] agent::supervisor::AgentError),
    #[error(transparent)]
    Push(#[from] agent::push::PushError),
}

fn io_err(
    what: &'static str,
    target: impl std::fmt::Display,
) -> impl FnOnce(std::io::Error) -> SetupError {
    let target = target.to_string();
    move |source| SetupError::Io {
        what,
        target,
        source,
    }
}

/// Takes the state directory's lock for the life of the process.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, SetupError> {
    let path = dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open", path.display()))?;
    // A previous agent killed while forking a VM leaves the lock (and its listening
    // sockets) with the child until that child execs: give that a moment.
    let deadline = Instant::now() + HANDOVER;
    loop {
        // SAFETY: flock on a descriptor we own; it stays open (and locked) while `file` lives.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        if Instant::now() > deadline {
            return Err(SetupError::Locked(dir.to_path_buf()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Binds the TCP address, waiting out a listener a dying agent's child still holds.
fn bind_tcp(addr: &str) -> Result<TcpListener, SetupError> {
    let deadline = Instant::now() + HANDOVER;
    loop {
        match TcpListener::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.map_err(io_err("listen on", addr)),
        }
    }
}

fn read_token(path: &Path) -> Result<String, SetupError> {
    let token = std::fs::read_to_string(path)
        .map_err(|source| SetupError::TokenFile {
            path: path.to_path_buf(),
            source,
        })?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(SetupError::EmptyToken(path.to_path_buf()));
    }
    Ok(token)
}

/// Binds the Unix socket, replacing a stale file a killed agent left behind.
fn bind_unix(path: &Path) -> Result<UnixListener, SetupError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(SetupError::NotASocket(path.to_path_buf()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(SetupError::UnixInUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io_err("remove the stale socket", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err("listen on", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("restrict the permissions of", path.display()))?;
    Ok(listener)
}

/// Checks the jail flags before anything runs.
fn jail_options(cli: &Cli, jailer: &Path, uid: u32, gid: u32) -> Result<JailOptions, SetupError> {
    let bad = |why| SetupError::Jailer {
        path: jailer.to_path_buf(),
        why,
    };
    let meta = std::fs::metadata(jailer).map_err(|_| bad("does not exist or cannot be read"))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(bad(
            "is not an executable file; give the edgevisor-jailer binary",
        ));
    }
    for (flag, v) in [("uid", uid), ("gid", gid)] {
        if v == u32::MAX {
            return Err(SetupError::JailId { flag });
        }
    }
    if !cli.jail_base.is_absolute() {
        return Err(SetupError::JailBase(cli.jail_base.clone()));
    }
    let state = std::path::absolute(&cli.state_dir).unwrap_or_else(|_| cli.state_dir.clone());
    if state.starts_with("/run") || state.starts_with("/dev") {
        return Err(SetupError::JailedStateDir(cli.state_dir.clone()));
    }
    vmm::jail::cgroup::Limits::parse_all(&cli.jail_cgroups)
        .map_err(|e| SetupError::JailCgroup(e.to_string()))?;
    Ok(JailOptions {
        jailer: jailer.to_path_buf(),
        uid,
        gid,
        base: cli.jail_base.clone(),
        cgroups: cli.jail_cgroups.clone(),
    })
}

/// A bare program name looked up in PATH (the jailer needs the binary's path).
fn resolve_in_path(program: PathBuf) -> PathBuf {
    if program.components().count() != 1 {
        return program;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(&program))
                .find(|p| p.is_file())
        })
        .unwrap_or(program)
}

fn default_edgevisor() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("edgevisor")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("edgevisor"))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Rewrites the NFD feature file now and every minute.
fn spawn_nfd_writer(dir: PathBuf) -> Result<(), SetupError> {
    let write = move || {
        if let Err(e) = agent::nfd::write_features(&dir, &agent::capabilities::collect()) {
            eprintln!(
                "edgevisor-agent: cannot write the NFD feature file in {}: {e}",
                dir.display()
            );
        }
    };
    write();
    std::thread::Builder::new()
        .name("nfd".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(60));
            write();
        })
        .map(|_| ())
        .map_err(io_err("start", "the NFD writer thread"))
}

/// Pushes a metrics sample every `interval` seconds.
fn spawn_pusher(mut pusher: Pusher, agent: Arc<Agent>, interval: u64) -> Result<(), SetupError> {
    std::thread::Builder::new()
        .name("push".into())
        .spawn(move || {
            let mut was_connected = true;
            loop {
                let sample = server::sample(&agent);
                match pusher.tick(&sample, SystemTime::now()) {
                    Ok(report) if report.connected != was_connected => {
                        was_connected = report.connected;
                        match &report.error {
                            Some(e) => eprintln!("edgevisor-agent: push: {e}; buffering"),
                            None => eprintln!("edgevisor-agent: push: connected"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("edgevisor-agent: push: {e}"),
                }
                std::thread::sleep(Duration::from_secs(interval));
            }
        })
        .map(|_| ())
        .map_err(io_err("start", "the push thread"))
}

fn run(cli: Cli) -> Result<(), SetupError> {
    if cli.listen.is_none() && cli.unix.is_none() {
        return Err(SetupError::NoListener);
    }
    let token = match (&cli.listen, &cli.token_file) {
        (Some(_), None) => return Err(SetupError::NoToken),
        (_, Some(path)) => read_token(path)?,
        (None, None) => String::new(),
    };
    let jail = match (&cli.jailer, cli.jail_uid, cli.jail_gid) {
        (Some(jailer), Some(uid), Some(gid)) => Some(jail_options(&cli, jailer, uid, gid)?),
        _ => None,
    };
    let store = Store::open(&cli.state_dir)?.with_jail_base(jail.as_ref().map(|j| j.base.clone()));
    let _lock = lock_state_dir(&cli.state_dir)?;
    let tcp = cli.listen.as_deref().map(bind_tcp).transpose()?;
    let unix = cli.unix.as_deref().map(bind_unix).transpose()?;

    let edgevisor = resolve_in_path(cli.edgevisor.clone().unwrap_or_else(default_edgevisor));
    let supervisor = Supervisor::with_launcher(store, Launcher { edgevisor, jail })?;
    for note in supervisor.load()? {
        eprintln!("edgevisor-agent: {note}");
    }
    let agent = Arc::new(Agent::new(supervisor, token));

    let watcher = agent.clone();
    std::thread::Builder::new()
        .name("exit-watch".into())
        .spawn(move || loop {
            for note in watcher.supervisor.poll_exits() {
                eprintln!("edgevisor-agent: {note}");
            }
            std::thread::sleep(Duration::from_millis(250));
        })
        .map_err(io_err("start", "the exit watcher thread"))?;

    if let Some(dir) = cli.nfd_dir.clone() {
        spawn_nfd_writer(dir)?;
    }
    if let Some(url) = cli.push_url.clone() {
        let bearer_token = cli.push_token_file.as_deref().map(read_token).transpose()?;
        let config = PushConfig {
            url,
            bearer_token,
            buffer_dir: cli
                .push_buffer
                .clone()
                .unwrap_or_else(|| cli.state_dir.join("push-buffer")),
            max_buffer_bytes: cli.push_buffer_bytes,
            node: cli.node_name.clone().unwrap_or_else(host_name),
            timeout: Duration::from_secs(5),
        };
        spawn_pusher(
            Pusher::new(config)?,
            agent.clone(),
            cli.push_interval.max(1),
        )?;
    }

    let mut servers = Vec::new();
    if let Some(listener) = tcp {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        eprintln!("edgevisor-agent: serving on http://{addr}");
        let agent = agent.clone();
        servers.push(std::thread::spawn(move || {
            server::serve_tcp(listener, agent)
        }));
    }
    if let Some(listener) = unix {
        if let Some(path) = &cli.unix {
            eprintln!("edgevisor-agent: serving on unix:{}", path.display());
        }
        let agent = agent.clone();
        servers.push(std::thread::spawn(move || {
            server::serve_unix(listener, agent)
        }));
    }
    eprintln!("edgevisor-agent: ready");
    for s in servers {
        let _ = s.join();
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgevisor-agent: error: {e}");
            ExitCode::from(2)
        }
    }
}
