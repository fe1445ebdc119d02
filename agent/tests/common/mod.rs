//! Helpers for the agent's integration tests: a real `edgevisor-agent` process on a scratch
//! state directory, a tiny HTTP client for its TCP and Unix endpoints, and /proc scans that
//! find the guests' `edgevisor` processes.
//!
//! The guests run the `edgevisor` binary of this workspace. It is found next to the test's
//! own target directory (`target/debug/edgevisor`), brought up to date there with
//! `cargo build -p vmm --bin edgevisor` first, or at `$EDGEVISOR_BIN` when that is set.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// The `edgevisor` binary the agent runs guests with.
pub fn edgevisor_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("EDGEVISOR_BIN") {
            return PathBuf::from(p);
        }
        // target/debug/deps/<test> -> target/debug/edgevisor
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in <target>/<profile>/deps");
        let bin = profile_dir.join("edgevisor");
        // Cargo rebuilds it only when its sources changed; it does not hold the build lock
        // while tests run. Set EDGEVISOR_BIN to skip this.
        let target_dir = profile_dir.parent().expect("target directory");
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args([
            "build",
            "-p",
            "vmm",
            "--bin",
            "edgevisor",
            "--bin",
            "edgevisor-jailer",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let built = cargo
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo build for edgevisor");
        assert!(
            built.status.success(),
            "building edgevisor failed: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let help = Command::new(&bin).args(["run", "--help"]).output().unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--api-socket"),
            "{} is older than --api-socket: rebuild it (cargo build -p vmm --bin edgevisor)",
            bin.display()
        );
        bin
    })
}

/// The `edgevisor-jailer` built beside [`edgevisor_bin`].
pub fn jailer_bin() -> PathBuf {
    edgevisor_bin().with_file_name("edgevisor-jailer")
}

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ev-agent-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer {} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw bytes and reads the whole answer (the agent closes after one).
pub fn exchange(stream: &mut (impl Read + Write), raw: &[u8]) -> Answer {
    try_exchange(stream, raw).unwrap_or_else(|text| panic!("no HTTP answer: {text:?}"))
}

/// [`exchange`], with `Err(what came back)` when that is not an HTTP answer.
pub fn try_exchange(stream: &mut (impl Read + Write), raw: &[u8]) -> Result<Answer, String> {
    let _ = stream.write_all(raw);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(String::from_utf8_lossy(&answer).into_owned());
    };
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_string();
    Ok(Answer {
        status,
        content_type,
        body: answer[split + 4..].to_vec(),
    })
}

pub fn request_bytes(method: &str, path: &str, body: &[u8], token: Option<&str>) -> Vec<u8> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: agent\r\n");
    if let Some(t) = token {
        raw.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// A running agent on a scratch state directory.
pub struct Agent {
    pub dir: Scratch,
    pub port: u16,
    child: Option<Child>,
    /// Arguments added to every launch.
    extra: Vec<std::ffi::OsString>,
}

impl Agent {
    pub fn start(tag: &str) -> Agent {
        Agent::start_with(tag, |_| Vec::new())
    }

    /// An agent launched with extra arguments, made from its scratch directory.
    pub fn start_with(tag: &str, extra: impl FnOnce(&Path) -> Vec<std::ffi::OsString>) -> Agent {
        let dir = Scratch::new(tag);
        std::fs::write(dir.0.join("token"), format!("{TOKEN}\n")).unwrap();
        let fw = Command::new(edgevisor_bin())
            .arg("firmware")
            .arg(dir.0.join("fw"))
            .output()
            .unwrap();
        assert!(fw.status.success());
        // A free port: bind, read, release (the agent binds it right after).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let extra = extra(&dir.0);
        let mut agent = Agent {
            dir,
            port,
            child: None,
            extra,
        };
        agent.launch();
        agent
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.0.join("state")
    }

    pub fn unix_path(&self) -> PathBuf {
        self.dir.0.join("agent.sock")
    }

    /// Starts the agent process and waits until it answers.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("agent.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_edgevisor-agent"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--unix")
            .arg(self.unix_path())
            .arg("--token-file")
            .arg(self.dir.0.join("token"))
            .arg("--edgevisor")
            .arg(edgevisor_bin())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn edgevisor-agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                // A listener inherited by a VM caught between fork and exec when the old
                // agent died may take the connection and close it: try again.
                let raw = request_bytes("GET", "/v1/guests", b"", Some(TOKEN));
                if try_exchange(&mut s, &raw).is_ok_and(|a| a.status == 200) {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("the agent exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent never answered: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("agent.log")).unwrap_or_default()
    }

    /// kill -9 the agent (its guests keep running).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A request over TCP with the token.
    pub fn tcp(&self, method: &str, path: &str, body: &[u8]) -> Answer {
        self.tcp_with_token(method, path, body, Some(TOKEN))
    }

    pub fn tcp_with_token(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        token: Option<&str>,
    ) -> Answer {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        exchange(&mut s, &request_bytes(method, path, body, token))
    }

    /// A request over the Unix socket (no token).
    pub fn unix(&self, method: &str, path: &str, body: &[u8]) -> Answer {
        let mut s = UnixStream::connect(self.unix_path()).expect("connect unix");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        exchange(&mut s, &request_bytes(method, path, body, None))
    }

    /// A create body for the hung probe with `mem` MiB.
    pub fn probe_guest(&self, id: &str, mem: u64) -> Vec<u8> {
        serde_json::json!({
            "id": id,
            "boot-source": {
                "kernel_image_path": self.dir.0.join("fw/linux64.elf"),
                "boot_args": "probe.exit=hang"
            },
            "machine-config": {"vcpu_count": 1, "mem_size_mib": mem}
        })
        .to_string()
        .into_bytes()
    }

    /// Creates and starts a hung probe guest; returns its document.
    pub fn run_guest(&self, id: &str) -> Value {
        let a = self.tcp("POST", "/v1/guests", &self.probe_guest(id, 16));
        assert_eq!(a.status, 201, "{}", a.text());
        let a = self.tcp("PUT", &format!("/v1/guests/{id}/start"), b"");
        assert_eq!(a.status, 200, "{}", a.text());
        a.json()
    }

    /// The guest ids the agent lists, with their states.
    pub fn states(&self) -> Vec<(String, String)> {
        let a = self.tcp("GET", "/v1/guests", b"");
        assert_eq!(a.status, 200, "{}", a.text());
        a.json()["guests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["id"].as_str().unwrap().to_string(),
                    g["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        for (pid, _) in vm_processes(&self.state_dir()) {
            // SAFETY: kill(2) on a VM process of this test's own state directory.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Live (non-zombie) `edgevisor run` processes serving guests of `state_dir`: (pid, guest id).
pub fn vm_processes(state_dir: &Path) -> Vec<(u32, String)> {
    let guests = state_dir.join("guests");
    let guests = guests.to_string_lossy();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.get(1).map(String::as_str) != Some("run") {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        let socket = args
            .iter()
            .position(|a| a == "--api-socket")
            .and_then(|i| args.get(i + 1));
        if let Some(sock) = socket.filter(|s| s.starts_with(guests.as_ref())) {
            if !zombie {
                let id = Path::new(sock)
                    .parent()
                    .and_then(Path::file_name)
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                found.push((pid, id));
            }
        }
    }
    found.sort();
    found
}

/// Waits until `f` holds (or panics after `secs`).
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
