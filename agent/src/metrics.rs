//! `GET /metrics`: OpenMetrics text for the node and its guests.
//!
//! The agent owns the cumulative counters: a guest's VM process starts its counters at zero
//! and loses them when it exits, so [`CounterStore`] folds successive readings of each
//! process into totals that survive a process restart (and an agent restart, through its
//! file). A lost scrape loses nothing and no counter ever goes backwards. Call
//! [`CounterStore::fold`] on every reading, including a last one just before a VM process is
//! stopped, and [`CounterStore::save`] after folding.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::capabilities::Capabilities;

/// The Content-Type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Content-Type of [`render_classic`]'s output.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// States a guest can be in; [`render`] writes 1 for the current one and 0 for the others.
pub const VM_STATES: [&str; 5] = ["created", "starting", "running", "paused", "exited"];

/// Why reading or writing the counter store failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The store file could not be read or written.
    #[error("counter store {path}: {source}; check the agent's state directory is writable")]
    Io {
        /// The store file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The store file is not the JSON the agent writes.
    #[error(
        "counter store {path} is corrupt ({source}); move it away to start counting from zero"
    )]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// One scrape's worth of data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Node-wide facts.
    pub node: NodeSample,
    /// One entry per guest.
    pub vms: Vec<VmSample>,
}

/// Node-wide facts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSample {
    /// The node's capabilities, rendered as `_info` metrics and allocatable gauges.
    pub capabilities: Option<Capabilities>,
    /// Seconds since the agent started.
    pub agent_uptime_seconds: f64,
}

/// One guest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmSample {
    /// Guest id.
    pub id: String,
    /// Observed state (one of [`VM_STATES`], or anything else the supervisor reports).
    pub state: String,
    /// Seconds from process start to the guest's first sign of life, once booted.
    pub boot_duration_seconds: Option<f64>,
    /// Resident memory of the VM process in bytes, while it runs.
    pub resident_memory_bytes: Option<u64>,
    /// VM process restarts seen by the counter store.
    pub process_restarts: u64,
    /// Cumulative counters (from [`CounterStore::fold`]).
    pub counters: VmCounters,
}

/// Counters of one VM, cumulative. The maps are keyed by device name then counter name, as
/// the VM process reports them (net: rx_bytes, tx_bytes, rx_packets, tx_packets; block:
/// read_bytes, write_bytes, requests, flushes; errors: io_errors, malformed_chains, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmCounters {
    /// CPU time of the VM process (user + system), seconds.
    pub cpu_seconds: f64,
    /// vCPU exits by reason, as the VM process names them (io_in, io_out, mmio_read,
    /// mmio_write, hlt, shutdown, system_event, internal_error, fail_entry, intr, other).
    pub exits: BTreeMap<String, u64>,
    /// Network device counters: device, counter, value.
    pub net: BTreeMap<String, BTreeMap<String, u64>>,
    /// Block device counters: device, counter, value.
    pub block: BTreeMap<String, BTreeMap<String, u64>>,
    /// Device errors: device, kind, count.
    pub errors: BTreeMap<String, BTreeMap<String, u64>>,
}

fn add_flat(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        let slot = into.entry(k.clone()).or_insert(0);
        *slot = slot.saturating_add(*v);
    }
}

fn add_nested(
    into: &mut BTreeMap<String, BTreeMap<String, u64>>,
    from: &BTreeMap<String, BTreeMap<String, u64>>,
) {
    for (k, v) in from {
        add_flat(into.entry(k.clone()).or_default(), v);
    }
}

fn flat_decreased(old: &BTreeMap<String, u64>, new: &BTreeMap<String, u64>) -> bool {
    old.iter()
        .any(|(k, v)| new.get(k).copied().unwrap_or(0) < *v)
}

fn nested_decreased(
    old: &BTreeMap<String, BTreeMap<String, u64>>,
    new: &BTreeMap<String, BTreeMap<String, u64>>,
) -> bool {
    let empty = BTreeMap::new();
    old.iter()
        .any(|(k, v)| flat_decreased(v, new.get(k).unwrap_or(&empty)))
}

impl VmCounters {
    /// Adds `other` to these counters.
    pub fn add(&mut self, other: &VmCounters) {
        self.cpu_seconds += other.cpu_seconds;
        add_flat(&mut self.exits, &other.exits);
        add_nested(&mut self.net, &other.net);
        add_nested(&mut self.block, &other.block);
        add_nested(&mut self.errors, &other.errors);
    }

    /// Whether any counter in `newer` is below its value here (the process reset them).
    pub fn decreased_in(&self, newer: &VmCounters) -> bool {
        newer.cpu_seconds < self.cpu_seconds
            || flat_decreased(&self.exits, &newer.exits)
            || nested_decreased(&self.net, &newer.net)
            || nested_decreased(&self.block, &newer.block)
            || nested_decreased(&self.errors, &newer.errors)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct VmTotals {
    incarnation: String,
    restarts: u64,
    /// Sum of the final readings of earlier incarnations.
    base: VmCounters,
    /// Latest reading of the current incarnation.
    last: VmCounters,
}

/// Folds per-process readings into per-guest totals that never go backwards.
#[derive(Debug, Default)]
pub struct CounterStore {
    path: Option<PathBuf>,
    vms: BTreeMap<String, VmTotals>,
}

impl CounterStore {
    /// A store that lives only in memory.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A store persisted at `path`, loading what an earlier agent saved there.
    pub fn open(path: &Path) -> Result<Self, MetricsError> {
        let vms = match fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| MetricsError::Corrupt {
                    path: path.to_path_buf(),
                    source,
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(MetricsError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Self {
            path: Some(path.to_path_buf()),
            vms,
        })
    }

    /// Folds `reading`, taken from the VM process identified by `incarnation` (for example
    /// "pid:start_time"), into guest `vm`'s totals and returns the new totals. A different
    /// incarnation, or a reading with any counter below the previous one, starts a new
    /// incarnation: the previous reading is kept in the totals.
    pub fn fold(&mut self, vm: &str, incarnation: &str, reading: &VmCounters) -> VmCounters {
        let totals = self.vms.entry(vm.to_string()).or_insert_with(|| VmTotals {
            incarnation: incarnation.to_string(),
            ..VmTotals::default()
        });
        if totals.incarnation != incarnation || totals.last.decreased_in(reading) {
            let last = std::mem::take(&mut totals.last);
            totals.base.add(&last);
            totals.restarts += 1;
            totals.incarnation = incarnation.to_string();
        }
        totals.last = reading.clone();
        let mut sum = totals.base.clone();
        sum.add(&totals.last);
        sum
    }

    /// Guest `vm`'s totals, if it was ever folded.
    pub fn totals(&self, vm: &str) -> Option<VmCounters> {
        self.vms.get(vm).map(|t| {
            let mut sum = t.base.clone();
            sum.add(&t.last);
            sum
        })
    }

    /// How many times guest `vm`'s VM process was replaced.
    pub fn restarts(&self, vm: &str) -> u64 {
        self.vms.get(vm).map_or(0, |t| t.restarts)
    }

    /// Forgets guest `vm` (after it is deleted).
    pub fn remove(&mut self, vm: &str) {
        self.vms.remove(vm);
    }

    /// Writes the store to its file atomically (temp file, fsync, rename); a no-op for an
    /// in-memory store.
    pub fn save(&self) -> Result<(), MetricsError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |source| MetricsError::Io {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec(&self.vms).map_err(|e| err(io::Error::other(e)))?;
        write_atomic(path, &json).map_err(err)
    }
}

/// Writes `bytes` to `path` through a temp file in the same directory, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "file".to_string(), |n| n.to_string_lossy().into_owned());
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = dir.join(format!(".{name}.tmp.{}.{unique}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// CPU time and memory of one process, from /proc.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSample {
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of stat): with the pid, it identifies
    /// one process across pid reuse.
    pub start_time_ticks: u64,
    /// utime + stime, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes (statm).
    pub resident_memory_bytes: u64,
}

impl ProcessSample {
    /// "pid:start_time", for [`CounterStore::fold`].
    pub fn incarnation(&self) -> String {
        format!("{}:{}", self.pid, self.start_time_ticks)
    }
}

/// Reads /proc/`pid`/stat and /proc/`pid`/statm.
pub fn read_process(pid: u32) -> io::Result<ProcessSample> {
    read_process_from(Path::new("/proc"), pid)
}

/// Reads `proc_root`/`pid`/stat and statm (tests point this at a recorded tree).
pub fn read_process_from(proc_root: &Path, pid: u32) -> io::Result<ProcessSample> {
    let dir = proc_root.join(pid.to_string());
    let stat = fs::read_to_string(dir.join("stat"))?;
    let statm = fs::read_to_string(dir.join("statm"))?;
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", dir.display()),
        )
    };
    // The command name (field 2) may contain spaces and ')'; fields resume after the last ')'.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| bad("stat has no ')' after the command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| bad(&format!("stat field {n} missing or not a number")))
    };
    let ticks = field(14)? + field(15)?;
    let resident_pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| bad("statm has no resident page count"))?;
    Ok(ProcessSample {
        pid,
        start_time_ticks: field(22)?,
        cpu_seconds: ticks as f64 / clock_ticks_per_second() as f64,
        resident_memory_bytes: resident_pages * page_size(),
    })
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(100)
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Escapes a label value for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Turns a device-reported counter name into a metric name part.
fn name_part(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

/// One family being written: metadata once, then its samples.
struct Family<'a> {
    out: &'a mut Out,
    sample_name: String,
    any: bool,
    header: String,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        if !self.any {
            self.out.text.push_str(&self.header);
            self.any = true;
        }
        self.out.text.push_str(&self.sample_name);
        if !labels.is_empty() {
            self.out.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.text.push(',');
                }
                let _ = write!(self.out.text, "{k}=\"{}\"", escape(v));
            }
            self.out.text.push('}');
        }
        let _ = writeln!(self.out.text, " {}", number(value));
    }
}

/// Starts a family. `kind` is counter or gauge; names ending in `_seconds` or `_bytes` get a
/// `# UNIT` line. `_info` families are gauges with the value 1 (the Prometheus convention,
/// which promtool and Prometheus' classic parser accept, unlike the OpenMetrics info type).
///
/// In the classic Prometheus text format a counter's metadata names the `_total` series
/// itself and there are no `# UNIT` lines.
fn family<'a>(out: &'a mut Out, name: &str, kind: &str, help: &str) -> Family<'a> {
    let sample_name = match kind {
        "counter" => format!("{name}_total"),
        _ => name.to_string(),
    };
    let meta_name = if out.open_metrics { name } else { &sample_name };
    let mut header = format!("# TYPE {meta_name} {kind}\n");
    for unit in ["seconds", "bytes"] {
        if out.open_metrics && name.ends_with(&format!("_{unit}")) {
            let _ = writeln!(header, "# UNIT {name} {unit}");
        }
    }
    let _ = writeln!(
        header,
        "# HELP {meta_name} {}",
        help.replace('\\', "\\\\").replace('\n', "\\n")
    );
    Family {
        out,
        sample_name,
        any: false,
        header,
    }
}

fn bool_label(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

fn render_node(out: &mut Out, node: &NodeSample) {
    let mut f = family(
        out,
        "edgevisor_agent_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
    );
    f.sample(&[], node.agent_uptime_seconds);
    let Some(caps) = &node.capabilities else {
        return;
    };
    let api = caps
        .kvm
        .api_version
        .map(|v| v.to_string())
        .unwrap_or_default();
    let max = caps
        .kvm
        .max_vcpus
        .map(|v| v.to_string())
        .unwrap_or_default();
    let mut f = family(
        out,
        "edgevisor_node_info",
        "gauge",
        "The node: board, CPU and KVM.",
    );
    f.sample(
        &[
            ("agent_version", &caps.agent_version),
            ("arch", &caps.arch),
            ("board", &caps.board.model),
            ("raspberry_pi", bool_label(caps.board.raspberry_pi)),
            ("cpu_model", &caps.cpu.model),
            ("kvm", bool_label(caps.kvm.available)),
            ("kvm_api_version", &api),
            ("kvm_max_vcpus", &max),
            ("kvm_hardware_backed", bool_label(caps.kvm.hardware_backed)),
            ("tap", bool_label(caps.network.tap)),
            ("vhost_user", bool_label(caps.network.vhost_user)),
            ("dpdk", bool_label(caps.network.dpdk)),
        ],
        1.0,
    );
    let mut f = family(
        out,
        "edgevisor_node_boot_protocol_info",
        "gauge",
        "A boot protocol this build supports.",
    );
    for p in &caps.boot_protocols {
        f.sample(&[("protocol", p)], 1.0);
    }
    let mut f = family(
        out,
        "edgevisor_node_device_info",
        "gauge",
        "A device this build can give a guest.",
    );
    for d in &caps.devices {
        f.sample(&[("device", d)], 1.0);
    }
    let mut f = family(
        out,
        "edgevisor_node_numa_node_info",
        "gauge",
        "A NUMA node and its CPUs.",
    );
    for n in &caps.numa_nodes {
        f.sample(&[("node", &n.id.to_string()), ("cpus", &n.cpus)], 1.0);
    }
    let mut f = family(
        out,
        "edgevisor_node_sriov_vfs",
        "gauge",
        "SR-IOV virtual functions a physical function supports.",
    );
    for pf in &caps.sriov {
        f.sample(&[("pf", &pf.address)], f64::from(pf.total_vfs));
    }
    let mut f = family(
        out,
        "edgevisor_node_allocatable_cpus",
        "gauge",
        "Online CPUs guests can use.",
    );
    f.sample(&[], f64::from(caps.allocatable.cpus));
    let mut f = family(
        out,
        "edgevisor_node_allocatable_memory_bytes",
        "gauge",
        "Memory available for new guests.",
    );
    f.sample(&[], caps.allocatable.memory_bytes as f64);
    let mut f = family(
        out,
        "edgevisor_node_hugepages_free",
        "gauge",
        "Free hugepages per host-wide pool.",
    );
    for pool in &caps.allocatable.hugepages {
        f.sample(
            &[("page_size_bytes", &pool.page_size_bytes.to_string())],
            pool.free as f64,
        );
    }
}

fn render_device_counters(
    out: &mut Out,
    vms: &[VmSample],
    prefix: &str,
    get: fn(&VmCounters) -> &BTreeMap<String, BTreeMap<String, u64>>,
) {
    let mut names: Vec<String> = vms
        .iter()
        .flat_map(|vm| get(&vm.counters).values().flat_map(|m| m.keys().cloned()))
        .collect();
    names.sort();
    names.dedup();
    for counter in names {
        let name = format!("edgevisor_vm_{prefix}_{}", name_part(&counter));
        let help = format!("The guest's {prefix} device counter {counter}.");
        let mut f = family(out, &name, "counter", &help);
        for vm in vms {
            for (device, map) in get(&vm.counters) {
                if let Some(v) = map.get(&counter) {
                    f.sample(&[("vm", &vm.id), ("device", device)], *v as f64);
                }
            }
        }
    }
}

fn render_vms(out: &mut Out, vms: &[VmSample]) {
    let mut f = family(
        out,
        "edgevisor_vm_state",
        "gauge",
        "1 for the guest's current state, 0 for the others.",
    );
    for vm in vms {
        for state in VM_STATES {
            f.sample(
                &[("vm", &vm.id), ("state", state)],
                f64::from(u8::from(vm.state == state)),
            );
        }
        if !VM_STATES.contains(&vm.state.as_str()) {
            f.sample(&[("vm", &vm.id), ("state", &vm.state)], 1.0);
        }
    }
    let mut f = family(
        out,
        "edgevisor_vm_boot_duration_seconds",
        "gauge",
        "Seconds from VM process start to the guest's first sign of life.",
    );
    for vm in vms {
        if let Some(s) = vm.boot_duration_seconds {
            f.sample(&[("vm", &vm.id)], s);
        }
    }
    let mut f = family(
        out,
        "edgevisor_vm_resident_memory_bytes",
        "gauge",
        "Resident memory of the VM process.",
    );
    for vm in vms {
        if let Some(b) = vm.resident_memory_bytes {
            f.sample(&[("vm", &vm.id)], b as f64);
        }
    }
    let mut f = family(
        out,
        "edgevisor_vm_cpu_seconds",
        "counter",
        "CPU time of the guest's VM processes, user plus system.",
    );
    for vm in vms {
        f.sample(&[("vm", &vm.id)], vm.counters.cpu_seconds);
    }
    let mut f = family(
        out,
        "edgevisor_vm_process_restarts",
        "counter",
        "Times the guest's VM process was replaced.",
    );
    for vm in vms {
        f.sample(&[("vm", &vm.id)], vm.process_restarts as f64);
    }
    let mut f = family(
        out,
        "edgevisor_vm_exits",
        "counter",
        "vCPU exits by reason.",
    );
    for vm in vms {
        for (reason, n) in &vm.counters.exits {
            f.sample(&[("vm", &vm.id), ("reason", reason)], *n as f64);
        }
    }
    render_device_counters(out, vms, "net", |c| &c.net);
    render_device_counters(out, vms, "block", |c| &c.block);
    let mut f = family(
        out,
        "edgevisor_vm_device_errors",
        "counter",
        "Device errors by device and kind.",
    );
    for vm in vms {
        for (device, kinds) in &vm.counters.errors {
            for (kind, n) in kinds {
                f.sample(
                    &[("vm", &vm.id), ("device", device), ("kind", kind)],
                    *n as f64,
                );
            }
        }
    }
}

/// The text being written and its format.
struct Out {
    text: String,
    open_metrics: bool,
}

fn render_as(sample: &Sample, open_metrics: bool) -> String {
    let mut out = Out {
        text: String::new(),
        open_metrics,
    };
    render_node(&mut out, &sample.node);
    render_vms(&mut out, &sample.vms);
    if open_metrics {
        out.text.push_str("# EOF\n");
    }
    out.text
}

/// Renders `sample` as OpenMetrics text (serve it with [`CONTENT_TYPE`]).
pub fn render(sample: &Sample) -> String {
    render_as(sample, true)
}

/// Renders `sample` in the classic Prometheus text format 0.0.4 (serve it with
/// [`CLASSIC_CONTENT_TYPE`]) for scrapers and tools that do not speak OpenMetrics, such as
/// `promtool check metrics`. Same series and values as [`render`].
pub fn render_classic(sample: &Sample) -> String {
    render_as(sample, false)
}

/// Picks the format for a scrape from its Accept header: OpenMetrics when the scraper asks
/// for it, else the classic text format. Returns the Content-Type and the body.
pub fn negotiate(accept: Option<&str>, sample: &Sample) -> (&'static str, String) {
    match accept {
        Some(a) if a.contains("application/openmetrics-text") => (CONTENT_TYPE, render(sample)),
        _ => (CLASSIC_CONTENT_TYPE, render_classic(sample)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(cpu: f64, io_exits: u64, rx: u64) -> VmCounters {
        let mut c = VmCounters {
            cpu_seconds: cpu,
            ..VmCounters::default()
        };
        c.exits.insert("io".into(), io_exits);
        c.net
            .entry("eth0".into())
            .or_default()
            .insert("rx_bytes".into(), rx);
        c
    }

    #[test]
    fn fold_survives_process_restart() {
        let mut store = CounterStore::in_memory();
        let t = store.fold("a", "1:10", &reading(1.0, 5, 100));
        assert_eq!(t.exits["io"], 5);
        let t = store.fold("a", "1:10", &reading(2.0, 8, 150));
        assert_eq!(t.exits["io"], 8);
        // New process: counters restart at zero, totals keep going.
        let t = store.fold("a", "2:20", &reading(0.5, 3, 10));
        assert_eq!(t.exits["io"], 11);
        assert_eq!(t.net["eth0"]["rx_bytes"], 160);
        assert!((t.cpu_seconds - 2.5).abs() < 1e-9);
        assert_eq!(store.restarts("a"), 1);
    }

    #[test]
    fn fold_treats_a_reset_as_restart() {
        let mut store = CounterStore::in_memory();
        store.fold("a", "1:10", &reading(1.0, 5, 100));
        let t = store.fold("a", "1:10", &reading(1.0, 2, 100));
        assert_eq!(t.exits["io"], 7);
        assert_eq!(store.restarts("a"), 1);
    }

    #[test]
    fn store_persists() {
        let dir = std::env::temp_dir().join(format!("agentobs-store-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("counters.json");
        let mut store = CounterStore::open(&path).unwrap();
        store.fold("a", "1:10", &reading(1.0, 5, 100));
        store.save().unwrap();
        let mut again = CounterStore::open(&path).unwrap();
        let t = again.fold("a", "2:20", &reading(0.0, 1, 1));
        assert_eq!(t.exits["io"], 6);
        fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            CounterStore::open(&path),
            Err(MetricsError::Corrupt { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn render_names_and_escapes() {
        let sample = Sample {
            node: NodeSample::default(),
            vms: vec![VmSample {
                id: "we\"ird\\id".into(),
                state: "running".into(),
                counters: reading(1.5, 7, 42),
                ..VmSample::default()
            }],
        };
        let text = render(&sample);
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE edgevisor_vm_exits counter\n"));
        assert!(text.contains("edgevisor_vm_exits_total{vm=\"we\\\"ird\\\\id\",reason=\"io\"} 7\n"));
        assert!(text.contains("# UNIT edgevisor_vm_cpu_seconds seconds\n"));
        assert!(text.contains("edgevisor_vm_cpu_seconds_total{vm=\"we\\\"ird\\\\id\"} 1.5\n"));
        assert!(text.contains(
            "edgevisor_vm_net_rx_bytes_total{vm=\"we\\\"ird\\\\id\",device=\"eth0\"} 42\n"
        ));
        assert!(text.contains("state=\"running\"} 1\n"));
        assert!(text.contains("state=\"paused\"} 0\n"));
    }

    #[test]
    fn negotiation_follows_accept() {
        let sample = Sample::default();
        let (ct, body) = negotiate(
            Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
            &sample,
        );
        assert_eq!(ct, CONTENT_TYPE);
        assert!(body.ends_with("# EOF\n"));
        let (ct, body) = negotiate(Some("text/plain"), &sample);
        assert_eq!(ct, CLASSIC_CONTENT_TYPE);
        assert!(!body.contains("# EOF"));
        assert_eq!(negotiate(None, &sample).0, CLASSIC_CONTENT_TYPE);
    }

    #[test]
    fn read_own_process() {
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 300 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let p = read_process(std::process::id()).unwrap();
        assert!(p.cpu_seconds > 0.1, "cpu {}", p.cpu_seconds);
        assert!(p.resident_memory_bytes > 1 << 20);
        assert!(p.start_time_ticks > 0);
        assert!(read_process(u32::MAX).is_err());
    }

    #[test]
    fn stat_with_paren_in_name() {
        let dir = std::env::temp_dir().join(format!("agentobs-proc-{}", std::process::id()));
        let p = dir.join("7");
        fs::create_dir_all(&p).unwrap();
        let mut stat = String::from("7 (a) b) S");
        for n in 4..=52 {
            let v = match n {
                14 => 200,
                15 => 100,
                22 => 4242,
                _ => 0,
            };
            let _ = write!(stat, " {v}");
        }
        fs::write(p.join("stat"), stat).unwrap();
        fs::write(p.join("statm"), "100 10 0 0 0 0 0\n").unwrap();
        let s = read_process_from(&dir, 7).unwrap();
        assert_eq!(s.start_time_ticks, 4242);
        assert!((s.cpu_seconds - 300.0 / clock_ticks_per_second() as f64).abs() < 1e-9);
        assert_eq!(s.resident_memory_bytes, 10 * page_size());
        fs::remove_dir_all(&dir).unwrap();
    }
}
