//! The agent launches its guests through `edgevisor-jailer`, for real, as root: the VMM runs as
//! uid 65534 in its own root and cgroup, with its socket and report in the jail's /run; a
//! writable disk is the host's file (its writes land there); the agent re-adopts a jailed
//! guest after kill -9, restarts it in a fresh jail, and removes the jail on delete. A file
//! the jailed uid cannot read is refused before anything runs.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{jailer_bin, wait_until, Agent};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn jail_base(scratch: &Path) -> PathBuf {
    scratch.join("jails")
}

fn jailed_agent(tag: &str) -> Agent {
    Agent::start_with(tag, |scratch| {
        let mut args: Vec<OsString> = vec!["--jailer".into(), jailer_bin().into()];
        for a in ["--jail-uid", "65534", "--jail-gid", "65534"] {
            args.push(a.into());
        }
        args.push("--jail-base".into());
        args.push(jail_base(scratch).into());
        args.push("--jail-cgroup".into());
        args.push("pids.max=64".into());
        args
    })
}

/// Kills what is left of the guests' jailers (their VMMs die with them) and removes the
/// jails and cgroups, even when the test failed half way.
struct JailGuard {
    state: PathBuf,
    base: PathBuf,
    ids: Vec<&'static str>,
}

impl Drop for JailGuard {
    fn drop(&mut self) {
        for id in &self.ids {
            let pid_file = self.state.join("guests").join(id).join("pid");
            if let Some(pid) = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok())
            {
                // SAFETY: kill with plain integers on this test's own jailer.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            for _ in 0..100 {
                let out = Command::new(jailer_bin())
                    .args(["--id", id, "--cleanup", "--chroot-base-dir"])
                    .arg(&self.base)
                    .output();
                let busy = out.is_ok_and(|o| {
                    String::from_utf8_lossy(&o.stderr).contains("still holds process")
                });
                if !busy {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

fn field(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// The jailer's child: the VMM.
fn vmm_of(jailer: u32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{jailer}/task/{jailer}/children")).unwrap();
    let kids: Vec<u32> = children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(kids.len(), 1, "the jailer has one child, the VMM: {kids:?}");
    kids[0]
}

#[test]
fn guests_run_jailed_as_nobody_and_their_jails_follow_the_guest() {
    if !is_root() {
        eprintln!("skipped: the jailer needs root");
        return;
    }
    let mut agent = jailed_agent("jailed");
    let scratch = agent.dir.0.clone();
    let base = jail_base(&scratch);
    let _guard = JailGuard {
        state: agent.state_dir(),
        base: base.clone(),
        ids: vec!["web-1", "locked"],
    };
    // A writable disk owned by the jailed uid, on the jails' filesystem.
    let disk = scratch.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 << 10]).unwrap();
    std::os::unix::fs::chown(&disk, Some(NOBODY), Some(NOBODY)).unwrap();
    let body = serde_json::json!({
        "id": "web-1",
        "boot-source": {
            "kernel_image_path": scratch.join("fw/linux64.elf"),
            "boot_args": "probe.exit=hang"
        },
        "drives": [{"drive_id": "d0", "path_on_host": disk, "is_root_device": false, "is_read_only": false}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 16}
    });
    let a = agent.tcp("POST", "/v1/guests", body.to_string().as_bytes());
    assert_eq!(a.status, 201, "{}", a.text());
    let a = agent.tcp("PUT", "/v1/guests/web-1/start", b"");
    assert_eq!(a.status, 200, "{}\n{}", a.text(), agent.log());
    let jailer = a.json()["pid"].as_u64().unwrap() as u32;

    // The recorded process is the jailer; its child is the VMM, as nobody, in the jail.
    let cmdline = std::fs::read(format!("/proc/{jailer}/cmdline")).unwrap();
    assert!(
        cmdline.split(|b| *b == 0).any(|a| a == b"--id=web-1"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    let vmm = vmm_of(jailer);
    assert_eq!(field(vmm, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(field(vmm, "NoNewPrivs"), "1");
    let jail_root = base.join("edgevisor/web-1/root");
    let root_meta = std::fs::metadata(&jail_root).unwrap();
    let proc_root = std::fs::metadata(format!("/proc/{vmm}/root")).unwrap();
    assert_eq!(
        (proc_root.dev(), proc_root.ino()),
        (root_meta.dev(), root_meta.ino())
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{vmm}/cgroup")).unwrap();
    assert!(
        cgroups.lines().any(|l| l.ends_with("/edgevisor/web-1")),
        "{cgroups}"
    );
    // Its socket is in the jail's /run, and the agent talks to it there.
    assert!(jail_root.join("run/api.sock").exists());
    assert!(!agent.state_dir().join("guests/web-1/api.sock").exists());
    wait_until(20, "the jailed probe passed", || {
        agent
            .tcp("GET", "/v1/guests/web-1/console", b"")
            .text()
            .contains("PROBE PASS")
    });
    let doc = agent.tcp("GET", "/v1/guests/web-1", b"").json();
    assert_eq!(doc["state"], "running", "{doc}");
    // The disk is the host's file: the probe's block write landed in it.
    let written = std::fs::read(&disk).unwrap();
    assert_eq!(
        &written[512..1024],
        &firmware::block_check_pattern()[..],
        "the guest's write reached the host file"
    );
    // Metrics read the VMM's own process (not the jailer's): some MiB resident.
    let metrics = agent.tcp("GET", "/metrics", b"").text();
    let rss: f64 = metrics
        .lines()
        .find(|l| l.starts_with("edgevisor_vm_resident_memory_bytes{") && l.contains("web-1"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no RSS line for web-1 in\n{metrics}"));
    let kib = |pid: u32| -> f64 {
        let v = field(pid, "VmRSS");
        v.trim_end_matches(" kB").trim().parse::<f64>().unwrap() * 1024.0
    };
    let (vmm_rss, jailer_rss) = (kib(vmm), kib(jailer));
    assert!(
        (rss - vmm_rss).abs() < (rss - jailer_rss).abs(),
        "RSS {rss} is the VMM's ({vmm_rss}), not the jailer's ({jailer_rss})"
    );

    // kill -9 the agent: the jailed guest is adopted by the next one.
    agent.kill9();
    assert!(Path::new(&format!("/proc/{vmm}")).exists());
    agent.launch();
    let doc = agent.tcp("GET", "/v1/guests/web-1", b"").json();
    assert_eq!(doc["state"], "running", "{doc}\n{}", agent.log());
    assert_eq!(doc["pid"], jailer);

    // Stop: the exit report is read from the jail, which stays until the next start.
    let a = agent.tcp("PUT", "/v1/guests/web-1/stop", b"");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["exit"]["reason"], "stopped", "{}", a.text());
    assert!(jail_root.join("run/report.json").exists());
    // A new start gets a fresh jail.
    let a = agent.tcp("PUT", "/v1/guests/web-1/start", b"");
    assert_eq!(a.status, 200, "{}\n{}", a.text(), agent.log());
    assert!(!jail_root.join("run/report.json").exists());
    let second = a.json()["pid"].as_u64().unwrap() as u32;
    assert_ne!(second, jailer);
    let vmm2 = vmm_of(second);
    // Delete: the VM, its jail directory and its cgroup are gone.
    let a = agent.tcp("DELETE", "/v1/guests/web-1", b"");
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(!Path::new(&format!("/proc/{vmm2}")).exists() || field(vmm2, "State").starts_with('Z'));
    assert!(!base.join("edgevisor/web-1").exists());
    assert!(!Path::new("/sys/fs/cgroup/pids/edgevisor/web-1").exists());
    assert!(!Path::new("/sys/fs/cgroup/edgevisor/web-1").exists());
    assert_eq!(disk.metadata().unwrap().nlink(), 1, "the jail's link went");

    // A kernel the jailed uid cannot read: refused with a sentence, nothing made.
    let locked = scratch.join("locked.elf");
    std::fs::copy(scratch.join("fw/linux64.elf"), &locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o600)).unwrap();
    let body = serde_json::json!({
        "id": "locked",
        "boot-source": {"kernel_image_path": locked, "boot_args": "probe.exit=hang"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 16}
    });
    let a = agent.tcp("POST", "/v1/guests", body.to_string().as_bytes());
    assert_eq!(a.status, 201, "{}", a.text());
    let a = agent.tcp("PUT", "/v1/guests/locked/start", b"");
    assert_eq!(a.status, 422, "{}", a.text());
    assert!(
        a.text().contains("is not readable by uid 65534"),
        "{}",
        a.text()
    );
    assert!(!base.join("edgevisor/locked").exists());
    let doc = agent.tcp("GET", "/v1/guests/locked", b"").json();
    assert_eq!(doc["state"], "created", "{doc}");
}

#[test]
fn bad_jail_flags_are_refused_at_start() {
    let dir = common::Scratch::new("jailflags");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_edgevisor-agent"))
            .arg("--state-dir")
            .arg(dir.0.join("state"))
            .arg("--unix")
            .arg(dir.0.join("a.sock"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[
        "--jailer",
        "/nonexistent/jailer",
        "--jail-uid",
        "1",
        "--jail-gid",
        "1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--jailer /nonexistent/jailer does not exist"),
        "{err}"
    );
    let out = run(&["--jailer", "/bin/true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--jail-uid"), "{err}");
    let out = run(&[
        "--jailer",
        "/bin/true",
        "--jail-uid",
        "1",
        "--jail-gid",
        "1",
        "--jail-cgroup",
        "memory.max=lots",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--jail-cgroup"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_edgevisor-agent"))
        .args(["--state-dir", "/run/edgevisor-test-state", "--unix"])
        .arg(dir.0.join("a.sock"))
        .args([
            "--jailer",
            "/bin/true",
            "--jail-uid",
            "1",
            "--jail-gid",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is under /run or /dev"), "{err}");
    assert!(!Path::new("/run/edgevisor-test-state").exists());
    assert!(!dir.0.join("a.sock").exists(), "nothing served");
}
