//! The jailer: starts one `edgevisor` per VM inside its own sandbox, the way Firecracker's
//! jailer starts Firecracker.
//!
//! `edgevisor-jailer --id ID --exec-file PATH [options] -- <edgevisor args>`:
//! 1. validates every input first; a bad one is one sentence, exit code 2, and nothing is
//!    created;
//! 2. builds `<chroot base>/edgevisor/<ID>/root` (see [`layout`] for what is in it and how
//!    paths inside the jail are named: the arguments after `--` are passed unchanged, and
//!    name the in-jail paths);
//! 3. creates the cgroup `edgevisor/<ID>` (cgroup v1 per controller, or v2; see [`cgroup`])
//!    and writes the `--cgroup` limits;
//! 4. forks a child that joins the cgroups, enters `--netns`, gets a new mount namespace and
//!    pivot_roots into the jail, sets rlimits (`no-file` 2048 unless told), closes inherited
//!    descriptors above 2, sets no_new_privs, drops to `--uid`/`--gid` (with no supplementary
//!    groups; without `--uid` and `--gid` the VMM stays root) and execs the copied VMM with an
//!    empty environment (see [`spawn`]);
//! 5. waits for the VMM and exits with its exit code (128 + N for signal N), forwarding
//!    SIGTERM, SIGINT, SIGHUP and SIGQUIT to it; a jailer killed outright takes the VMM with
//!    it (parent-death signal SIGKILL); with `--daemonize` the VMM gets its own
//!    session and /dev/null as stdio, and the jailer prints its pid and exits 0 once the exec
//!    succeeded.
//!
//! When a step before the exec fails, the jailer removes the jail directory and cgroups it made
//! and exits 2. After the VMM ends, the jail stays until
//! `edgevisor-jailer --id ID --cleanup`, which refuses while a process is still in the jail's
//! cgroups.

pub mod cgroup;
pub mod layout;
pub mod rlimit;
pub mod spawn;

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use cgroup::{CgroupError, Hierarchy, JailCgroups, Limits};
use layout::{DeviceNode, JailDir, LayoutError, LayoutSpec};
use rlimit::{ResourceLimit, RlimitError};
use spawn::{ChildPlan, Outcome, SpawnError};

/// Where jails live unless `--chroot-base-dir` says otherwise.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/edgevisor-jail";

/// Exit code for bad input or a failed setup (as `edgevisor run`).
pub const EXIT_SETUP_ERROR: u8 = 2;

/// Errors of the jailer; each is one sentence naming the input and what to do.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("--id {0:?} is not 1 to 64 letters, digits or dashes; pick such an id")]
    BadId(String),
    #[error("--exec-file {path} {why}; give the path of the edgevisor binary")]
    ExecFile { path: PathBuf, why: &'static str },
    #[error("--{flag} 4294967295 is the kernel's \"no change\" value; give a real id")]
    BadId32 { flag: &'static str },
    #[error("--chroot-base-dir {path} {why}")]
    ChrootBase { path: PathBuf, why: &'static str },
    #[error("--netns {path} {why}; give a network namespace file such as /var/run/netns/NAME")]
    Netns { path: PathBuf, why: String },
    #[error("--file {path} {why}")]
    File { path: PathBuf, why: &'static str },
    #[error("--dev {0:?} is unknown; use kvm, tun or both (kvm,tun)")]
    UnknownDevice(String),
    #[error(
        "no jail with id {id} exists (no {dir} and no cgroup); check the id and --chroot-base-dir"
    )]
    NothingToClean { id: String, dir: PathBuf },
    #[error("cannot read the working directory to resolve --file paths: {0}; pass absolute paths")]
    Cwd(#[source] std::io::Error),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Rlimit(#[from] RlimitError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
}

/// The jailer's command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "edgevisor-jailer",
    version,
    about = "Start edgevisor in a per-VM sandbox: own mount namespace and root, cgroups, rlimits, optional network namespace, dropped ids, empty environment"
)]
pub struct JailerCli {
    /// The jail's id: 1 to 64 letters, digits or dashes; names the jail directory and cgroup.
    #[arg(long)]
    pub id: String,
    /// The VMM binary; a root-owned copy is what runs, as /<file name> in the jail.
    #[arg(long, required_unless_present = "cleanup")]
    pub exec_file: Option<PathBuf>,
    /// The uid the VMM runs as (with --gid; without both it stays root).
    #[arg(long, requires = "gid")]
    pub uid: Option<u32>,
    /// The gid the VMM runs as (with --uid).
    #[arg(long, requires = "uid")]
    pub gid: Option<u32>,
    /// Jails are made in <dir>/edgevisor/<id>/root.
    #[arg(long, default_value = DEFAULT_CHROOT_BASE)]
    pub chroot_base_dir: PathBuf,
    /// A network namespace to run in, e.g. /var/run/netns/NAME.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// A cgroup limit KEY=VALUE (repeatable): cpu.max="QUOTA PERIOD", cpu.weight, memory.max,
    /// pids.max, cpuset.cpus, cpuset.mems, or v1 names (cpu.cfs_quota_us, cpu.cfs_period_us,
    /// cpu.shares, memory.limit_in_bytes).
    #[arg(long = "cgroup", value_name = "KEY=VALUE")]
    pub cgroups: Vec<String>,
    /// A resource limit NAME=VALUE (repeatable): no-file (default 2048), fsize, nproc, as,
    /// core, memlock, stack, cpu; VALUE a number (K/M/G allowed) or unlimited.
    #[arg(long = "resource-limit", value_name = "NAME=VALUE")]
    pub resource_limits: Vec<String>,
    /// Detach the VMM (own session, stdio on /dev/null); print its pid and exit.
    #[arg(long)]
    pub daemonize: bool,
    /// A regular file the VMM needs (kernel, initrd, disk), repeatable: it appears in the jail
    /// at its absolute host path (hard link when possible, else a copy).
    #[arg(long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Device nodes to create in the jail: kvm, tun (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "kvm")]
    pub dev: Vec<String>,
    /// Remove the jail directory and cgroups of --id (refused while the VM runs).
    #[arg(long, conflicts_with_all = ["exec_file", "uid", "gid", "netns", "cgroups", "resource_limits", "daemonize", "files"])]
    pub cleanup: bool,
    /// The VMM's arguments.
    #[arg(last = true)]
    pub exec_args: Vec<String>,
}

/// A validated jail request.
#[derive(Debug)]
pub struct JailSpec {
    pub id: String,
    pub exec_file: PathBuf,
    pub ids: Option<(u32, u32)>,
    pub chroot_base: PathBuf,
    pub netns: Option<OwnedFd>,
    pub limits: Limits,
    pub rlimits: Vec<ResourceLimit>,
    pub daemonize: bool,
    pub files: Vec<PathBuf>,
    pub devices: Vec<DeviceNode>,
    pub exec_args: Vec<String>,
}

/// Whether `id` is 1 to 64 of `[A-Za-z0-9-]`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `<base>/edgevisor/<id>`: the jail directory (its `root` is the VMM's `/`).
pub fn jail_dir(base: &Path, id: &str) -> PathBuf {
    base.join("edgevisor").join(id)
}

impl JailSpec {
    /// Checks every input; creates nothing (it opens the --netns file).
    pub fn from_cli(cli: &JailerCli) -> Result<JailSpec, JailError> {
        if !valid_id(&cli.id) {
            return Err(JailError::BadId(cli.id.clone()));
        }
        let exec_file = cli.exec_file.clone().unwrap_or_default();
        check_exec_file(&exec_file)?;
        for (flag, v) in [("uid", cli.uid), ("gid", cli.gid)] {
            if v == Some(u32::MAX) {
                return Err(JailError::BadId32 { flag });
            }
        }
        let ids = cli.uid.zip(cli.gid);
        let devices = parse_devices(&cli.dev)?;
        check_chroot_base(&cli.chroot_base_dir, !devices.is_empty())?;
        let limits = Limits::parse_all(&cli.cgroups)?;
        let rlimits = rlimit::parse_all(&cli.resource_limits)?;
        let exec_name = exec_file.file_name().unwrap_or_default();
        let files = check_files(&cli.files, Path::new("/").join(exec_name).as_path())?;
        let netns = cli.netns.as_deref().map(open_netns).transpose()?;
        Ok(JailSpec {
            id: cli.id.clone(),
            exec_file,
            ids,
            chroot_base: cli.chroot_base_dir.clone(),
            netns,
            limits,
            rlimits,
            daemonize: cli.daemonize,
            files,
            devices,
            exec_args: cli.exec_args.clone(),
        })
    }
}

fn check_exec_file(path: &Path) -> Result<(), JailError> {
    let bad = |why| JailError::ExecFile {
        path: path.to_path_buf(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|_| bad("does not exist or cannot be read"))?;
    if !meta.is_file() {
        return Err(bad("is not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("is not executable"));
    }
    match path.file_name().map(|n| n.as_bytes()) {
        None => Err(bad("has no file name")),
        Some(b"dev" | b"run" | b"lib" | b"lib64" | b"usr") => {
            Err(bad("has a name the jail uses for a directory"))
        }
        Some(_) => Ok(()),
    }
}

fn parse_devices(names: &[String]) -> Result<Vec<DeviceNode>, JailError> {
    let mut devices = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let dev = [DeviceNode::Kvm, DeviceNode::Tun]
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| JailError::UnknownDevice(name.to_string()))?;
        if !devices.contains(&dev) {
            devices.push(dev);
        }
    }
    Ok(devices)
}

fn check_chroot_base(base: &Path, with_devices: bool) -> Result<(), JailError> {
    let bad = |why| JailError::ChrootBase {
        path: base.to_path_buf(),
        why,
    };
    if !base.is_absolute() {
        return Err(bad("is not an absolute path; give one"));
    }
    if base.exists() && !base.is_dir() {
        return Err(bad("is not a directory; give a directory"));
    }
    // The nearest existing ancestor tells the filesystem the jail will be on.
    let existing = base
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes())
        .map_err(|_| bad("contains a NUL byte"))?;
    // SAFETY: an all-zero statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is writable; both outlive the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0
        && with_devices
        && st.f_flag & libc::ST_NODEV != 0
    {
        return Err(bad(
            "is on a filesystem mounted nodev, where /dev/kvm cannot be opened; pick another",
        ));
    }
    Ok(())
}

/// Absolute, `..`-free paths of regular files that clash with nothing else in the jail.
fn check_files(files: &[PathBuf], exec_in_jail: &Path) -> Result<Vec<PathBuf>, JailError> {
    let cwd = if files.iter().any(|f| f.is_relative()) {
        std::env::current_dir().map_err(JailError::Cwd)?
    } else {
        PathBuf::new()
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for f in files {
        let bad = |why| JailError::File {
            path: f.clone(),
            why,
        };
        if f.components().any(|c| c == Component::ParentDir) {
            return Err(bad("contains `..`; give the path without it"));
        }
        let abs: PathBuf = cwd
            .join(f)
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect();
        let meta = std::fs::metadata(&abs).map_err(|_| bad("does not exist or cannot be read"))?;
        if !meta.is_file() {
            return Err(bad(
                "is not a regular file; only regular files go into the jail",
            ));
        }
        if abs == exec_in_jail || abs.starts_with("/dev") || abs.starts_with("/run") {
            return Err(bad(
                "would land on a path the jail uses itself (/dev, /run or the VMM); move the file",
            ));
        }
        if out.contains(&abs) {
            return Err(bad("is given twice; give it once"));
        }
        out.push(abs);
    }
    Ok(out)
}

fn open_netns(path: &Path) -> Result<OwnedFd, JailError> {
    let bad = |why: String| JailError::Netns {
        path: path.to_path_buf(),
        why,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot be opened ({e})")))?;
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: NS_GET_NSTYPE takes no argument and only inspects the descriptor.
    let kind = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(bad("is not a network namespace".to_string()));
    }
    Ok(OwnedFd::from(file))
}

/// Runs a validated jail to the end; returns the exit code the jailer should end with.
pub fn run(spec: JailSpec) -> Result<u8, JailError> {
    let hierarchy = Hierarchy::detect_host(&spec.limits.needed())?;
    let controllers = hierarchy.controllers_for(&spec.limits);
    cgroup::check_free(&hierarchy, &spec.id, &controllers)?;
    let dir = jail_dir(&spec.chroot_base, &spec.id);
    if dir.exists() {
        return Err(LayoutError::AlreadyExists(dir).into());
    }
    let exec_name = spec.exec_file.file_name().unwrap_or_default().to_owned();
    let jail = layout::build(&LayoutSpec {
        jail_dir: dir,
        exec_file: spec.exec_file.clone(),
        files: spec.files.clone(),
        devices: spec.devices.clone(),
        owner: spec.ids,
    })?;
    let cgroups = match cgroup::create(&hierarchy, &spec.id, &controllers, &spec.limits) {
        Ok(c) => c,
        Err(e) => {
            let _ = jail.remove();
            return Err(e.into());
        }
    };
    let plan = ChildPlan {
        root: jail.root(),
        exec_in_jail: Path::new("/").join(exec_name),
        args: spec.exec_args,
        cgroup_procs: cgroups.procs_files(),
        netns: spec.netns,
        rlimits: spec.rlimits,
        ids: spec.ids,
        daemonize: spec.daemonize,
    };
    match spawn::spawn(plan) {
        Ok(Outcome::Exited(code)) => Ok(u8::try_from(code).unwrap_or(u8::MAX)),
        Ok(Outcome::Detached(pid)) => {
            println!("{pid}");
            Ok(0)
        }
        Err(e) => {
            let _ = cgroups.remove();
            let _ = jail.remove();
            Err(e.into())
        }
    }
}

/// What `--cleanup` removed.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub cgroups: Vec<PathBuf>,
    pub jail_dir: Option<PathBuf>,
}

/// Removes the jail directory and cgroups of `id`; refuses while a process is in the cgroups.
pub fn cleanup(id: &str, base: &Path) -> Result<Cleaned, JailError> {
    if !valid_id(id) {
        return Err(JailError::BadId(id.to_string()));
    }
    let hierarchy = Hierarchy::detect_host(&[])?;
    let cgroups = JailCgroups::existing(&hierarchy, id);
    let dir = jail_dir(base, id);
    let jail = JailDir::existing(dir.clone());
    if cgroups.dirs().is_empty() && jail.is_none() {
        return Err(JailError::NothingToClean { id: id.into(), dir });
    }
    let mut cleaned = Cleaned {
        cgroups: cgroups.dirs().to_vec(),
        jail_dir: None,
    };
    cgroups.remove()?;
    if let Some(jail) = jail {
        cleaned.jail_dir = Some(jail.path().to_path_buf());
        jail.remove()?;
    }
    Ok(cleaned)
}

/// The jailer's `main`: parses nothing itself, returns the process exit code.
pub fn main_with(cli: JailerCli) -> u8 {
    let result = if cli.cleanup {
        cleanup(&cli.id, &cli.chroot_base_dir).map(|c| {
            for d in &c.cgroups {
                eprintln!("edgevisor-jailer: removed cgroup {}", d.display());
            }
            if let Some(d) = &c.jail_dir {
                eprintln!("edgevisor-jailer: removed {}", d.display());
            }
            0
        })
    } else {
        JailSpec::from_cli(&cli).and_then(run)
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgevisor-jailer: error: {e}");
            EXIT_SETUP_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("vm-01"));
        assert!(valid_id(&"a".repeat(64)));
        for bad in ["", "a/b", "..", "a b", "vm_1", "é"] {
            assert!(!valid_id(bad), "{bad:?} accepted");
        }
        assert!(!valid_id(&"a".repeat(65)));
    }

    #[test]
    fn devices_parse_and_unknown_ones_are_refused() {
        let d = parse_devices(&["kvm".into(), "tun".into(), "kvm".into()]).unwrap();
        assert_eq!(d, vec![DeviceNode::Kvm, DeviceNode::Tun]);
        assert!(matches!(
            parse_devices(&["gpu".into()]),
            Err(JailError::UnknownDevice(n)) if n == "gpu"
        ));
    }

    #[test]
    fn files_are_made_absolute_and_clashes_refused() {
        let me = std::env::current_exe().unwrap();
        let got = check_files(std::slice::from_ref(&me), Path::new("/edgevisor")).unwrap();
        assert_eq!(got, vec![me.clone()]);
        assert!(check_files(&[me.clone(), me.clone()], Path::new("/edgevisor")).is_err());
        assert!(check_files(std::slice::from_ref(&me), &me).is_err());
        assert!(check_files(&[PathBuf::from("/etc/../etc/hostname")], Path::new("/x")).is_err());
        assert!(check_files(&[PathBuf::from("/etc")], Path::new("/x")).is_err());
    }
}
