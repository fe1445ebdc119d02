//! `edgevisor-jailer` for real, as root: the built-in probe boots inside a jail (own mount
//! namespace and root, cgroup v1 limits on this hybrid host, rlimits, a network namespace,
//! uid/gid 65534, empty environment); bad inputs leave nothing behind; cleanup removes the jail.
//! Every test uses its own id and chroot base, and a guard removes leftovers even on failure.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const JAILER: &str = env!("CARGO_BIN_EXE_edgevisor-jailer");
const EDGEVISOR: &str = env!("CARGO_BIN_EXE_edgevisor");

/// The cgroup v1 controllers mounted on this host (hybrid layout).
const V1: [&str; 3] = ["cpu", "memory", "pids"];

/// One test's jail id and chroot base; on drop kills what is left in the jail's cgroups and
/// removes the cgroups and the base directory.
struct Jail {
    id: String,
    base: PathBuf,
}

impl Jail {
    fn new(tag: &str) -> Jail {
        let id = format!("jt-{tag}-{}", std::process::id());
        let base = std::env::temp_dir().join(format!("edgevisor-jailer-{id}"));
        let _ = std::fs::remove_dir_all(&base);
        Jail { id, base }
    }

    fn dir(&self) -> PathBuf {
        self.base.join("edgevisor").join(&self.id)
    }

    fn root(&self) -> PathBuf {
        self.dir().join("root")
    }

    fn cgroup(&self, controller: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("edgevisor")
            .join(&self.id)
    }

    fn cgroup_exists(&self) -> bool {
        V1.iter()
            .chain(["cpuset"].iter())
            .any(|c| self.cgroup(c).exists())
    }

    fn pids(&self) -> Vec<i32> {
        let procs = std::fs::read_to_string(self.cgroup("pids").join("cgroup.procs"));
        procs
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// The jailer's arguments up to the VMM's: id, exec file, base, then `extra`.
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--id".into(),
            self.id.clone(),
            "--exec-file".into(),
            EDGEVISOR.into(),
            "--chroot-base-dir".into(),
            self.base.display().to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    /// A scratch directory next to the base for the test's own inputs (removed on drop).
    fn scratch(&self) -> PathBuf {
        let d = self.base.with_extension("scratch");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn cleanup(&self) -> Output {
        Command::new(JAILER)
            .args(["--id", &self.id, "--cleanup", "--chroot-base-dir"])
            .arg(&self.base)
            .output()
            .unwrap()
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for p in pids {
                // SAFETY: kill with plain integers; the pid is in this test's own cgroup.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for c in V1.iter().chain(["cpuset"].iter()) {
            let _ = std::fs::remove_dir(self.cgroup(c));
        }
        let _ = std::fs::remove_dir_all(&self.base);
        let _ = std::fs::remove_dir_all(self.base.with_extension("scratch"));
    }
}

/// A network namespace made with `ip netns add`, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new(name: String) -> NetNs {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip (iproute2) is installed");
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
        NetNs(name)
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn jailer(args: &[String]) -> Output {
    Command::new(JAILER)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Reads the child's stdout until a line contains `want`; panics after 15 s.
fn wait_for_line(child: &mut Child, want: &str) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(want) => return rx,
            Ok(_) => {}
            Err(e) => panic!("no line with {want:?} from the jailed VMM: {e}"),
        }
    }
}

fn proc_file(pid: i32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{name}")).unwrap()
}

fn status_field(pid: i32, field: &str) -> String {
    proc_file(pid, "status")
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

#[test]
fn probe_boots_in_a_jail_and_cleanup_removes_it() {
    let jail = Jail::new("boot");
    let out = jailer(&jail.args(&["--cgroup", "cpuset.cpus=0", "--", "run"]));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("PROBE PASS"),
        "{}",
        show(&out)
    );
    // The jail holds a root-owned, read-only-for-others copy of the VMM, /dev/kvm and no more.
    let copy = std::fs::metadata(jail.root().join("edgevisor")).unwrap();
    assert_eq!((copy.uid(), copy.permissions().mode() & 0o777), (0, 0o755));
    assert_eq!(copy.len(), std::fs::metadata(EDGEVISOR).unwrap().len());
    assert_ne!(
        copy.ino(),
        std::fs::metadata(EDGEVISOR).unwrap().ino(),
        "a copy"
    );
    let kvm = std::fs::metadata(jail.root().join("dev/kvm")).unwrap();
    assert_eq!(kvm.rdev(), libc::makedev(10, 232));
    assert!(!jail.root().join("dev/net/tun").exists());
    assert!(!jail.root().join("etc").exists());
    for c in V1 {
        assert!(jail.cgroup(c).is_dir(), "cgroup {c} made");
    }
    // A v1 cpuset takes tasks only with cpus and mems set: cpus as asked, mems inherited.
    let cpuset = |f: &str| std::fs::read_to_string(jail.cgroup("cpuset").join(f)).unwrap();
    assert_eq!(cpuset("cpuset.cpus").trim(), "0");
    assert!(!cpuset("cpuset.mems").trim().is_empty());

    let out = jail.cleanup();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(!jail.dir().exists());
    assert!(!jail.cgroup_exists());
    // Nothing left to clean: a clear error.
    let out = jail.cleanup();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no jail with id"));
}

#[test]
fn jailed_vmm_is_nobody_in_its_root_cgroup_netns_and_limits() {
    let jail = Jail::new("sandbox");
    let netns = NetNs::new(format!("{}-ns", jail.id));
    let scratch = jail.scratch();
    let extra = scratch.join("disk.img");
    std::fs::write(&extra, b"disk contents").unwrap();
    let netns_arg = netns.path().display().to_string();
    let extra_arg = extra.display().to_string();
    let args = jail.args(&[
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--netns",
        &netns_arg,
        "--cgroup",
        "cpu.max=50000 100000",
        "--cgroup",
        "memory.max=256M",
        "--cgroup",
        "pids.max=64",
        "--resource-limit",
        "no-file=1024",
        "--resource-limit",
        "fsize=64M",
        "--file",
        &extra_arg,
        "--dev",
        "kvm,tun",
        "--",
        "run",
        "--cmdline",
        "probe.exit=hang",
    ]);
    let mut child = Command::new(JAILER)
        .args(&args)
        .env("JAILER_TEST_SECRET", "must-not-leak")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The guest booted as uid 65534: /dev/kvm in the jail is usable by it.
    let _lines = wait_for_line(&mut child, "PROBE PASS");
    let pids = jail.pids();
    assert_eq!(pids.len(), 1, "one process in the jail's cgroup: {pids:?}");
    let pid = pids[0];
    assert_ne!(pid, child.id() as i32, "the VMM is the jailer's child");

    assert_eq!(status_field(pid, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(pid, "Gid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(pid, "Groups"), "");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(proc_file(pid, "environ"), "", "empty environment");

    // Its root is the jail root (same inode), holding the extra file at its host path.
    let proc_root = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let jail_root = std::fs::metadata(jail.root()).unwrap();
    assert_eq!(
        (proc_root.dev(), proc_root.ino()),
        (jail_root.dev(), jail_root.ino())
    );
    let inside = Path::new(&format!("/proc/{pid}/root")).join(extra.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(inside).unwrap(), b"disk contents");
    assert!(!Path::new(&format!("/proc/{pid}/root/etc")).exists());
    let tun = std::fs::metadata(jail.root().join("dev/net/tun")).unwrap();
    assert_eq!((tun.rdev(), tun.uid()), (libc::makedev(10, 200), 65534));

    // Its cgroups are edgevisor/<id>, with the limits mapped onto cgroup v1.
    let cgroups = proc_file(pid, "cgroup");
    for c in V1 {
        let want = format!(":{c}:/edgevisor/{}", jail.id);
        assert!(
            cgroups.lines().any(|l| l.ends_with(&want)),
            "{want} in\n{cgroups}"
        );
    }
    let read = |c: &str, f: &str| {
        std::fs::read_to_string(jail.cgroup(c).join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (256u64 << 20).to_string()
    );
    assert_eq!(read("pids", "pids.max"), "64");

    let limits = proc_file(pid, "limits");
    let line = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert!(line("Max open files").contains("1024 1024"), "{limits}");
    assert!(
        line("Max file size").contains(&format!("{0} {0}", 64u64 << 20)),
        "{limits}"
    );

    let ns_of = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        ns_of(Path::new(&format!("/proc/{pid}/ns/net"))),
        ns_of(&netns.path())
    );
    assert_ne!(
        ns_of(Path::new(&format!("/proc/{pid}/ns/mnt"))),
        ns_of(Path::new("/proc/self/ns/mnt"))
    );

    assert_eq!(std::fs::metadata(&extra).unwrap().nlink(), 2, "hard-linked");

    // Cleanup is refused while the VM runs, and removes nothing.
    let out = jail.cleanup();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&pid.to_string()));
    assert!(jail.root().join("edgevisor").exists());

    // SIGTERM to the jailer reaches the VMM, which stops (exit code 8) and the jailer says so.
    // SAFETY: kill with plain integers on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(8));
    let out = jail.cleanup();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(!jail.dir().exists() && !jail.cgroup_exists());
    // The host's file stays; only the jail's link to it went.
    assert_eq!(std::fs::metadata(&extra).unwrap().nlink(), 1);
}

#[test]
fn a_killed_jailer_takes_its_vmm_with_it() {
    let jail = Jail::new("orphan");
    let args = jail.args(&[
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--cgroup",
        "pids.max=64",
        "--",
        "run",
        "--cmdline",
        "probe.exit=hang",
    ]);
    let mut child = Command::new(JAILER)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _lines = wait_for_line(&mut child, "PROBE PASS");
    let pids = jail.pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let vmm = pids[0];
    // SIGKILL cannot be forwarded: the VMM must still not outlive the jailer.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{vmm}")).exists() {
        assert!(
            Instant::now() < deadline,
            "VMM {vmm} still runs after its jailer was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(jail.pids().is_empty());
    // With nothing left in the jail, cleanup succeeds.
    let out = jail.cleanup();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
}

#[test]
fn daemonize_prints_the_pid_and_detaches() {
    let jail = Jail::new("daemon");
    let out = jailer(&jail.args(&["--daemonize", "--", "run", "--cmdline", "probe.exit=hang"]));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(jail.pids(), vec![pid]);
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap(),
        Path::new("/dev/null")
    );
    // Its own session: the session id is its pid.
    let stat = proc_file(pid, "stat");
    let after_comm = stat.rsplit_once(')').unwrap().1;
    let sid: i32 = after_comm
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(sid, pid);
    // Stays root without --uid (documented), but in the jail.
    assert_eq!(status_field(pid, "Uid"), "0\t0\t0\t0");
    assert_eq!(proc_file(pid, "environ"), "");
}

#[test]
fn bad_inputs_fail_with_one_sentence_and_leave_nothing_behind() {
    let jail = Jail::new("bad");
    let scratch = jail.scratch();
    let not_exec = scratch.join("plain");
    std::fs::write(&not_exec, b"x").unwrap();
    let dir = scratch.display().to_string();
    let plain = not_exec.display().to_string();
    let base = jail.base.display().to_string();
    let long_id = "a".repeat(65);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--id", "../evil", "--exec-file", EDGEVISOR], "--id"),
        (vec!["--id", &long_id, "--exec-file", EDGEVISOR], "--id"),
        (
            vec!["--id", &jail.id, "--exec-file", "/nonexistent/edgevisor"],
            "--exec-file",
        ),
        (vec!["--id", &jail.id, "--exec-file", &dir], "regular file"),
        (vec!["--id", &jail.id, "--exec-file", &plain], "executable"),
        (
            vec![
                "--id",
                &jail.id,
                "--exec-file",
                EDGEVISOR,
                "--cgroup",
                "net.max=1",
            ],
            "net.max",
        ),
        (
            vec![
                "--id",
                &jail.id,
                "--exec-file",
                EDGEVISOR,
                "--cgroup",
                "memory.max=lots",
            ],
            "memory.max",
        ),
        (
            vec![
                "--id",
                &jail.id,
                "--exec-file",
                EDGEVISOR,
                "--resource-limit",
                "files=3",
            ],
            "files",
        ),
        (
            vec![
                "--id",
                &jail.id,
                "--exec-file",
                EDGEVISOR,
                "--file",
                "/nonexistent.img",
            ],
            "--file",
        ),
        (
            vec!["--id", &jail.id, "--exec-file", EDGEVISOR, "--file", &dir],
            "regular file",
        ),
        (
            vec!["--id", &jail.id, "--exec-file", EDGEVISOR, "--dev", "gpu"],
            "--dev",
        ),
        (
            vec![
                "--id",
                &jail.id,
                "--exec-file",
                EDGEVISOR,
                "--netns",
                &plain,
            ],
            "network namespace",
        ),
        (
            vec!["--id", &jail.id, "--exec-file", EDGEVISOR, "--uid", "1000"],
            "--gid",
        ),
        (
            vec![
                "--id",
                &jail.id,
                "--exec-file",
                EDGEVISOR,
                "--uid",
                "x",
                "--gid",
                "1",
            ],
            "--uid",
        ),
    ];
    for (args, names) in cases {
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend(["--chroot-base-dir".to_string(), base.clone()]);
        let out = jailer(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        assert!(err.contains(names), "{args:?}: {err}");
        assert!(
            !jail.base.exists(),
            "{args:?} created {}",
            jail.base.display()
        );
        assert!(!jail.cgroup_exists(), "{args:?} created a cgroup");
    }
    let out = jailer(&[
        "--id".into(),
        jail.id.clone(),
        "--exec-file".into(),
        EDGEVISOR.into(),
        "--chroot-base-dir".into(),
        "relative/base".into(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(!Path::new("relative").exists());

    // A jail directory that exists already (another jail with this id) is left alone.
    std::fs::create_dir_all(jail.dir()).unwrap();
    std::fs::write(jail.dir().join("marker"), b"other jail").unwrap();
    let out = jailer(&jail.args(&["--", "run"]));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert!(jail.dir().join("marker").exists());
    assert!(!jail.cgroup_exists());
    std::fs::remove_dir_all(&jail.base).unwrap();
}

#[test]
fn a_failed_exec_removes_the_jail_and_its_cgroups() {
    let jail = Jail::new("noexec");
    let scratch = jail.scratch();
    // A script whose interpreter is not in the jail: the exec fails inside it.
    let script = scratch.join("vmm.sh");
    std::fs::write(&script, b"#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = jailer(&[
        "--id".into(),
        jail.id.clone(),
        "--exec-file".into(),
        script.display().to_string(),
        "--chroot-base-dir".into(),
        jail.base.display().to_string(),
        "--cgroup".into(),
        "pids.max=8".into(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exec /vmm.sh"), "{err}");
    assert!(!jail.dir().exists(), "jail dir removed");
    assert!(!jail.cgroup_exists(), "cgroups removed");
}
