//! Guest memory on hugepages bound to a NUMA node, and pinned vCPUs, checked from outside the
//! running `edgevisor` process: /proc/PID/smaps, numa_maps and each thread's Cpus_allowed_list.
//! The tests reserve 2 MiB hugepages themselves and give them back.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;
use common::*;

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tests that resize the hugepage pool run one at a time.
static POOL: Mutex<()> = Mutex::new(());
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Resizes the 2 MiB pool so that exactly `pages` pages are free (pages other processes use
/// stay theirs) with no surplus pages, and restores both settings on drop.
struct Reserved {
    nr: String,
    overcommit: String,
}

const OVERCOMMIT: &str = "/proc/sys/vm/nr_overcommit_hugepages";

impl Reserved {
    fn pages(pages: u64) -> Reserved {
        let nr = std::fs::read_to_string(NR_HUGEPAGES).expect("read nr_hugepages");
        let overcommit = std::fs::read_to_string(OVERCOMMIT).expect("read overcommit");
        std::fs::write(OVERCOMMIT, "0").expect("write nr_overcommit_hugepages (root)");
        let total: u64 = nr.trim().parse().unwrap();
        let in_use = total.saturating_sub(free_hugepages());
        std::fs::write(NR_HUGEPAGES, (in_use + pages).to_string())
            .expect("write nr_hugepages (root)");
        assert_eq!(
            free_hugepages(),
            pages,
            "could not set up {pages} free pages"
        );
        Reserved {
            nr: nr.trim().to_string(),
            overcommit: overcommit.trim().to_string(),
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, &self.nr);
        let _ = std::fs::write(OVERCOMMIT, &self.overcommit);
    }
}

/// A running `edgevisor run ... --cmdline probe.exit=hang`, stopped with SIGTERM on drop.
struct Running(Child);

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut full = vec!["run", "--cmdline", "probe.exit=hang"];
        full.extend_from_slice(args);
        let child = Command::new(env!("CARGO_BIN_EXE_edgevisor"))
            .args(&full)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let running = Running(child);
        // Guest memory is mapped (and prefaulted, when asked) before the vCPU threads start:
        // wait for the vcpu0 thread. (It pins itself once running: see `cpus_allowed`.)
        let deadline = Instant::now() + Duration::from_secs(10);
        while running.thread("vcpu0").is_none() {
            assert!(Instant::now() < deadline, "no vcpu0 thread");
            std::thread::sleep(Duration::from_millis(10));
        }
        running
    }

    fn proc_file(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.0.id())).unwrap_or_default()
    }

    /// The task directory of the thread called `comm`.
    fn thread(&self, comm: &str) -> Option<String> {
        let dir = format!("/proc/{}/task", self.0.id());
        std::fs::read_dir(dir).ok()?.flatten().find_map(|t| {
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (name.trim() == comm).then(|| t.path().display().to_string())
        })
    }

    /// The thread's Cpus_allowed_list once it is `want`, or as it is after 10 s: a vCPU
    /// thread is named when it is spawned and pins itself a moment later.
    fn cpus_allowed(&self, comm: &str, want: &str) -> String {
        let read = || {
            let status =
                std::fs::read_to_string(format!("{}/status", self.thread(comm).unwrap())).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut now = read();
        while now != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            now = read();
        }
        now
    }

    /// SIGTERM, then the exit code.
    fn stop(mut self) -> Option<i32> {
        // SAFETY: kill with a pid we spawned and have not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let code = self.0.wait().unwrap().code();
        std::mem::forget(self);
        code
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The smaps entry of the guest RAM mapping: the one exactly `size_kib` large.
fn guest_mapping(smaps: &str, size_kib: u64) -> String {
    let mut current = String::new();
    let mut found = None;
    for line in smaps.lines() {
        if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            if found.is_some() {
                break;
            }
            current.clear();
        }
        current.push_str(line);
        current.push('\n');
        if line.starts_with("Size:") && line.contains(&format!(" {size_kib} kB")) {
            found = Some(());
        }
    }
    assert!(found.is_some(), "no {size_kib} kB mapping in smaps");
    current
}

#[test]
fn hugepage_memory_is_bound_prefaulted_and_vcpus_are_pinned() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let _reserved = Reserved::pages(40);
    let vm = Running::start(&[
        "--mem",
        "64M,hugepages=2M,node=0,prefault=on",
        "--cpus",
        "1,pin=1",
    ]);
    let mapping = guest_mapping(&vm.proc_file("smaps"), 64 * 1024);
    assert!(mapping.contains("KernelPageSize:     2048 kB"), "{mapping}");
    assert!(
        mapping.contains("Private_Hugetlb:   65536 kB"),
        "prefaulted: {mapping}"
    );
    let numa_maps = vm.proc_file("numa_maps");
    let line = numa_maps
        .lines()
        .find(|l| l.contains("huge"))
        .unwrap_or_else(|| panic!("no hugepage mapping: {numa_maps}"));
    assert!(line.contains("bind:0"), "{line}");
    assert!(line.contains("dirty=32"), "{line}");
    assert_eq!(vm.cpus_allowed("vcpu0", "1"), "1");
    assert_eq!(vm.stop(), Some(8));
    // Everything was given back.
    assert_eq!(free_hugepages(), 40);
}

#[test]
fn default_memory_is_lazy_and_vcpus_float() {
    let vm = Running::start(&["--mem", "256M"]);
    let mapping = guest_mapping(&vm.proc_file("smaps"), 256 * 1024);
    assert!(mapping.contains("KernelPageSize:        4 kB"), "{mapping}");
    let rss_kib: u64 = mapping
        .lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        rss_kib < 8 * 1024,
        "the guest touched little, RSS {rss_kib} kB: {mapping}"
    );
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    assert_eq!(vm.cpus_allowed("vcpu0", online.trim()), online.trim());
    assert_eq!(vm.stop(), Some(8));
}

#[test]
fn prefault_without_hugepages_populates_every_page() {
    let vm = Running::start(&["--mem", "64M,prefault=on"]);
    let mapping = guest_mapping(&vm.proc_file("smaps"), 64 * 1024);
    assert!(mapping.contains("Rss:               65536 kB"), "{mapping}");
    assert_eq!(vm.stop(), Some(8));
}

#[test]
fn placement_errors_come_before_anything_is_mapped() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let _reserved = Reserved::pages(4);
    for (args, needle) in [
        (
            vec!["--mem", "64M,hugepages=2M"],
            "has 4 free pages, the guest needs 32",
        ),
        (
            vec!["--mem", "65M,hugepages=2M"],
            "not a multiple of the 2M",
        ),
        (vec!["--mem", "64M,hugepages=1G"], "1G"),
        (vec!["--mem", "64M,node=7"], "NUMA node 7 does not exist"),
        (vec!["--cpus", "1,pin=4095"], "not online"),
        (vec!["--cpus", "2,pin=0"], "names 1 host CPUs"),
        (vec!["--mem", "64M,color=red"], "no key \"color\""),
    ] {
        let mut full = vec!["run"];
        full.extend(args.iter().copied());
        let o = edgevisor(&full);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", show(&o));
        assert!(
            stderr(&o).contains(needle),
            "{args:?}: wanted {needle:?}: {}",
            show(&o)
        );
        assert!(
            !stdout(&o).contains("probe:"),
            "{args:?} booted: {}",
            show(&o)
        );
    }
    // The failed attempts left the pool as they found it.
    assert_eq!(free_hugepages(), 4);
}

#[test]
fn firecracker_huge_pages_maps_guest_ram_on_2m_pages() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let _reserved = Reserved::pages(40);
    let dir = Scratch::new("fchuge");
    let kernel = dir.file("vmlinux", probe("linux64"));
    let config = dir.file(
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "probe.touch=32"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "2M"}}}}"#,
            kernel.display()
        )
        .as_bytes(),
    );
    let o = edgevisor(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).contains("probe: touched 32 MiB"), "{}", show(&o));
    assert_eq!(free_hugepages(), 40);
}

#[test]
fn node_prints_the_host_topology() {
    let o = edgevisor(&["node"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    assert!(
        stdout(&o).contains(&format!("online CPUs: {}", online.trim())),
        "{}",
        show(&o)
    );
    let o = edgevisor(&["node", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!json["nodes"].as_array().unwrap().is_empty(), "{json}");
}
