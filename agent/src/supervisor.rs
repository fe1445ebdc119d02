//! The guests: one `edgevisor run` process each, their desired state on disk, and
//! re-adoption after an agent restart.
//!
//! Every operation writes the desired state before it acts, so an agent killed at any
//! point finds on restart what it was doing and finishes it ([`Supervisor::load`]): a start
//! whose VM never came up is started, a stop or delete is completed, a live VM is adopted
//! (pid plus start time, or the pid file the VM's process wrote itself plus its command
//! line), and a VM that ended while the agent was away is reported with its exit reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::jail::{JailError, JailOptions};
use crate::metrics::{self, CounterStore, MetricsError, VmCounters, VmSample};
use crate::process::{self, SpawnError};
use crate::sampling;
use crate::store::{self, Desired, DesiredState, GuestDir, RuntimeRecord, Store, StoreError};

/// How long a VM's control socket may take to answer.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a started VM may take to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped VM may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Most console bytes `GET .../console` returns (the end of the log).
pub const CONSOLE_TAIL: u64 = 1 << 20;

/// What an API call can fail with; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No guest by that id.
    #[error("no guest has the id {0:?}: list the guests with GET /v1/guests")]
    NoSuchGuest(String),
    /// The id is taken.
    #[error(
        "a guest with the id {0:?} exists already: choose another id or delete that guest first"
    )]
    GuestExists(String),
    /// The request is not acceptable as sent.
    #[error("{0}")]
    BadRequest(String),
    /// The guest is not in a state that allows the operation.
    #[error("guest {id:?} is {state}: {hint}")]
    Conflict {
        /// The guest.
        id: String,
        /// Its state.
        state: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// The VM process ended while starting.
    #[error("guest {id:?} did not start: {detail}")]
    StartFailed {
        /// The guest.
        id: String,
        /// The end of its console log.
        detail: String,
        /// Whether the VMM refused the input (exit code 2).
        bad_input: bool,
    },
    /// The VM's control socket failed.
    #[error("guest {id:?}: {source}")]
    Vm {
        /// The guest.
        id: String,
        /// The socket error.
        #[source]
        source: vmm::api::ApiError,
    },
    /// State on disk could not be written or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The VM process could not be spawned.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The metrics counter store could not be read or written.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The guest cannot be started through the jailer.
    #[error("guest {id:?} cannot run in a jail: {source}")]
    Jail {
        /// The guest.
        id: String,
        /// Why.
        #[source]
        source: JailError,
    },
}

impl AgentError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            AgentError::NoSuchGuest(_) => 404,
            AgentError::GuestExists(_) | AgentError::Conflict { .. } => 409,
            AgentError::BadRequest(_) => 400,
            AgentError::StartFailed { bad_input, .. } => {
                if *bad_input {
                    422
                } else {
                    500
                }
            }
            AgentError::Vm { .. } => 502,
            AgentError::Jail { source, .. } => match source {
                JailError::Write { .. } | JailError::Cleanup(_) => 500,
                _ => 422,
            },
            AgentError::Store(_) | AgentError::Spawn(_) | AgentError::Metrics(_) => 500,
        }
    }
}

/// A VM process of a guest.
struct VmProcess {
    record: RuntimeRecord,
    /// Set when this agent spawned it (then we reap it); `None` for an adopted VM.
    child: Option<Child>,
}

/// One guest.
struct Guest {
    id: String,
    dir: GuestDir,
    config: Value,
    desired: Desired,
    vm: Option<VmProcess>,
    /// How the last run ended.
    last_exit: Option<Value>,
    /// Whether that run ended while no agent was watching.
    ended_unwatched: bool,
    /// Set once deleted: holders of a stale handle must not touch it.
    deleted: bool,
}

/// How the supervisor starts VMs.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The edgevisor binary.
    pub edgevisor: PathBuf,
    /// Run it through `edgevisor-jailer` with these options.
    pub jail: Option<JailOptions>,
}

/// All guests of one state directory.
pub struct Supervisor {
    store: Store,
    /// How VMs are started: the edgevisor binary, and the jailer when guests are jailed.
    launcher: Launcher,
    guests: Mutex<BTreeMap<String, Arc<Mutex<Guest>>>>,
    /// Cumulative counters per guest, kept across VM and agent restarts.
    counters: Mutex<CounterStore>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The last `n` lines of a console log, for error messages.
fn console_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// How a run ended: from its exit report, or from what we know of the process.
fn exit_info(dir: &GuestDir, status: Option<ExitStatus>) -> Value {
    if let Ok(Some(report)) = store::read_json::<Value>(&dir.report()) {
        return json!({
            "reason": report["exit"]["reason"],
            "detail": report["exit"],
            "exit_code": report["exit_code"],
            "message": report["message"],
            "timings": report["timings"],
            "boot": report["boot"],
        });
    }
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) if s.signal().is_some() => json!({
            "reason": "killed",
            "exit_code": null,
            "message": format!("the edgevisor process was killed by signal {} before it wrote an exit report", s.signal().unwrap_or(0)),
        }),
        Some(s) if s.code() == Some(2) => json!({
            "reason": "setup-error",
            "exit_code": 2,
            "message": format!("edgevisor refused the guest: {}", console_tail(&dir.console(), 2)),
        }),
        Some(s) => json!({
            "reason": "no-report",
            "exit_code": s.code(),
            "message": "the edgevisor process ended without writing an exit report",
        }),
        None => json!({
            "reason": "vanished",
            "exit_code": null,
            "message": "the edgevisor process ended without an exit report while the agent was not watching it (killed?)",
        }),
    }
}

impl Guest {
    /// Notices a VM that has ended; returns true if it just did.
    fn reap(&mut self) -> bool {
        let Some(vm) = &mut self.vm else {
            return false;
        };
        let ended = match &mut vm.child {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(Some(status)),
                Ok(None) => None,
                Err(_) => Some(None),
            },
            None => (!process::alive(vm.record.pid, vm.record.start_time)).then_some(None),
        };
        let Some(status) = ended else {
            return false;
        };
        self.last_exit = Some(exit_info(&self.dir, status));
        self.vm = None;
        // The VM removes its socket on a clean exit; a killed one leaves it behind.
        let _ = store::remove_if_present(&self.dir.socket());
        true
    }

    fn write_desired(&mut self, state: DesiredState, generation: u64) -> Result<(), StoreError> {
        let desired = Desired { state, generation };
        store::write_json(&self.dir.desired(), &desired)?;
        self.desired = desired;
        Ok(())
    }

    fn call(&self, method: &str, route: &str) -> Result<Value, AgentError> {
        let vm_err = |source| AgentError::Vm {
            id: self.id.clone(),
            source,
        };
        let (status, doc) =
            vmm::api::call(&self.dir.socket(), method, route, SOCKET_TIMEOUT).map_err(vm_err)?;
        if status == 200 {
            Ok(doc)
        } else {
            Err(vm_err(vmm::api::ApiError::BadAnswer {
                path: self.dir.socket(),
                detail: format!("{method} {route} answered {status}: {doc}"),
            }))
        }
    }

    fn not_running(&self) -> AgentError {
        AgentError::Conflict {
            id: self.id.clone(),
            state: if self.last_exit.is_some() {
                "exited"
            } else {
                "created"
            },
            hint: "start it first with PUT /v1/guests/ID/start",
        }
    }

    /// Spawns the VM for a new generation and waits until its socket answers.
    fn start(&mut self, launcher: &Launcher) -> Result<(), AgentError> {
        let (program, args) = match &launcher.jail {
            None => (&launcher.edgevisor, process::direct_args(&self.dir)),
            Some(jail) => {
                let jail_err = |source| AgentError::Jail {
                    id: self.id.clone(),
                    source,
                };
                // The previous run's jail (kept for its report) goes first.
                jail.cleanup(&self.id).map_err(jail_err)?;
                let args = jail
                    .prepare(&launcher.edgevisor, &self.id, &self.dir, &self.config)
                    .map_err(jail_err)?;
                (&jail.jailer, args)
            }
        };
        self.write_desired(DesiredState::Running, self.desired.generation + 1)?;
        self.dir.clear_run_files()?;
        self.last_exit = None;
        self.ended_unwatched = false;
        let generation = self.desired.generation;
        let child = process::spawn_vm(program, &args, &self.dir, generation)?;
        let pid = child.id();
        let start_time = process::proc_stat(pid).map(|s| s.start_time).unwrap_or(0);
        let record = RuntimeRecord {
            pid,
            start_time,
            generation,
        };
        self.vm = Some(VmProcess {
            record,
            child: Some(child),
        });
        store::write_json(&self.dir.runtime(), &record)?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), AgentError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.reap() {
                let exit = self.last_exit.clone().unwrap_or(Value::Null);
                return Err(AgentError::StartFailed {
                    id: self.id.clone(),
                    detail: exit["message"].as_str().unwrap_or("it exited").to_string(),
                    bad_input: exit["exit_code"] == 2,
                });
            }
            if self.call("GET", "/state").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(AgentError::StartFailed {
                    id: self.id.clone(),
                    detail: format!(
                        "its control socket did not answer within {} s; it keeps running: stop or delete it",
                        START_TIMEOUT.as_secs()
                    ),
                    bad_input: false,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The argument that tells this guest's VM process apart in /proc/PID/cmdline: its socket
    /// path, or for a jailed guest its jailer's `--id=`.
    fn cmdline_marker(&self) -> std::ffi::OsString {
        if self.dir.1.is_some() {
            JailOptions::cmdline_marker(&self.id)
        } else {
            self.dir.socket().into_os_string()
        }
    }

    /// Stops the VM: through its socket, then SIGKILL if it does not end in time (a jailer
    /// killed so takes its VMM with it).
    fn stop_vm(&mut self) {
        if self.vm.is_none() {
            return;
        }
        let _ = self.call("PUT", "/stop");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !self.reap() {
            if Instant::now() > deadline {
                if let Some(vm) = &mut self.vm {
                    process::kill_if_same(vm.record.pid, vm.record.start_time);
                    if let Some(child) = &mut vm.child {
                        let _ = child.wait();
                    }
                }
                self.reap();
                if let Some(vm) = &self.vm {
                    // Not ours any more (the pid was reused) or unkillable: forget it.
                    eprintln!(
                        "edgevisor-agent: guest {}: VM process {} did not end",
                        self.id, vm.record.pid
                    );
                    self.vm = None;
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Observed state and the VM's document (live state, or the exit report's parts).
    fn observe(&mut self) -> (String, Option<Value>) {
        self.reap();
        if self.vm.is_some() {
            return match self.call("GET", "/state") {
                Ok(doc) => (
                    doc["state"].as_str().unwrap_or("unknown").to_string(),
                    Some(doc),
                ),
                Err(_) => ("starting".to_string(), None),
            };
        }
        match &self.last_exit {
            Some(_) => ("exited".to_string(), None),
            None => ("created".to_string(), None),
        }
    }

    fn document(&mut self) -> Value {
        let (state, vm) = self.observe();
        let exit = self.last_exit.clone();
        let pick = |key: &str| {
            vm.as_ref()
                .map(|d| d[key].clone())
                .or_else(|| exit.as_ref().map(|e| e[key].clone()))
                .unwrap_or(Value::Null)
        };
        json!({
            "id": self.id,
            "state": state,
            "desired": self.desired.state.name(),
            "generation": self.desired.generation,
            "pid": self.vm.as_ref().map(|v| v.record.pid),
            "config": self.config,
            "boot": pick("boot"),
            "timings": pick("timings"),
            "counters": vm.as_ref().map(|d| d["counters"].clone()),
            "exit": exit,
            "ended_while_agent_was_away": self.ended_unwatched,
        })
    }

    /// One reading of the live VM's counters, with its process identity; `None` when no
    /// VM runs or it does not answer. `state` is a `GET /state` document already fetched.
    fn reading(&self, state: Option<&Value>) -> Option<(String, VmCounters, Option<u64>)> {
        let vm = self.vm.as_ref()?;
        let fetched;
        let state = match state {
            Some(s) => s,
            None => {
                fetched = self.call("GET", "/state").ok()?;
                &fetched
            }
        };
        // The VMM's own pid: for a jailed guest, record.pid is its jailer.
        let pid = state["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(vm.record.pid);
        let process = metrics::read_process(pid).ok();
        let incarnation = format!("{}:{}", vm.record.pid, vm.record.start_time);
        let rss = process.map(|p| p.resident_memory_bytes);
        Some((incarnation, sampling::reading(state, process.as_ref()), rss))
    }
}

/// Parses a create request: a JSON object with "id" and a Firecracker-style config.
fn parse_create(body: &[u8]) -> Result<(String, Value), AgentError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        AgentError::BadRequest(format!(
            "the request body is not valid JSON ({e}): send a Firecracker-style config object with an \"id\""
        ))
    })?;
    let Value::Object(mut map) = value else {
        return Err(AgentError::BadRequest(
            "the request body is not a JSON object: send a Firecracker-style config object with an \"id\"".into(),
        ));
    };
    let id = match map.remove("id") {
        Some(Value::String(id)) => id,
        Some(_) => return Err(AgentError::BadRequest("\"id\" is not a string".into())),
        None => {
            return Err(AgentError::BadRequest(
                "the request body has no \"id\": add one (letters, digits, '-', '_', '.')".into(),
            ))
        }
    };
    if !store::valid_id(&id) {
        return Err(AgentError::BadRequest(format!(
            "guest id {id:?} is not valid: use 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )));
    }
    let config = Value::Object(map);
    vmm::VmConfig::from_firecracker_json(&config.to_string(), Path::new("<request body>"))
        .map_err(|e| AgentError::BadRequest(e.to_string()))?;
    Ok((id, config))
}

impl Supervisor {
    /// A supervisor of the guests in `store`, run with the `edgevisor` binary.
    /// Its cumulative counters live in `STATE/counters.json`.
    pub fn new(store: Store, edgevisor: PathBuf) -> Result<Supervisor, AgentError> {
        Supervisor::with_launcher(
            store,
            Launcher {
                edgevisor,
                jail: None,
            },
        )
    }

    /// A supervisor that starts VMs as `launcher` says; with a jail, `store` must have been
    /// given the same jail base ([`Store::with_jail_base`]).
    pub fn with_launcher(store: Store, launcher: Launcher) -> Result<Supervisor, AgentError> {
        let counters = CounterStore::open(&store.root().join("counters.json"))?;
        Ok(Supervisor {
            store,
            launcher,
            guests: Mutex::new(BTreeMap::new()),
            counters: Mutex::new(counters),
        })
    }

    /// Folds a last reading of the guest's VM into its totals before the VM goes away.
    fn fold_final(&self, guest: &Guest) {
        if let Some((incarnation, reading, _)) = guest.reading(None) {
            let mut counters = lock(&self.counters);
            counters.fold(&guest.id, &incarnation, &reading);
            let _ = counters.save();
        }
    }

    fn guest(&self, id: &str) -> Result<Arc<Mutex<Guest>>, AgentError> {
        lock(&self.guests)
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NoSuchGuest(id.to_string()))
    }

    /// Runs `f` on a guest under its lock, after noticing an ended VM.
    fn with_guest<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Guest) -> Result<T, AgentError>,
    ) -> Result<T, AgentError> {
        let handle = self.guest(id)?;
        let mut guest = lock(&handle);
        if guest.deleted {
            return Err(AgentError::NoSuchGuest(id.to_string()));
        }
        guest.reap();
        f(&mut guest)
    }

    /// Reads every guest from disk, adopts live VMs, finishes interrupted operations and
    /// reports VMs that ended while no agent ran. Returns one line per notable finding.
    pub fn load(&self) -> Result<Vec<String>, AgentError> {
        let mut notes = Vec::new();
        for id in self.store.guest_ids()? {
            let dir = self.store.guest(&id);
            let (desired, config) = match (dir.read_desired(), store::read_json(&dir.config())) {
                (Ok(d), Ok(Some(c))) => (d, c),
                (Err(e), _) | (_, Err(e)) => {
                    notes.push(format!("guest {id}: skipped: {e}"));
                    continue;
                }
                (_, Ok(None)) => {
                    notes.push(format!("guest {id}: skipped: it has no config.json"));
                    continue;
                }
            };
            let mut guest = Guest {
                id: id.clone(),
                dir,
                config,
                desired,
                vm: None,
                last_exit: None,
                ended_unwatched: false,
                deleted: false,
            };
            let recorded = self.adopt(&mut guest);
            if let Some(note) = self.converge(&mut guest, recorded)? {
                notes.push(note);
            }
            if !guest.deleted {
                lock(&self.guests).insert(id, Arc::new(Mutex::new(guest)));
            }
        }
        Ok(notes)
    }

    /// Finds the guest's VM process; returns the generation of the last recorded start.
    fn adopt(&self, guest: &mut Guest) -> Option<u64> {
        let dir = &guest.dir;
        let runtime: Option<RuntimeRecord> = store::read_json(&dir.runtime()).ok().flatten();
        let record = match (runtime, dir.read_pid_file()) {
            (Some(r), _) => Some(r),
            // The agent died between spawn and runtime.json: trust the pid only if that
            // process is an edgevisor serving this guest's socket.
            (None, Some((pid, generation))) => process::proc_stat(pid)
                .filter(|_| process::execs_with(pid, &guest.cmdline_marker()))
                .map(|stat| RuntimeRecord {
                    pid,
                    start_time: stat.start_time,
                    generation,
                })
                .or(Some(RuntimeRecord {
                    pid,
                    start_time: u64::MAX,
                    generation,
                })),
            (None, None) => None,
        }?;
        if process::alive(record.pid, record.start_time) {
            let _ = store::write_json(&dir.runtime(), &record);
            guest.vm = Some(VmProcess {
                record,
                child: None,
            });
        } else {
            guest.last_exit = Some(exit_info(dir, None));
            guest.ended_unwatched = true;
            let _ = store::remove_if_present(&dir.socket());
        }
        Some(record.generation)
    }

    /// Brings an adopted guest to its desired state.
    fn converge(
        &self,
        guest: &mut Guest,
        recorded: Option<u64>,
    ) -> Result<Option<String>, AgentError> {
        let id = guest.id.clone();
        let alive = guest.vm.is_some();
        Ok(match guest.desired.state {
            DesiredState::Deleted => {
                guest.stop_vm();
                self.remove_jail(&id);
                self.forget_counters(&id);
                self.store.remove_guest(&id)?;
                guest.deleted = true;
                Some(format!("guest {id}: finished its deletion"))
            }
            DesiredState::Stopped if alive => {
                guest.stop_vm();
                Some(format!("guest {id}: finished stopping it"))
            }
            DesiredState::Running | DesiredState::Paused
                if !alive && recorded.is_none_or(|g| g < guest.desired.generation) =>
            {
                // The agent died before the VM of this start was spawned.
                let result = guest.start(&self.launcher);
                if result.is_ok() && guest.desired.state == DesiredState::Paused {
                    let _ = guest.call("PUT", "/pause");
                }
                Some(match result {
                    Ok(()) => format!("guest {id}: finished starting it"),
                    Err(e) => format!("guest {id}: could not finish starting it: {e}"),
                })
            }
            DesiredState::Paused if alive => {
                let _ = guest.call("PUT", "/pause");
                Some(format!("guest {id}: adopted (paused)"))
            }
            DesiredState::Running if alive => {
                // A resume may have been cut short.
                let _ = guest.call("PUT", "/resume");
                Some(format!("guest {id}: adopted (running)"))
            }
            _ if guest.ended_unwatched => Some(format!(
                "guest {id}: its VM ended while the agent was away: {}",
                guest
                    .last_exit
                    .as_ref()
                    .and_then(|e| e["message"].as_str())
                    .unwrap_or("no report")
            )),
            _ => None,
        })
    }

    /// `POST /v1/guests`.
    pub fn create(&self, body: &[u8]) -> Result<Value, AgentError> {
        let (id, config) = parse_create(body)?;
        let desired = Desired {
            state: DesiredState::Stopped,
            generation: 0,
        };
        let mut guests = lock(&self.guests);
        if guests.contains_key(&id) || self.store.guest(&id).0.exists() {
            return Err(AgentError::GuestExists(id));
        }
        let dir = self.store.create_guest(&id, &config, &desired)?;
        let mut guest = Guest {
            id: id.clone(),
            dir,
            config,
            desired,
            vm: None,
            last_exit: None,
            ended_unwatched: false,
            deleted: false,
        };
        let doc = guest.document();
        guests.insert(id, Arc::new(Mutex::new(guest)));
        Ok(doc)
    }

    /// `PUT /v1/guests/ID/start`.
    pub fn start(&self, id: &str) -> Result<Value, AgentError> {
        self.with_guest(id, |g| {
            if g.vm.is_some() {
                return Err(AgentError::Conflict {
                    id: id.to_string(),
                    state: "running",
                    hint: "stop it first, or resume it if it is paused",
                });
            }
            g.start(&self.launcher)?;
            Ok(g.document())
        })
    }

    /// `PUT /v1/guests/ID/stop`.
    pub fn stop(&self, id: &str) -> Result<Value, AgentError> {
        self.with_guest(id, |g| {
            if g.vm.is_none() {
                return Err(g.not_running());
            }
            g.write_desired(DesiredState::Stopped, g.desired.generation)?;
            self.fold_final(g);
            g.stop_vm();
            Ok(g.document())
        })
    }

    /// `PUT /v1/guests/ID/pause` (`pause = true`) or `.../resume`.
    pub fn pause_or_resume(&self, id: &str, pause: bool) -> Result<Value, AgentError> {
        self.with_guest(id, |g| {
            if g.vm.is_none() {
                return Err(g.not_running());
            }
            let (state, route) = if pause {
                (DesiredState::Paused, "/pause")
            } else {
                (DesiredState::Running, "/resume")
            };
            g.write_desired(state, g.desired.generation)?;
            g.call("PUT", route)?;
            Ok(g.document())
        })
    }

    /// `DELETE /v1/guests/ID`: stops its VM and removes its files.
    pub fn delete(&self, id: &str) -> Result<Value, AgentError> {
        let doc = self.with_guest(id, |g| {
            g.write_desired(DesiredState::Deleted, g.desired.generation)?;
            g.stop_vm();
            self.remove_jail(id);
            self.store.remove_guest(id)?;
            self.forget_counters(id);
            g.deleted = true;
            Ok(json!({ "id": id, "deleted": true, "exit": g.last_exit }))
        })?;
        lock(&self.guests).remove(id);
        Ok(doc)
    }

    /// `GET /v1/guests/ID`.
    pub fn get(&self, id: &str) -> Result<Value, AgentError> {
        self.with_guest(id, |g| Ok(g.document()))
    }

    fn handles(&self) -> Vec<Arc<Mutex<Guest>>> {
        lock(&self.guests).values().cloned().collect()
    }

    /// `GET /v1/guests`.
    pub fn list(&self) -> Value {
        let docs: Vec<Value> = self
            .handles()
            .into_iter()
            .filter_map(|h| {
                let mut g = lock(&h);
                (!g.deleted).then(|| g.document())
            })
            .collect();
        json!({ "guests": docs })
    }

    /// `GET /v1/guests/ID/console`: the end of the console log (at most [`CONSOLE_TAIL`]).
    pub fn console(&self, id: &str) -> Result<Vec<u8>, AgentError> {
        use std::io::{Read, Seek, SeekFrom};
        self.with_guest(id, |g| {
            let path = g.dir.console();
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(_) => return Ok(Vec::new()),
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_TAIL)));
            let mut bytes = Vec::new();
            file.take(CONSOLE_TAIL)
                .read_to_end(&mut bytes)
                .map_err(|source| StoreError::Io {
                    what: "read",
                    path,
                    source,
                })?;
            Ok(bytes)
        })
    }

    /// Removes a deleted guest's jail, if guests are jailed.
    fn remove_jail(&self, id: &str) {
        if let Some(jail) = &self.launcher.jail {
            if let Err(e) = jail.cleanup(id) {
                eprintln!("edgevisor-agent: guest {id}: {e}");
            }
        }
    }

    fn forget_counters(&self, id: &str) {
        let mut counters = lock(&self.counters);
        counters.remove(id);
        let _ = counters.save();
    }

    /// One metrics sample per guest: state, boot time, memory, and cumulative counters
    /// (a fresh reading of each live VM is folded in first).
    pub fn vm_samples(&self) -> Vec<VmSample> {
        let mut samples = Vec::new();
        for handle in self.handles() {
            let mut g = lock(&handle);
            if g.deleted {
                continue;
            }
            let (state, doc) = g.observe();
            let timings = doc
                .as_ref()
                .map(|d| d["timings"].clone())
                .or_else(|| g.last_exit.as_ref().map(|e| e["timings"].clone()))
                .unwrap_or(Value::Null);
            let live = doc.as_ref().and_then(|d| g.reading(Some(d)));
            let mut counters = lock(&self.counters);
            let (totals, rss) = match live {
                Some((incarnation, reading, rss)) => {
                    (counters.fold(&g.id, &incarnation, &reading), rss)
                }
                None => (counters.totals(&g.id).unwrap_or_default(), None),
            };
            samples.push(VmSample {
                id: g.id.clone(),
                state,
                boot_duration_seconds: sampling::boot_seconds(&timings),
                resident_memory_bytes: rss,
                process_restarts: counters.restarts(&g.id),
                counters: totals,
            });
        }
        let _ = lock(&self.counters).save();
        samples
    }

    /// Notices VMs that ended (and reaps the agent's own children); returns a line for each.
    pub fn poll_exits(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for handle in self.handles() {
            // A busy guest is being handled by a request, which reaps it itself.
            let Ok(mut g) = handle.try_lock() else {
                continue;
            };
            if !g.deleted && g.reap() {
                let message = g
                    .last_exit
                    .as_ref()
                    .and_then(|e| e["message"].as_str())
                    .unwrap_or("")
                    .to_string();
                notes.push(format!("guest {}: VM ended: {message}", g.id));
            }
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_bodies_are_checked_before_anything_is_written() {
        let ok = br#"{"id": "a1", "boot-source": {"kernel_image_path": "/k"}}"#;
        let (id, config) = parse_create(ok).unwrap();
        assert_eq!(id, "a1");
        assert!(config.get("id").is_none());
        let cases: [(&[u8], &str); 6] = [
            (b"{", "not valid JSON"),
            (b"[]", "not a JSON object"),
            (br#"{"boot-source": {"kernel_image_path": "/k"}}"#, "no \"id\""),
            (br#"{"id": "../x", "boot-source": {"kernel_image_path": "/k"}}"#, "not valid"),
            (br#"{"id": "a", "boot-source": {"kernel_image_path": "/k"}, "bogus": 1}"#, "bogus"),
            (br#"{"id": "a", "boot-source": {"kernel_image_path": "/k"}, "machine-config": {"mem_size_mib": 0}}"#, "zero"),
        ];
        for (body, needle) in cases {
            let e = parse_create(body).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains(needle), "{e}");
        }
    }
}
