//! Booting the L1 guest: QEMU with TCG and an emulated AMD EPYC with SVM and nested paging, so
//! the guest's `kvm_amd` gives it a complete `/dev/kvm`.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::script::{parse_step, DONE_MARKER};
use super::{env_flag, env_path, tail, NestedError, Result, StepOutput};

/// How many serial lines an error message quotes.
const TAIL_LINES: usize = 60;

/// What to boot under QEMU.
#[derive(Debug, Clone)]
pub struct L1Spec {
    /// The bzImage.
    pub kernel: PathBuf,
    /// The initramfs (newc cpio).
    pub initramfs: PathBuf,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// The kernel command line.
    pub cmdline: String,
    /// QEMU is killed when it runs longer than this.
    pub timeout: Duration,
    /// The QEMU binary (`EDGEVISOR_QEMU` or `qemu-system-x86_64`).
    pub qemu: PathBuf,
    /// More QEMU arguments (a machine type, devices), after the standard ones.
    pub extra_args: Vec<String>,
}

impl L1Spec {
    /// 1 GiB of RAM, `console=ttyS0 quiet panic=-1`, a 180 s limit.
    pub fn new(kernel: PathBuf, initramfs: PathBuf) -> L1Spec {
        L1Spec {
            kernel,
            initramfs,
            memory_mib: 1024,
            cmdline: "console=ttyS0 quiet panic=-1".to_string(),
            timeout: Duration::from_secs(180),
            qemu: env_path("EDGEVISOR_QEMU", "qemu-system-x86_64"),
            extra_args: Vec::new(),
        }
    }

    /// The QEMU command for this spec.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.qemu);
        cmd.args(["-accel", "tcg", "-cpu", "EPYC,+svm,+npt", "-smp", "1"])
            .arg("-m")
            .arg(format!("{}M", self.memory_mib))
            .args(["-display", "none", "-vga", "none", "-nic", "none"])
            .args(["-monitor", "none", "-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initramfs)
            .arg("-append")
            .arg(&self.cmdline)
            .args(&self.extra_args);
        cmd
    }
}

/// A finished L1 boot.
#[derive(Debug, Clone)]
pub struct L1Run {
    /// Everything the guest wrote to its serial console.
    pub log: String,
    /// Wall time from starting QEMU to its exit.
    pub elapsed: Duration,
    /// What QEMU wrote to stderr (warnings about CPU features TCG lacks are normal).
    pub qemu_stderr: String,
}

impl L1Run {
    /// Whether `/init` ran all its steps (it prints [`DONE_MARKER`] before powering off).
    pub fn completed(&self) -> bool {
        self.log.lines().any(|l| l.contains(DONE_MARKER))
    }

    /// The output of the step called `name`, or an error quoting the end of the serial log.
    pub fn step(&self, name: &str) -> Result<StepOutput> {
        parse_step(&self.log, name).ok_or_else(|| NestedError::StepMissing {
            name: name.to_string(),
            tail: self.tail(TAIL_LINES),
        })
    }

    /// The last `lines` lines of the serial log.
    pub fn tail(&self, lines: usize) -> String {
        tail(&self.log.replace('\r', ""), lines)
    }
}

/// Kills and reaps QEMU however the caller leaves (return, error, panic).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // An already reaped child makes these fail harmlessly.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copies a pipe into a shared buffer (and to our stderr when `echo` is set) until it closes.
fn collect(
    mut pipe: impl Read + Send + 'static,
    buf: Arc<Mutex<Vec<u8>>>,
    echo: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            if echo {
                let _ = std::io::stderr().write_all(&chunk[..n]);
            }
            buf.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(&chunk[..n]);
        }
    })
}

fn text_of(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    let bytes = buf.lock().unwrap_or_else(PoisonError::into_inner);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Boots `spec` under QEMU, captures the serial console until QEMU exits (the guest powered off,
/// rebooted or panicked) and returns it. QEMU is killed on every path out of this function, and
/// also if this process dies first. Set `EDGEVISOR_NESTED_VERBOSE=1` to watch the console live.
pub fn run_l1(spec: &L1Spec) -> Result<L1Run> {
    let mut cmd = spec.command();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe and touches no memory of ours; it asks the kernel to SIGKILL QEMU when
    // the thread that spawned it ends, so a killed test run leaves no QEMU behind.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let child = cmd.spawn().map_err(|source| NestedError::ToolMissing {
        program: spec.qemu.to_string_lossy().into_owned(),
        source,
    })?;
    let mut qemu = Running(child);
    let serial = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    if let Some(out) = qemu.0.stdout.take() {
        readers.push(collect(
            out,
            serial.clone(),
            env_flag("EDGEVISOR_NESTED_VERBOSE"),
        ));
    }
    if let Some(err) = qemu.0.stderr.take() {
        readers.push(collect(err, errors.clone(), false));
    }

    let status = loop {
        match qemu.0.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= spec.timeout => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(NestedError::io(&spec.qemu, e)),
        }
    };
    let elapsed = started.elapsed();
    drop(qemu);
    for reader in readers {
        let _ = reader.join();
    }
    let log = text_of(&serial);
    let serial_tail = tail(&log.replace('\r', ""), TAIL_LINES);
    let Some(status) = status else {
        return Err(NestedError::Timeout {
            timeout: spec.timeout,
            tail: serial_tail,
        });
    };
    let qemu_stderr = text_of(&errors);
    if !status.success() {
        return Err(NestedError::QemuFailed {
            status: status.to_string(),
            stderr: tail(&qemu_stderr, 20),
            tail: serial_tail,
        });
    }
    Ok(L1Run {
        log,
        elapsed,
        qemu_stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nested::{busybox, DebianKernel, Initramfs, ScratchDir};

    /// Whether any process has `needle` in its command line.
    fn process_with_arg(needle: &str) -> bool {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return false;
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .any(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
    }

    #[test]
    fn qemu_is_killed_at_the_timeout_and_the_error_quotes_the_console() {
        let kernel = DebianKernel::ensure().expect("Debian kernel (scripts/install-test-deps.sh)");
        let work = ScratchDir::new("timeout-unit").expect("scratch");
        let mut fs = Initramfs::with_busybox(&busybox()).expect("busybox");
        fs.set_init("#!/bin/sh\necho never-ending-init\nexec sleep 1000\n")
            .expect("init");
        let initramfs = work.path().join("sleeper.cpio");
        fs.write(&initramfs).expect("write");
        let mut spec = L1Spec::new(kernel.vmlinuz.clone(), initramfs.clone());
        spec.cmdline = "console=ttyS0 panic=-1".to_string();
        // Long enough for QEMU to start and the kernel to print on a loaded host.
        spec.timeout = Duration::from_secs(10);

        let started = Instant::now();
        let err = run_l1(&spec).expect_err("the guest never powers off");
        let took = started.elapsed();
        let NestedError::Timeout { timeout, tail } = &err else {
            panic!("expected a timeout, got: {err}");
        };
        assert_eq!(*timeout, spec.timeout);
        assert!(
            took >= spec.timeout && took < spec.timeout + Duration::from_secs(10),
            "{took:?}"
        );
        // The console without `quiet` is busy from the first second: kernel lines must be there.
        assert!(
            tail.lines().filter(|l| l.starts_with('[')).count() > 5,
            "{err}"
        );
        let needle = initramfs.to_string_lossy();
        assert!(
            !process_with_arg(&needle),
            "QEMU still runs after run_l1 returned"
        );
    }
}
