//! Guests launched through `edgevisor-jailer` (`edgevisor-agent --jailer PATH`).
//!
//! Each start runs `edgevisor-jailer --id=JID ... -- run --config CONFIG --api-socket
//! /run/api.sock --report /run/report.json`. The jailer forks, waits for the VMM and forwards
//! signals; its pid is the one the agent records, and a jailer killed outright takes the VMM
//! with it. Inside the jail:
//! - the VMM's api socket and exit report live in the jail's `/run`, which the agent reaches at
//!   `BASE/edgevisor/JID/root/run/`;
//! - the config is `jail-config.json` in the guest's directory, passed with `--file` (so it
//!   keeps its host path) and owned by the jailed uid; it is the guest's config with the vsock
//!   socket moved into `/run` (its host path is then `BASE/edgevisor/JID/root/run/NAME`);
//! - the kernel, initrd and disks are passed with `--file` and keep their host paths. Before
//!   anything runs, the agent checks that the jailed uid can read them (and write the writable
//!   disks), and that a writable disk is on the jail's filesystem: elsewhere the jailer would
//!   copy it and the guest's writes would land in a copy removed with the jail.
//!
//! The jail of a run stays until the next start or the guest's deletion, which run
//! `edgevisor-jailer --id=JID --cleanup`.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::store::GuestDir;

/// Where the VMM's control socket is inside the jail.
pub const JAIL_SOCKET: &str = "/run/api.sock";
/// Where the VMM writes its exit report inside the jail.
pub const JAIL_REPORT: &str = "/run/report.json";

/// How long `--cleanup` is retried while the killed VMM leaves its cgroups.
const CLEANUP_WAIT: Duration = Duration::from_secs(5);

/// How the agent runs the jailer.
#[derive(Debug, Clone)]
pub struct JailOptions {
    /// The `edgevisor-jailer` binary.
    pub jailer: PathBuf,
    /// The uid and gid the VMM drops to.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// The jailer's `--chroot-base-dir`.
    pub base: PathBuf,
    /// `--cgroup KEY=VALUE` settings given to every guest.
    pub cgroups: Vec<String>,
}

/// Why a guest cannot be started in a jail; each names the input and what to do.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The stored config does not parse (it did when the guest was created).
    #[error("the guest's config cannot be read for the jail: {0}")]
    Config(String),
    /// A path in the config is relative: inside the jail it would name something else.
    #[error("{what} {path} is a relative path; jailed guests need absolute paths")]
    Relative {
        /// Which file.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A file the VMM needs is not accessible to the jailed uid.
    #[error("{what} {path} is not {access} by uid {uid} (gid {gid}), which jailed VMMs run as: change its owner or mode")]
    Access {
        /// Which file.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// "readable" or "writable".
        access: &'static str,
        /// The jailed uid.
        uid: u32,
        /// The jailed gid.
        gid: u32,
    },
    /// A writable disk on another filesystem than the jails.
    #[error("disk {path} is writable but not on the filesystem of the jail base {base}: the jail would hold a copy and the guest's writes would be lost; move it there or make it read-only")]
    OtherFilesystem {
        /// The disk.
        path: PathBuf,
        /// The jail base.
        base: PathBuf,
    },
    /// A file is missing.
    #[error("{what} {path} cannot be read: {source}")]
    Missing {
        /// Which file.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the jail config failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The previous run's jail could not be removed.
    #[error("the previous jail of this guest could not be removed: {0}")]
    Cleanup(String),
}

/// The jailer id of a guest: the guest id when the jailer accepts it (letters, digits and
/// dashes), else its safe characters plus a hash of the whole id, so ids stay distinct.
pub fn jail_id(guest_id: &str) -> String {
    if vmm::jail::valid_id(guest_id) {
        return guest_id.to_string();
    }
    let safe: String = guest_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(47)
        .collect();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in guest_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{safe}-{hash:016x}")
}

impl JailOptions {
    /// The argument that tells this guest's jailer apart in /proc/PID/cmdline.
    pub fn cmdline_marker(guest_id: &str) -> OsString {
        format!("--id={}", jail_id(guest_id)).into()
    }

    /// Checks the config's files for the jailed uid, writes `jail-config.json` and returns
    /// the jailer's arguments for a start of this guest.
    pub fn prepare(
        &self,
        edgevisor: &Path,
        guest_id: &str,
        dir: &GuestDir,
        config: &Value,
    ) -> Result<Vec<OsString>, JailError> {
        let parsed = vmm::VmConfig::from_firecracker_json(&config.to_string(), &dir.config())
            .map_err(|e| JailError::Config(e.to_string()))?;
        let mut files: Vec<PathBuf> = Vec::new();
        if let vmm::config::KernelSource::Path(p) = &parsed.kernel {
            self.check_file("kernel", p, false)?;
            files.push(p.clone());
        }
        if let Some(p) = &parsed.initrd {
            self.check_file("initrd", p, false)?;
            files.push(p.clone());
        }
        for disk in &parsed.disks {
            self.check_file("disk", &disk.path, !disk.readonly)?;
            if !disk.readonly && !same_filesystem(&disk.path, &self.base) {
                return Err(JailError::OtherFilesystem {
                    path: disk.path.clone(),
                    base: self.base.clone(),
                });
            }
            if !files.contains(&disk.path) {
                files.push(disk.path.clone());
            }
        }
        let jail_config = dir.jail_config();
        let bytes = serde_json::to_vec_pretty(&jailed_config(config)).unwrap_or_default();
        crate::store::write_atomic(&jail_config, &bytes).map_err(|e| JailError::Write {
            path: jail_config.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        std::os::unix::fs::chown(&jail_config, Some(self.uid), Some(self.gid)).map_err(
            |source| JailError::Write {
                path: jail_config.clone(),
                source,
            },
        )?;
        files.push(jail_config.clone());

        let mut args: Vec<OsString> = vec![
            format!("--id={}", jail_id(guest_id)).into(),
            flag("--exec-file=", edgevisor),
            format!("--uid={}", self.uid).into(),
            format!("--gid={}", self.gid).into(),
            flag("--chroot-base-dir=", &self.base),
            if parsed.nets.is_empty() {
                "--dev=kvm".into()
            } else {
                "--dev=kvm,tun".into()
            },
        ];
        args.extend(self.cgroups.iter().map(|c| format!("--cgroup={c}").into()));
        args.extend(files.iter().map(|f| flag("--file=", f)));
        args.extend(
            [
                "--",
                "run",
                "--config",
                &jail_config.to_string_lossy(),
                "--api-socket",
                JAIL_SOCKET,
                "--report",
                JAIL_REPORT,
            ]
            .map(OsString::from),
        );
        Ok(args)
    }

    /// Removes the guest's jail directory and cgroups when there are any, waiting a moment
    /// for a VMM that was just killed to leave its cgroups.
    pub fn cleanup(&self, guest_id: &str) -> Result<(), JailError> {
        let deadline = Instant::now() + CLEANUP_WAIT;
        loop {
            match vmm::jail::cleanup(&jail_id(guest_id), &self.base) {
                Ok(_) | Err(vmm::jail::JailError::NothingToClean { .. }) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(JailError::Cleanup(e.to_string()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Whether uid/gid may read (and, with `write`, write) `path`, judged from its mode.
    fn check_file(&self, what: &'static str, path: &Path, write: bool) -> Result<(), JailError> {
        if path.is_relative() {
            return Err(JailError::Relative {
                what,
                path: path.to_path_buf(),
            });
        }
        let meta = std::fs::metadata(path).map_err(|source| JailError::Missing {
            what,
            path: path.to_path_buf(),
            source,
        })?;
        let mode = meta.mode();
        let shift = if meta.uid() == self.uid {
            6
        } else if meta.gid() == self.gid {
            3
        } else {
            0
        };
        let bits = (mode >> shift) & 0o7;
        let denied = |access| JailError::Access {
            what,
            path: path.to_path_buf(),
            access,
            uid: self.uid,
            gid: self.gid,
        };
        // Root keeps its access whatever the mode; so does a VMM left root.
        if self.uid != 0 {
            if bits & 0o4 == 0 {
                return Err(denied("readable"));
            }
            if write && bits & 0o2 == 0 {
                return Err(denied("writable"));
            }
        }
        Ok(())
    }
}

/// `prefix` followed by `path`, as one argument.
fn flag(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path.as_os_str());
    s
}

/// The config a jailed VMM gets: the vsock socket moves into the jail's `/run`.
pub fn jailed_config(config: &Value) -> Value {
    let mut config = config.clone();
    if let Some(uds) = config.get_mut("vsock").and_then(|v| v.get_mut("uds_path")) {
        let name = uds
            .as_str()
            .and_then(|p| Path::new(p).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vsock.sock".into());
        *uds = Value::String(format!("/run/{name}"));
    }
    config
}

/// Whether `path` and `base` (or its nearest existing ancestor) are on one filesystem.
fn same_filesystem(path: &Path, base: &Path) -> bool {
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let base_dev = base.ancestors().find_map(dev);
    dev(path).is_some() && dev(path) == base_dev
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jail_ids_are_the_guest_id_or_a_distinct_safe_form() {
        assert_eq!(jail_id("web-1"), "web-1");
        let a = jail_id("web_1");
        let b = jail_id("web.1");
        assert!(
            vmm::jail::valid_id(&a) && vmm::jail::valid_id(&b),
            "{a} {b}"
        );
        assert_ne!(a, b);
        assert!(a.starts_with("web-1-"));
        let long = jail_id(&format!("{}_", "a".repeat(63)));
        assert!(vmm::jail::valid_id(&long), "{long}");
    }

    #[test]
    fn vsock_socket_moves_into_the_jail_run_dir() {
        let config = json!({"vsock": {"guest_cid": 3, "uds_path": "/var/lib/x/v.sock"}, "machine-config": {}});
        let jailed = jailed_config(&config);
        assert_eq!(jailed["vsock"]["uds_path"], "/run/v.sock");
        assert_eq!(jailed["vsock"]["guest_cid"], 3);
        assert_eq!(jailed["machine-config"], json!({}));
        let none = json!({"boot-source": {}});
        assert_eq!(jailed_config(&none), none);
    }

    #[test]
    fn files_are_checked_for_the_jailed_uid() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("agent-jail-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("disk.img");
        std::fs::write(&f, b"x").unwrap();
        let opts = JailOptions {
            jailer: "/bin/false".into(),
            uid: 65534,
            gid: 65534,
            base: dir.clone(),
            cgroups: vec![],
        };
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        opts.check_file("disk", &f, false).unwrap();
        let err = opts.check_file("disk", &f, true).unwrap_err().to_string();
        assert!(err.contains("not writable by uid 65534"), "{err}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = opts
            .check_file("kernel", &f, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not readable"), "{err}");
        let err = opts
            .check_file("kernel", Path::new("rel/vmlinux"), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("relative path"), "{err}");
        assert!(same_filesystem(&f, &dir.join("not/yet/there")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
