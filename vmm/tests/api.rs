//! The in-process API an orchestrator embeds: start, wait, pause/resume, stop.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm::{ExitReason, Vm, VmConfig, VmState};

/// The tests here count this process's vCPU threads, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A console that keeps what the guest wrote.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn start(cmdline: &str, console: Capture) -> vmm::VmHandle {
    let config = VmConfig {
        cmdline: cmdline.into(),
        ..VmConfig::default()
    };
    Vm::new(&config, Box::new(console), Instant::now())
        .expect("build VM")
        .start()
        .expect("start VM")
}

fn wait_for(console: &Capture, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !console.text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "never saw {needle:?}: {}",
            console.text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn builtin_probe_runs_to_poweroff_in_process() {
    let _serial = serial();
    let console = Capture::default();
    let report = start("", console.clone()).wait();
    assert_eq!(report.exit, ExitReason::Poweroff);
    assert_eq!(report.exit_code, 0);
    assert!(console.text().contains("PROBE PASS"), "{}", console.text());
    assert_eq!(
        report.serial_bytes as usize,
        console.0.lock().unwrap().len()
    );
    assert!(report.timings.guest_main_us.is_some());
}

#[test]
fn a_hung_guest_can_be_paused_resumed_and_stopped() {
    let _serial = serial();
    let console = Capture::default();
    let handle = start("probe.exit=hang", console.clone());
    wait_for(&console, "PROBE PASS");
    let control = handle.control();
    // Past its verdict the probe stamps the boot timer and halts with interrupts off: wait
    // until its exits stay put, so its vCPU sits in KVM_RUN when the pause kicks it.
    let mut before = control.counters().exits;
    let mut same = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while same < 10 {
        std::thread::sleep(Duration::from_millis(50));
        let now = control.counters().exits;
        same = if now == before { same + 1 } else { 0 };
        before = now;
        assert!(Instant::now() < deadline, "the guest never went quiet");
    }
    assert!(before.io_out > 0, "{before:?}");
    assert!(handle.pause());
    assert_eq!(handle.state(), VmState::Paused);
    let paused = control.counters().exits;
    assert!(paused.io_out >= before.io_out, "{before:?} -> {paused:?}");
    assert!(handle.resume());
    assert_eq!(handle.state(), VmState::Running);
    // The kick that parked the vCPU comes back as an exit without a guest exit: at once if
    // it found the vCPU in KVM_RUN, or from the first KVM_RUN after the resume if the vCPU
    // was handling an exit (then `immediate_exit` parked it). Either way, one is counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = control.counters().exits;
    while after.intr <= before.intr && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        after = control.counters().exits;
    }
    assert!(after.intr > before.intr, "{before:?} -> {after:?}");
    handle.stop();
    let report = handle.wait();
    assert_eq!(report.exit, ExitReason::Stopped);
    assert_eq!(report.exit_code, 8);
    assert_eq!(
        report.counters,
        control.counters(),
        "the report is the last reading"
    );
    assert!(report.counters.exits.total() >= paused.total());
}

#[test]
fn pausing_holds_the_guest_still() {
    let _serial = serial();
    // A guest that never stops printing would be ideal; the probe's output is finite, so
    // check instead that a paused VM does not reach its exit until resumed.
    let console = Capture::default();
    let config = VmConfig {
        cmdline: "probe.exit=poweroff".into(),
        ..VmConfig::default()
    };
    let handle = Vm::new(&config, Box::new(console.clone()), Instant::now())
        .unwrap()
        .start()
        .unwrap();
    let paused = handle.pause();
    if paused {
        let before = console.text().len();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(console.text().len(), before, "guest ran while paused");
        assert_eq!(handle.state(), VmState::Paused);
        assert!(handle.resume());
    }
    let report = handle.wait();
    assert_eq!(report.exit, ExitReason::Poweroff, "{}", console.text());
}

#[test]
fn dropping_a_handle_stops_the_guest_and_joins_its_threads() {
    let _serial = serial();
    let console = Capture::default();
    let handle = start("probe.exit=hang", console.clone());
    wait_for(&console, "PROBE PASS");
    let vcpus = vcpu_threads();
    assert_eq!(vcpus.len(), 1, "one vCPU thread while the VM runs");
    let stopper_state = handle.stopper();
    drop(handle);
    // The vCPU thread is gone once drop returns.
    let left: Vec<_> = vcpu_threads().intersection(&vcpus).copied().collect();
    assert!(left.is_empty(), "vCPU thread {left:?} still running");
    stopper_state.stop(); // harmless after the VM ended
}

/// The ids of this process's threads named `vcpu<N>` (the tests run one at a time, so they
/// are the current VM's).
fn vcpu_threads() -> std::collections::BTreeSet<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let digits = comm.trim().strip_prefix("vcpu")?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            t.file_name().to_str()?.parse().ok()
        })
        .collect()
}
