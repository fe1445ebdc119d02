//! The agent's state on disk: one runtime directory per guest, written so that a crash at
//! any point leaves either the old or the new version of each file.
//!
//! ```text
//! STATE/agent.lock                 flock(2)ed by the running agent (one agent per state dir)
//! STATE/guests/ID/config.json      the guest's Firecracker-style config, as created
//! STATE/guests/ID/desired.json     {"state": "running", "generation": 3}: written before acting
//! STATE/guests/ID/pid              "PID GENERATION", written by the edgevisor child itself
//!                                  between fork and exec, so a spawned VM is never unrecorded
//! STATE/guests/ID/runtime.json     {"pid", "start_time", "generation"}, written after spawn
//! STATE/guests/ID/api.sock         the VM's control socket (vmm::api)
//! STATE/guests/ID/report.json      the VM's exit report (edgevisor run --report)
//! STATE/guests/ID/console.log      the VM's stdout and stderr
//! ```
//! A guest is created in `guests/.new-ID` and renamed into place; a deleted one is renamed
//! to `guests/.gone-ID` before its files are removed. Leftovers of both are removed at start.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory operation failed.
    #[error(
        "cannot {what} {path}: {source}; check that the state directory is writable and not full"
    )]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A state file is not what the agent wrote.
    #[error("state file {path} is damaged ({detail}): remove the guest's directory by hand if it cannot be repaired")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

/// What the control plane asked a guest to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    /// Defined, not running.
    Stopped,
    /// Running.
    Running,
    /// Running with its vCPUs parked.
    Paused,
    /// Being deleted.
    Deleted,
}

impl DesiredState {
    /// Name used in documents.
    pub fn name(self) -> &'static str {
        match self {
            DesiredState::Stopped => "stopped",
            DesiredState::Running => "running",
            DesiredState::Paused => "paused",
            DesiredState::Deleted => "deleted",
        }
    }
}

/// `desired.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    /// Desired state.
    pub state: DesiredState,
    /// Incremented by every start: tells a VM of this start from one of an earlier start.
    pub generation: u64,
}

/// `runtime.json`: the edgevisor process of one start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeRecord {
    /// Process id.
    pub pid: u32,
    /// Field 22 of /proc/PID/stat (clock ticks after boot): tells it from a reused pid.
    pub start_time: u64,
    /// The start it belongs to.
    pub generation: u64,
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(bytes).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
    sync_dir(dir)
}

/// fsyncs a directory, so renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Writes `value` as JSON atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Damaged {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    write_atomic(path, &text)
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Damaged {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

/// Removes a file, ignoring "not found".
pub fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// The files of one guest: its directory, and where its VM's socket and report are when that
/// is elsewhere (the jail's `/run` for a jailed guest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDir(pub PathBuf, pub Option<PathBuf>);

impl GuestDir {
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    /// `desired.json`.
    pub fn desired(&self) -> PathBuf {
        self.0.join("desired.json")
    }
    /// `pid`.
    pub fn pid_file(&self) -> PathBuf {
        self.0.join("pid")
    }
    /// `runtime.json`.
    pub fn runtime(&self) -> PathBuf {
        self.0.join("runtime.json")
    }
    /// `api.sock`, in the run directory.
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("api.sock")
    }
    /// `report.json`, in the run directory.
    pub fn report(&self) -> PathBuf {
        self.run_dir().join("report.json")
    }
    /// `jail-config.json`: the config a jailed VMM reads.
    pub fn jail_config(&self) -> PathBuf {
        self.0.join("jail-config.json")
    }
    /// Where the VM's socket and report are: the jail's `/run` or the guest directory.
    pub fn run_dir(&self) -> &Path {
        self.1.as_deref().unwrap_or(&self.0)
    }
    /// `console.log`.
    pub fn console(&self) -> PathBuf {
        self.0.join("console.log")
    }

    /// Reads `desired.json`.
    pub fn read_desired(&self) -> Result<Desired, StoreError> {
        read_json(&self.desired())?.ok_or_else(|| StoreError::Damaged {
            path: self.desired(),
            detail: "missing".into(),
        })
    }

    /// Reads `pid` ("PID GENERATION"); `None` when absent or unreadable.
    pub fn read_pid_file(&self) -> Option<(u32, u64)> {
        let text = std::fs::read_to_string(self.pid_file()).ok()?;
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let generation = words.next()?.parse().ok()?;
        Some((pid, generation))
    }

    /// Removes what one run of the VM leaves behind, before the next run.
    pub fn clear_run_files(&self) -> Result<(), StoreError> {
        for path in [
            self.pid_file(),
            self.runtime(),
            self.report(),
            self.socket(),
        ] {
            remove_if_present(&path)?;
        }
        Ok(())
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// The jail base when guests run through the jailer.
    jail_base: Option<PathBuf>,
}

impl Store {
    /// Opens (creating) `root` and its `guests` directory.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let guests = root.join("guests");
        std::fs::create_dir_all(&guests).map_err(io_err("create", &guests))?;
        Ok(Store {
            root: root.to_path_buf(),
            jail_base: None,
        })
    }

    /// Guests run in jails under `base`: their sockets and reports are in the jails' `/run`.
    pub fn with_jail_base(mut self, base: Option<PathBuf>) -> Store {
        self.jail_base = base;
        self
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn guests(&self) -> PathBuf {
        self.root.join("guests")
    }

    /// A guest's directory (which may not exist).
    pub fn guest(&self, id: &str) -> GuestDir {
        let run = self.jail_base.as_ref().map(|base| {
            vmm::jail::jail_dir(base, &crate::jail::jail_id(id))
                .join("root")
                .join("run")
        });
        GuestDir(self.guests().join(id), run)
    }

    /// Creates a guest's directory with its config and desired state in one rename.
    pub fn create_guest(
        &self,
        id: &str,
        config: &serde_json::Value,
        desired: &Desired,
    ) -> Result<GuestDir, StoreError> {
        let tmp = GuestDir(self.guests().join(format!(".new-{id}")), None);
        let _ = std::fs::remove_dir_all(&tmp.0);
        std::fs::create_dir(&tmp.0).map_err(io_err("create", &tmp.0))?;
        write_json(&tmp.config(), config)?;
        write_json(&tmp.desired(), desired)?;
        let dir = self.guest(id);
        std::fs::rename(&tmp.0, &dir.0).map_err(io_err("rename into place", &dir.0))?;
        sync_dir(&self.guests())?;
        Ok(dir)
    }

    /// Removes a guest's directory: renamed away first, so a crash leaves no half guest.
    pub fn remove_guest(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.guest(id);
        let gone = self.guests().join(format!(".gone-{id}"));
        let _ = std::fs::remove_dir_all(&gone);
        std::fs::rename(&dir.0, &gone).map_err(io_err("rename away", &dir.0))?;
        sync_dir(&self.guests())?;
        std::fs::remove_dir_all(&gone).map_err(io_err("remove", &gone))
    }

    /// Ids of the guests on disk; removes leftovers of interrupted creations and deletions.
    pub fn guest_ids(&self) -> Result<Vec<String>, StoreError> {
        let guests = self.guests();
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&guests).map_err(io_err("list", &guests))? {
            let entry = entry.map_err(io_err("list", &guests))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".new-") || name.starts_with(".gone-") {
                let _ = std::fs::remove_dir_all(entry.path());
            } else if entry.path().is_dir() {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }
}

/// Whether `id` is a usable guest id: 1 to 64 of `[A-Za-z0-9_.-]`, starting with a letter
/// or digit (so it is a safe single path component).
pub fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_single_safe_path_components() {
        for ok in ["a", "vm-1", "A.b_c", &"x".repeat(64)] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-a",
            "a/b",
            "a b",
            "é",
            &"x".repeat(65),
            ".new-a",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn guests_are_created_listed_and_removed_atomically() {
        let root = std::env::temp_dir().join(format!("agent-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = Store::open(&root).unwrap();
        let desired = Desired {
            state: DesiredState::Stopped,
            generation: 0,
        };
        let dir = store
            .create_guest("g1", &serde_json::json!({"a": 1}), &desired)
            .unwrap();
        assert_eq!(dir.read_desired().unwrap(), desired);
        // Leftovers of a crash in the middle of a creation or deletion vanish.
        std::fs::create_dir_all(root.join("guests/.new-g2")).unwrap();
        std::fs::create_dir_all(root.join("guests/.gone-g3")).unwrap();
        assert_eq!(store.guest_ids().unwrap(), vec!["g1".to_string()]);
        assert!(!root.join("guests/.new-g2").exists());
        std::fs::write(dir.pid_file(), "123 7\n").unwrap();
        assert_eq!(dir.read_pid_file(), Some((123, 7)));
        store.remove_guest("g1").unwrap();
        assert!(store.guest_ids().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }
}
