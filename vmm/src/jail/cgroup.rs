//! Per-jail control groups: `--cgroup` settings, the host's cgroup layout (v1, v2 or hybrid,
//! read from /proc/self/mountinfo) and the writers that create `edgevisor/<id>` and put limits
//! in it.
//!
//! Settings are parsed into one [`Limits`] model whatever name they were given under (the v2
//! names `cpu.max`, `cpu.weight`, `memory.max`, `pids.max`, `cpuset.cpus`, `cpuset.mems`, or the
//! v1 names `cpu.cfs_quota_us`, `cpu.cfs_period_us`, `cpu.shares`, `memory.limit_in_bytes`), and
//! each writer renders the model in its own hierarchy's files.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Errors of the cgroup part of the jailer.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("--cgroup {0:?} is not KEY=VALUE; write e.g. --cgroup pids.max=64")]
    NotKeyValue(String),
    #[error("--cgroup key {0:?} is unknown; use cpu.max, cpu.weight, memory.max, pids.max, cpuset.cpus, cpuset.mems or the v1 names cpu.cfs_quota_us, cpu.cfs_period_us, cpu.shares, memory.limit_in_bytes")]
    UnknownKey(String),
    #[error("--cgroup {key}={value:?} is not valid: {why}")]
    BadValue {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("the {0} cgroup controller is neither mounted as cgroup v1 nor enabled in the cgroup v2 root; mount it or drop the --cgroup settings that need it")]
    ControllerMissing(&'static str),
    #[error("cgroup {0} already exists: a jail with this id is running or was not cleaned up; run edgevisor-jailer --id ID --cleanup")]
    AlreadyExists(PathBuf),
    #[error("cannot write {value:?} to {path}: {source}; check that the limit is allowed there")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create or remove cgroup {path}: {source}; check that the jailer runs as root")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {path} still holds process(es) {pids}; stop them before cleaning up")]
    Busy { path: PathBuf, pids: String },
}

/// A cgroup controller the jailer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    Cpu,
    Memory,
    Pids,
    Cpuset,
}

impl Controller {
    /// Every controller, in the order they are written.
    pub const ALL: [Controller; 4] = [
        Controller::Cpu,
        Controller::Memory,
        Controller::Pids,
        Controller::Cpuset,
    ];

    /// The kernel's name for the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpuset => "cpuset",
        }
    }
}

/// Name of the parent cgroup every jail's cgroup lives under.
pub const PARENT: &str = "edgevisor";

/// `max` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Max {
    Unlimited,
    Value(u64),
}

/// The limits asked for with `--cgroup`, independent of the cgroup version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU time per period, in microseconds.
    pub cpu_quota_us: Option<Max>,
    /// Length of the CPU period, in microseconds.
    pub cpu_period_us: Option<u64>,
    /// Relative CPU weight on the v2 scale (1..=10000; 100 is the default).
    pub cpu_weight: Option<u64>,
    /// Memory limit in bytes.
    pub memory_max: Option<Max>,
    /// Most processes and threads.
    pub pids_max: Option<Max>,
    /// CPUs the jail may run on (kernel list syntax, e.g. `0-3,6`).
    pub cpuset_cpus: Option<String>,
    /// NUMA nodes the jail may allocate memory on.
    pub cpuset_mems: Option<String>,
}

impl Limits {
    /// Parses every `KEY=VALUE` setting; a later setting of the same limit wins.
    pub fn parse_all<S: AsRef<str>>(settings: &[S]) -> Result<Limits, CgroupError> {
        let mut limits = Limits::default();
        for s in settings {
            limits.set(s.as_ref())?;
        }
        Ok(limits)
    }

    /// Applies one `KEY=VALUE` setting.
    pub fn set(&mut self, setting: &str) -> Result<(), CgroupError> {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| CgroupError::NotKeyValue(setting.to_string()))?;
        let (key, value) = (key.trim(), value.trim());
        let bad = |why| CgroupError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            why,
        };
        match key {
            "cpu.max" => {
                let mut words = value.split_whitespace();
                let quota = words.next().ok_or_else(|| bad("give QUOTA [PERIOD]"))?;
                self.cpu_quota_us = Some(
                    parse_quota(quota)
                        .ok_or_else(|| bad("the quota is `max` or at least 1000 microseconds"))?,
                );
                if let Some(period) = words.next() {
                    self.cpu_period_us = Some(
                        parse_period(period)
                            .ok_or_else(|| bad("the period is 1000 to 1000000 microseconds"))?,
                    );
                }
                if words.next().is_some() {
                    return Err(bad("give QUOTA [PERIOD]"));
                }
            }
            "cpu.cfs_quota_us" => {
                let quota = if value == "-1" { "max" } else { value };
                self.cpu_quota_us = Some(
                    parse_quota(quota)
                        .ok_or_else(|| bad("the quota is -1 or at least 1000 microseconds"))?,
                );
            }
            "cpu.cfs_period_us" => {
                self.cpu_period_us = Some(
                    parse_period(value)
                        .ok_or_else(|| bad("the period is 1000 to 1000000 microseconds"))?,
                );
            }
            "cpu.weight" => {
                let w = value
                    .parse::<u64>()
                    .ok()
                    .filter(|w| (1..=10_000).contains(w))
                    .ok_or_else(|| bad("the weight is 1 to 10000"))?;
                self.cpu_weight = Some(w);
            }
            "cpu.shares" => {
                let s = value
                    .parse::<u64>()
                    .ok()
                    .filter(|s| (2..=262_144).contains(s))
                    .ok_or_else(|| bad("the shares are 2 to 262144"))?;
                self.cpu_weight = Some(shares_to_weight(s));
            }
            "memory.max" | "memory.limit_in_bytes" => {
                let v =
                    if value == "max" || value == "-1" {
                        Max::Unlimited
                    } else {
                        Max::Value(parse_size(value).filter(|b| *b > 0).ok_or_else(|| {
                            bad("give bytes with an optional K, M, G or T, or max")
                        })?)
                    };
                self.memory_max = Some(v);
            }
            "pids.max" => {
                let v = if value == "max" {
                    Max::Unlimited
                } else {
                    Max::Value(
                        value
                            .parse::<u64>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| bad("give a positive number of processes, or max"))?,
                    )
                };
                self.pids_max = Some(v);
            }
            "cpuset.cpus" | "cpuset.mems" => {
                if !is_cpu_list(value) {
                    return Err(bad("give a list such as 0-3,6"));
                }
                if key == "cpuset.cpus" {
                    self.cpuset_cpus = Some(value.to_string());
                } else {
                    self.cpuset_mems = Some(value.to_string());
                }
            }
            _ => return Err(CgroupError::UnknownKey(key.to_string())),
        }
        Ok(())
    }

    /// Controllers some limit needs.
    pub fn needed(&self) -> Vec<Controller> {
        let mut v = Vec::new();
        if self.cpu_quota_us.is_some() || self.cpu_period_us.is_some() || self.cpu_weight.is_some()
        {
            v.push(Controller::Cpu);
        }
        if self.memory_max.is_some() {
            v.push(Controller::Memory);
        }
        if self.pids_max.is_some() {
            v.push(Controller::Pids);
        }
        if self.cpuset_cpus.is_some() || self.cpuset_mems.is_some() {
            v.push(Controller::Cpuset);
        }
        v
    }
}

fn parse_quota(s: &str) -> Option<Max> {
    if s == "max" {
        return Some(Max::Unlimited);
    }
    s.parse::<u64>().ok().filter(|q| *q >= 1000).map(Max::Value)
}

fn parse_period(s: &str) -> Option<u64> {
    s.parse::<u64>()
        .ok()
        .filter(|p| (1000..=1_000_000).contains(p))
}

/// Bytes from `N`, `NK`, `NM`, `NG` or `NT` (binary multiples).
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()?.to_ascii_uppercase() {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        b'T' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

fn is_cpu_list(s: &str) -> bool {
    !s.is_empty()
        && s.split(',').all(|part| {
            let mut ends = part.splitn(2, '-');
            let ok = |x: Option<&str>| x.is_some_and(|x| !x.is_empty() && x.parse::<u32>().is_ok());
            let first = ends.next();
            match ends.next() {
                None => ok(first),
                Some(last) => ok(first) && ok(Some(last)),
            }
        })
}

/// v1 `cpu.shares` to v2 `cpu.weight` (the conversion runc and systemd use).
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.saturating_sub(2) * 9999) / 262_142
}

/// v2 `cpu.weight` to v1 `cpu.shares`.
pub fn weight_to_shares(weight: u64) -> u64 {
    2 + (weight.saturating_sub(1) * 262_142) / 9999
}

/// Where the host's cgroup controllers live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Pure cgroup v2: one tree at `root`, controllers enabled through `cgroup.subtree_control`.
    V2 {
        root: PathBuf,
        controllers: Vec<Controller>,
    },
    /// cgroup v1 (also the hybrid layout, whose v2 tree holds no controllers): one mount per
    /// controller (several controllers may share one).
    V1 {
        mounts: BTreeMap<Controller, PathBuf>,
    },
}

/// The cgroup mounts listed in a mountinfo text.
#[derive(Debug, Default)]
struct Mounts {
    v1: BTreeMap<Controller, PathBuf>,
    v2: Option<PathBuf>,
}

fn parse_mountinfo(text: &str) -> Mounts {
    let mut mounts = Mounts::default();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = left.split(' ').nth(4) else {
            continue;
        };
        let point = PathBuf::from(unescape_octal(point));
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or("");
        let superopts = right.nth(1).unwrap_or("");
        match fstype {
            "cgroup2" if mounts.v2.is_none() => mounts.v2 = Some(point),
            "cgroup" => {
                for c in Controller::ALL {
                    if superopts.split(',').any(|o| o == c.name()) {
                        mounts.v1.entry(c).or_insert_with(|| point.clone());
                    }
                }
            }
            _ => {}
        }
    }
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Hierarchy {
    /// Reads the host's layout from /proc/self/mountinfo.
    pub fn detect_host(needed: &[Controller]) -> Result<Hierarchy, CgroupError> {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Hierarchy::detect(&text, needed)
    }

    /// Picks the layout from a mountinfo text. Pure v2 when the cgroup2 tree offers every
    /// controller in `needed` and no controller is bound to v1; v1 otherwise (the hybrid layout
    /// keeps its controllers on v1). Controllers not in `needed` are used when available.
    pub fn detect(mountinfo: &str, needed: &[Controller]) -> Result<Hierarchy, CgroupError> {
        let mounts = parse_mountinfo(mountinfo);
        if let Some(root) = &mounts.v2 {
            let offered = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            let controllers: Vec<Controller> = Controller::ALL
                .into_iter()
                .filter(|c| offered.split_whitespace().any(|w| w == c.name()))
                .collect();
            let all_there = needed.iter().all(|c| controllers.contains(c));
            if all_there && mounts.v1.is_empty() && !controllers.is_empty() {
                return Ok(Hierarchy::V2 {
                    root: root.clone(),
                    controllers,
                });
            }
        }
        if let Some(missing) = needed.iter().find(|c| !mounts.v1.contains_key(c)) {
            return Err(CgroupError::ControllerMissing(missing.name()));
        }
        Ok(Hierarchy::V1 { mounts: mounts.v1 })
    }

    /// The controllers the jail's cgroups get: cpu, memory and pids when the host has them,
    /// and cpuset only when a cpuset limit asks for it.
    pub fn controllers_for(&self, limits: &Limits) -> Vec<Controller> {
        let wanted = |c: &Controller| *c != Controller::Cpuset || limits.needed().contains(c);
        match self {
            Hierarchy::V2 { controllers, .. } => {
                controllers.iter().copied().filter(wanted).collect()
            }
            Hierarchy::V1 { mounts } => mounts.keys().copied().filter(wanted).collect(),
        }
    }

    /// The leaf directories a jail with this id has (or would have), one per distinct mount.
    pub fn leaf_dirs(
        &self,
        id: &str,
        controllers: &[Controller],
    ) -> Vec<(Vec<Controller>, PathBuf)> {
        match self {
            Hierarchy::V2 { root, .. } => {
                vec![(controllers.to_vec(), root.join(PARENT).join(id))]
            }
            Hierarchy::V1 { mounts } => {
                let mut by_mount: Vec<(Vec<Controller>, PathBuf)> = Vec::new();
                for c in controllers {
                    let Some(m) = mounts.get(c) else { continue };
                    let dir = m.join(PARENT).join(id);
                    match by_mount.iter_mut().find(|(_, d)| *d == dir) {
                        Some((cs, _)) => cs.push(*c),
                        None => by_mount.push((vec![*c], dir)),
                    }
                }
                by_mount
            }
        }
    }
}

/// The cgroups of one jail, created by [`create`].
#[derive(Debug)]
pub struct JailCgroups {
    dirs: Vec<PathBuf>,
}

impl JailCgroups {
    /// The cgroups found for `id` (for cleanup): every leaf directory that exists.
    pub fn existing(h: &Hierarchy, id: &str) -> JailCgroups {
        let dirs = h
            .leaf_dirs(id, &Controller::ALL)
            .into_iter()
            .map(|(_, d)| d)
            .filter(|d| d.is_dir())
            .collect();
        JailCgroups { dirs }
    }

    /// The leaf directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The `cgroup.procs` files a process writes its pid into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Removes every leaf directory; refuses (and removes nothing) while one holds a process.
    pub fn remove(self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<&str> = procs.split_whitespace().collect();
            if !pids.is_empty() {
                return Err(CgroupError::Busy {
                    path: d.clone(),
                    pids: pids.join(" "),
                });
            }
        }
        for d in &self.dirs {
            remove_dir(d)?;
        }
        Ok(())
    }
}

fn remove_dir(d: &Path) -> Result<(), CgroupError> {
    match fs::remove_dir(d) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(CgroupError::Dir {
            path: d.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn write(path: PathBuf, value: &str) -> Result<(), CgroupError> {
    fs::write(&path, value).map_err(|source| CgroupError::Write {
        path,
        value: value.to_string(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<bool, CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Dir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Fails when a cgroup of this id already exists (nothing is created).
pub fn check_free(h: &Hierarchy, id: &str, controllers: &[Controller]) -> Result<(), CgroupError> {
    match h
        .leaf_dirs(id, controllers)
        .into_iter()
        .find(|(_, d)| d.exists())
    {
        Some((_, d)) => Err(CgroupError::AlreadyExists(d)),
        None => Ok(()),
    }
}

/// Creates `edgevisor/<id>` in every hierarchy that holds one of `controllers` and writes the
/// limits. On failure removes the leaf directories it made.
pub fn create(
    h: &Hierarchy,
    id: &str,
    controllers: &[Controller],
    limits: &Limits,
) -> Result<JailCgroups, CgroupError> {
    let mut made = JailCgroups { dirs: Vec::new() };
    let result = match h {
        Hierarchy::V2 { root, .. } => create_v2(root, id, controllers, limits, &mut made),
        Hierarchy::V1 { .. } => h
            .leaf_dirs(id, controllers)
            .into_iter()
            .try_for_each(|(cs, leaf)| create_v1(&cs, &leaf, limits, &mut made)),
    };
    if let Err(e) = result {
        for d in made.dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
        return Err(e);
    }
    Ok(made)
}

/// cgroup v2: enable the controllers on the way down, then write the limits in the leaf.
fn create_v2(
    root: &Path,
    id: &str,
    controllers: &[Controller],
    limits: &Limits,
    made: &mut JailCgroups,
) -> Result<(), CgroupError> {
    let parent = root.join(PARENT);
    mkdir(&parent)?;
    for dir in [root, parent.as_path()] {
        for c in controllers {
            write(
                dir.join("cgroup.subtree_control"),
                &format!("+{}", c.name()),
            )?;
        }
    }
    let leaf = parent.join(id);
    if !mkdir(&leaf)? {
        return Err(CgroupError::AlreadyExists(leaf));
    }
    made.dirs.push(leaf.clone());
    let max = |m: Max| match m {
        Max::Unlimited => "max".to_string(),
        Max::Value(v) => v.to_string(),
    };
    if limits.cpu_quota_us.is_some() || limits.cpu_period_us.is_some() {
        let quota = max(limits.cpu_quota_us.unwrap_or(Max::Unlimited));
        let value = match limits.cpu_period_us {
            Some(p) => format!("{quota} {p}"),
            None => quota,
        };
        write(leaf.join("cpu.max"), &value)?;
    }
    if let Some(w) = limits.cpu_weight {
        write(leaf.join("cpu.weight"), &w.to_string())?;
    }
    if let Some(m) = limits.memory_max {
        write(leaf.join("memory.max"), &max(m))?;
    }
    if let Some(p) = limits.pids_max {
        write(leaf.join("pids.max"), &max(p))?;
    }
    if let Some(c) = &limits.cpuset_cpus {
        write(leaf.join("cpuset.cpus"), c)?;
    }
    if let Some(m) = &limits.cpuset_mems {
        write(leaf.join("cpuset.mems"), m)?;
    }
    Ok(())
}

/// cgroup v1: one leaf per mount; the v2 model is mapped onto the v1 file names.
fn create_v1(
    controllers: &[Controller],
    leaf: &Path,
    limits: &Limits,
    made: &mut JailCgroups,
) -> Result<(), CgroupError> {
    let parent = leaf.parent().unwrap_or(leaf);
    mkdir(parent)?;
    let cpuset = controllers.contains(&Controller::Cpuset);
    if cpuset {
        // A new v1 cpuset is empty and takes no tasks: fill the parent from its own parent.
        inherit_cpuset(parent)?;
    }
    if !mkdir(leaf)? {
        return Err(CgroupError::AlreadyExists(leaf.to_path_buf()));
    }
    made.dirs.push(leaf.to_path_buf());
    let v1_max = |m: Max| match m {
        Max::Unlimited => "-1".to_string(),
        Max::Value(v) => v.to_string(),
    };
    for c in controllers {
        match c {
            Controller::Cpu => {
                if let Some(p) = limits.cpu_period_us {
                    write(leaf.join("cpu.cfs_period_us"), &p.to_string())?;
                }
                if let Some(q) = limits.cpu_quota_us {
                    write(leaf.join("cpu.cfs_quota_us"), &v1_max(q))?;
                }
                if let Some(w) = limits.cpu_weight {
                    write(leaf.join("cpu.shares"), &weight_to_shares(w).to_string())?;
                }
            }
            Controller::Memory => {
                if let Some(m) = limits.memory_max {
                    write(leaf.join("memory.limit_in_bytes"), &v1_max(m))?;
                }
            }
            Controller::Pids => {
                if let Some(p) = limits.pids_max {
                    let v = match p {
                        Max::Unlimited => "max".to_string(),
                        Max::Value(v) => v.to_string(),
                    };
                    write(leaf.join("pids.max"), &v)?;
                }
            }
            Controller::Cpuset => {
                match &limits.cpuset_cpus {
                    Some(c) => write(leaf.join("cpuset.cpus"), c)?,
                    None => copy_from_parent(leaf, "cpuset.cpus")?,
                }
                match &limits.cpuset_mems {
                    Some(m) => write(leaf.join("cpuset.mems"), m)?,
                    None => copy_from_parent(leaf, "cpuset.mems")?,
                }
            }
        }
    }
    Ok(())
}

fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let now = fs::read_to_string(dir.join(file)).unwrap_or_default();
        if now.trim().is_empty() {
            copy_from_parent(dir, file)?;
        }
    }
    Ok(())
}

fn copy_from_parent(dir: &Path, file: &str) -> Result<(), CgroupError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    let value = fs::read_to_string(parent.join(file)).unwrap_or_default();
    write(dir.join(file), value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("jail-cgroup-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn v2_and_v1_names_parse_into_one_model() {
        let a =
            Limits::parse_all(&["cpu.max=50000 100000", "memory.max=256M", "pids.max=64"]).unwrap();
        let b = Limits::parse_all(&[
            "cpu.cfs_quota_us=50000",
            "cpu.cfs_period_us=100000",
            "memory.limit_in_bytes=268435456",
            "pids.max=64",
        ])
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.cpu_quota_us, Some(Max::Value(50_000)));
        assert_eq!(a.memory_max, Some(Max::Value(256 << 20)));
        assert_eq!(
            a.needed(),
            vec![Controller::Cpu, Controller::Memory, Controller::Pids]
        );
        let unlimited = Limits::parse_all(&["cpu.cfs_quota_us=-1", "memory.max=max"]).unwrap();
        assert_eq!(unlimited.cpu_quota_us, Some(Max::Unlimited));
        assert_eq!(unlimited.memory_max, Some(Max::Unlimited));
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [
            "cpu.max",
            "cpu.max=10 100000",
            "cpu.max=50000 10",
            "cpu.max=50000 100000 7",
            "memory.max=lots",
            "pids.max=0",
            "cpuset.cpus=0-",
            "cpu.weight=0",
            "blkio.weight=10",
        ] {
            assert!(Limits::parse_all(&[bad]).is_err(), "{bad} accepted");
        }
        assert!(matches!(
            Limits::parse_all(&["net.max=1"]),
            Err(CgroupError::UnknownKey(k)) if k == "net.max"
        ));
    }

    #[test]
    fn shares_and_weight_round_trip_at_the_defaults() {
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(weight_to_shares(10_000), 262_144);
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn hybrid_mountinfo_is_v1_and_pure_v2_is_v2() {
        let fake_v2 = temp("detect");
        fs::write(
            fake_v2.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let hybrid = format!(
            "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
             35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
             39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n\
             41 31 0:38 / {} rw - cgroup2 cgroup2 rw\n",
            fake_v2.display()
        );
        let h = Hierarchy::detect(&hybrid, &[Controller::Cpu]).unwrap();
        let Hierarchy::V1 { mounts } = &h else {
            panic!("hybrid read as {h:?}")
        };
        assert_eq!(
            mounts[&Controller::Memory],
            Path::new("/sys/fs/cgroup/memory")
        );
        assert!(matches!(
            Hierarchy::detect(&hybrid, &[Controller::Cpuset]),
            Err(CgroupError::ControllerMissing("cpuset"))
        ));
        let pure = format!(
            "30 1 0:26 / {} rw - cgroup2 cgroup2 rw\n",
            fake_v2.display()
        );
        let h = Hierarchy::detect(&pure, &[Controller::Memory]).unwrap();
        assert_eq!(
            h,
            Hierarchy::V2 {
                root: fake_v2.clone(),
                controllers: Controller::ALL.to_vec()
            }
        );
        // cpuset only joins when a limit asks for it.
        assert_eq!(
            h.controllers_for(&Limits::default()),
            vec![Controller::Cpu, Controller::Memory, Controller::Pids]
        );
        fs::remove_dir_all(fake_v2).unwrap();
    }

    /// The v2 writer runs against a fake tree in a temp dir: this host's own cgroup2 tree holds
    /// no controllers (hybrid layout), so the real v2 path cannot be exercised here.
    #[test]
    fn v2_writer_enables_controllers_and_writes_limits_in_a_fake_tree() {
        let root = temp("v2");
        fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::create_dir(root.join(PARENT)).unwrap();
        let h = Hierarchy::V2 {
            root: root.clone(),
            controllers: vec![Controller::Cpu, Controller::Memory, Controller::Pids],
        };
        let limits = Limits::parse_all(&[
            "cpu.cfs_quota_us=50000",
            "cpu.cfs_period_us=100000",
            "memory.limit_in_bytes=1G",
            "pids.max=max",
            "cpu.shares=1024",
        ])
        .unwrap();
        let controllers = h.controllers_for(&limits);
        let cg = create(&h, "vm-1", &controllers, &limits).unwrap();
        let leaf = root.join(PARENT).join("vm-1");
        assert_eq!(cg.dirs(), std::slice::from_ref(&leaf));
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(leaf.join("cpu.max")), "50000 100000");
        assert_eq!(read(leaf.join("memory.max")), (1u64 << 30).to_string());
        assert_eq!(read(leaf.join("pids.max")), "max");
        assert_eq!(read(leaf.join("cpu.weight")), "39");
        // Each write replaces the file in the fake tree: the last controller enabled is there.
        assert_eq!(read(root.join("cgroup.subtree_control")), "+pids");
        assert_eq!(
            read(root.join(PARENT).join("cgroup.subtree_control")),
            "+pids"
        );
        assert!(matches!(
            check_free(&h, "vm-1", &controllers),
            Err(CgroupError::AlreadyExists(_))
        ));
        // A second jail with the same id is refused and the first one's cgroup stays.
        assert!(matches!(
            create(&h, "vm-1", &controllers, &limits),
            Err(CgroupError::AlreadyExists(_))
        ));
        assert!(leaf.is_dir());
        fs::write(leaf.join("cgroup.procs"), "4242\n").unwrap();
        let busy = JailCgroups::existing(&h, "vm-1");
        assert!(matches!(busy.remove(), Err(CgroupError::Busy { pids, .. }) if pids == "4242"));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_octal(r"/a\040b"), "/a b");
        assert_eq!(unescape_octal(r"/plain"), "/plain");
    }
}
