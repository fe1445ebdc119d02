//! vCPU exits counted by reason: in the `--report` file and in `GET /state` of the control
//! socket, checked against exits known in advance and against the device counters.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{edgevisor, elf64_with_code, run_kernel, show, stdout, Scratch};
use serde_json::Value;
use vmm::api::call;
use vmm::state::ExitKind;

const TIMEOUT: Duration = Duration::from_secs(5);

fn read_report(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("report written")).unwrap()
}

/// The exits object of a report or state document: exactly one number per documented
/// reason, nothing else. Returns (name, count) in `ExitKind::ALL` order.
fn exits(doc: &Value) -> Vec<(&'static str, u64)> {
    let exits = doc["counters"]["exits"]
        .as_object()
        .unwrap_or_else(|| panic!("no counters.exits in {doc}"));
    assert_eq!(
        exits.len(),
        ExitKind::ALL.len(),
        "unexpected reasons: {exits:?}"
    );
    ExitKind::ALL
        .iter()
        .map(|k| {
            let n = exits[k.name()]
                .as_u64()
                .unwrap_or_else(|| panic!("{} missing in {exits:?}", k.name()));
            (k.name(), n)
        })
        .collect()
}

fn count(exits: &[(&str, u64)], name: &str) -> u64 {
    exits.iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn hand_written_guest_exits_are_counted_one_by_one() {
    // out 'A' to COM1; in from COM1's LSR; write then read a byte at 0xd0000000 (in the
    // MMIO hole, no device there); ACPI poweroff with a 16-bit out.
    let code = [
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'A', 0xee, // mov al, 'A'; out dx, al
        0x66, 0xba, 0xfd, 0x03, // mov dx, 0x3fd
        0xec, // in al, dx
        0xb8, 0x00, 0x00, 0x00, 0xd0, // mov eax, 0xd0000000
        0x88, 0x08, // mov [rax], cl
        0x8a, 0x08, // mov cl, [rax]
        0x66, 0xb8, 0x00, 0x20, // mov ax, 0x2000
        0x66, 0xba, 0x04, 0x06, // mov dx, 0x604
        0x66, 0xef, // out dx, ax
    ];
    let dir = Scratch::new("exits-exact");
    let kernel = dir.file("exits.elf", &elf64_with_code(0x10_0000, &code));
    let report = dir.0.join("report.json");
    let o = run_kernel(&kernel, &["--report", report.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(stdout(&o), "A");
    let doc = read_report(&report);
    let exits = exits(&doc);
    for (name, n) in &exits {
        let want = match *name {
            "io_out" => 2,
            "io_in" | "mmio_read" | "mmio_write" => 1,
            // The poweroff kicks the (only) vCPU, which is already on its way out.
            "intr" => (*n).min(1),
            _ => 0,
        };
        assert_eq!(*n, want, "{name}: {exits:?}");
    }
    assert_eq!(doc["counters"]["unhandled_mmio_accesses"], 2, "{doc}");
    assert_eq!(doc["counters"]["unhandled_pio_accesses"], 0, "{doc}");
}

#[test]
fn the_probe_reports_port_exits_that_match_its_devices() {
    let dir = Scratch::new("exits-probe");
    let report = dir.0.join("report.json");
    let o = edgevisor(&[
        "run",
        "--report",
        report.to_str().unwrap(),
        "--cmdline",
        "probe.exit=poweroff",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let doc = read_report(&report);
    let exits = exits(&doc);
    let serial_bytes = doc["serial_bytes"].as_u64().unwrap();
    assert!(serial_bytes > 100, "{doc}");
    // Each serial byte is one `out` after at least one `in` of the line status register.
    let (io_in, io_out) = (count(&exits, "io_in"), count(&exits, "io_out"));
    assert!(io_out >= serial_bytes, "{exits:?}, {serial_bytes} bytes");
    assert!(io_in >= serial_bytes, "{exits:?}, {serial_bytes} bytes");
    // Every port exit reached exactly one legacy device or was counted as unhandled.
    let device_accesses: u64 = doc["devices"]
        .as_object()
        .unwrap()
        .values()
        .map(|d| d["reads"].as_u64().unwrap() + d["writes"].as_u64().unwrap())
        .sum();
    let unhandled_pio = doc["counters"]["unhandled_pio_accesses"].as_u64().unwrap();
    assert_eq!(
        io_in + io_out,
        device_accesses + unhandled_pio,
        "{exits:?} {doc}"
    );
    // No MMIO device is configured: every MMIO exit went unanswered.
    assert_eq!(
        count(&exits, "mmio_read") + count(&exits, "mmio_write"),
        doc["counters"]["unhandled_mmio_accesses"].as_u64().unwrap(),
        "{exits:?}"
    );
    // A clean poweroff through the ACPI port: none of the exits that end a VM.
    for name in [
        "hlt",
        "shutdown",
        "system_event",
        "internal_error",
        "fail_entry",
        "other",
    ] {
        assert_eq!(count(&exits, name), 0, "{name}: {exits:?}");
    }
}

#[test]
fn a_triple_fault_is_one_shutdown_exit() {
    let dir = Scratch::new("exits-triple");
    let report = dir.0.join("report.json");
    let o = edgevisor(&[
        "run",
        "--report",
        report.to_str().unwrap(),
        "--cmdline",
        "probe.exit=triple",
    ]);
    let doc = read_report(&report);
    assert_eq!(doc["exit"]["reason"], "triple-fault", "{}", show(&o));
    let exits = exits(&doc);
    assert_eq!(count(&exits, "shutdown"), 1, "{exits:?}");
    assert!(count(&exits, "io_out") > 0, "{exits:?}");
}

/// Waits until the guest runs and has begun to print.
fn wait_until_booted(sock: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, doc)) = call(sock, "GET", "/state", TIMEOUT) {
            if !doc["timings"]["guest_main_us"].is_null() {
                return doc;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the VM never came up on {sock:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `GET /state` until the exit counts stay the same over eleven reads 50 ms apart.
/// (After PASS the probe has one more port write to make before it halts; a vCPU thread
/// that a loaded host leaves unscheduled for a while could still make it after a shorter
/// quiet spell, and the pause below would then find it outside KVM_RUN.)
fn wait_until_quiet(sock: &Path) -> Vec<(&'static str, u64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Vec::new();
    let mut same = 0;
    loop {
        let (status, doc) = call(sock, "GET", "/state", TIMEOUT).unwrap();
        assert_eq!(status, 200, "{doc}");
        let now = exits(&doc);
        same = if now == last { same + 1 } else { 0 };
        if same == 10 {
            return now;
        }
        last = now;
        assert!(
            Instant::now() < deadline,
            "the guest never went quiet: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_control_socket_reports_exits_while_the_guest_runs() {
    let dir = Scratch::new("exits-socket");
    let sock = dir.0.join("vm.sock");
    let report = dir.0.join("report.json");
    let child = Command::new(env!("CARGO_BIN_EXE_edgevisor"))
        .args(["run", "--cmdline", "probe.exit=hang", "--api-socket"])
        .arg(&sock)
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn edgevisor");
    // Kill the VM if an assertion fails before it is stopped.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    // The probe prints its verdict, stamps the boot timer and halts for good with
    // interrupts off: from then on its vCPU sits in KVM_RUN.
    let stdout = child.0.stdout.take().unwrap();
    let (passed_tx, passed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("PROBE PASS") {
                let _ = passed_tx.send(());
            }
        }
    });
    wait_until_booted(&sock);
    passed
        .recv_timeout(Duration::from_secs(30))
        .expect("the probe never printed PROBE PASS");
    let running = wait_until_quiet(&sock);
    assert!(count(&running, "io_out") > 0, "{running:?}");
    assert!(count(&running, "io_in") > 0, "{running:?}");

    // Pausing kicks the vCPU out of KVM_RUN with a signal: one more intr, nothing else.
    let (status, paused) = call(&sock, "PUT", "/pause", TIMEOUT).unwrap();
    assert_eq!(status, 200, "{paused}");
    let paused = exits(&paused);
    for ((name, before), (_, after)) in running.iter().zip(&paused) {
        let want = before + u64::from(*name == "intr");
        assert_eq!(*after, want, "{name}: {running:?} -> {paused:?}");
    }
    let (status, _) = call(&sock, "PUT", "/resume", TIMEOUT).unwrap();
    assert_eq!(status, 200);
    let (status, stopped) = call(&sock, "PUT", "/stop", TIMEOUT).unwrap();
    assert_eq!(status, 200, "{stopped}");
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(8));

    // Counters only grow: each reason in the final report is at least what the socket said.
    let last = exits(&read_report(&report));
    for ((name, before), (_, after)) in paused.iter().zip(&last) {
        assert!(
            after >= before,
            "{name} went backwards: {paused:?} -> {last:?}"
        );
    }
    for name in ["shutdown", "internal_error", "fail_entry", "other"] {
        assert_eq!(count(&last, name), 0, "{name}: {last:?}");
    }
}
