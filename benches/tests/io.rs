//! `edgevisor-bench io` for real, with small workloads: the same probe guest under edgevisor
//! and QEMU microvm moves blocks and frames through real virtio-mmio devices, a raw image, a
//! TAP in a network namespace the bench makes and dpdk-testpmd over vhost-user, and the host's
//! own counters must account for every frame the guests say they sent.
//! Needs root, /dev/kvm, qemu-system-x86 and dpdk-dev (scripts/install-test-deps.sh).

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

use std::process::Command;

const FRAMES: u64 = 300;

#[test]
fn io_bench_measures_both_systems_and_every_frame_reaches_the_host() {
    let edgevisor = benches::locate::build_edgevisor(&benches::locate::workspace_root())
        .expect("build edgevisor");
    let dir = std::env::temp_dir().join(format!("edgevisor-io-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("io.json");
    let out = Command::new(env!("CARGO_BIN_EXE_edgevisor-bench"))
        .args([
            "io",
            "--runs",
            "1",
            "--blk-mib",
            "2",
            "--iops",
            "32",
            "--spin",
            "2000",
        ])
        .args(["--frames", &FRAMES.to_string(), "--vhost-user"])
        .arg("--edgevisor")
        .arg(&edgevisor)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run edgevisor-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed\n{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    // Every metric has a positive median for both systems, and net metrics on both paths.
    let rows = report["rows"].as_array().unwrap();
    let metrics = [
        "blk-read-mib-s",
        "blk-write-mib-s",
        "blk-rand-read-iops",
        "net-tx-large-fps",
        "net-tx-large-mbit-s",
        "net-tx-small-fps",
        "guest-mips",
        "mmio-exit-us",
    ];
    for metric in metrics {
        let paths: &[&str] = if metric.starts_with("net") {
            &["tap", "vhost-user"]
        } else {
            &[""]
        };
        for path in paths {
            let row = rows
                .iter()
                .find(|r| r["metric"] == metric && r["net"].as_str().unwrap_or("") == *path)
                .unwrap_or_else(|| panic!("no row for {metric} {path}\n{stdout}"));
            for column in ["edgevisor", "qemu", "ratio"] {
                let v = row[column].as_f64().unwrap_or(0.0);
                assert!(v > 0.0, "{metric} {path} {column} is {v}\n{stdout}");
            }
        }
    }
    // Megabits follow from frames: 1514-byte frames, 8 bits each.
    let row = |metric: &str| {
        rows.iter()
            .find(|r| r["metric"] == metric && r["net"] == "tap")
            .unwrap()
    };
    let fps = row("net-tx-large-fps")["edgevisor"].as_f64().unwrap();
    let mbit = row("net-tx-large-mbit-s")["edgevisor"].as_f64().unwrap();
    assert!(
        (fps * 1514.0 * 8.0 / 1e6 - mbit).abs() < mbit * 1e-6,
        "{fps} {mbit}"
    );

    // edgevisor's vhost-user/TAP ratio for each of the three net figures.
    let vu = report["edgevisor_vhost_user_over_tap"].as_object().unwrap();
    assert_eq!(vu.len(), 3, "{vu:?}");
    assert!(vu.values().all(|r| r.as_f64().unwrap() > 0.0), "{vu:?}");
    assert!(
        stdout.contains("edgevisor vhost-user/TAP: net tx 1514 B (frames/s) "),
        "{stdout}"
    );

    // Two systems, a warm-up and one run each, two passes of FRAMES: the TAP's and testpmd's
    // counters saw exactly that.
    let expected = 2 * 2 * 2 * FRAMES;
    assert_eq!(
        report["tap_frames_counted"],
        serde_json::json!([expected, expected])
    );
    assert_eq!(
        report["testpmd_frames_counted"],
        serde_json::json!([expected, expected])
    );
    assert!(
        stdout.contains("frames on the TAP: 2400 counted by the host kernel"),
        "{stdout}"
    );
    // The bench leaves no network namespace behind.
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ns.stdout).contains("edgevisor-bench-"),
        "a namespace was left behind"
    );
}

/// The probe's workloads on their own: a read-only disk gets no write pass, a disk too small
/// or a malformed option fails the probe with its one-line reason.
#[test]
fn probe_workloads_check_their_options_and_respect_a_read_only_disk() {
    let edgevisor = benches::locate::build_edgevisor(&benches::locate::workspace_root())
        .expect("build edgevisor");
    let dir = std::env::temp_dir().join(format!("edgevisor-io-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("probe.elf");
    std::fs::write(&kernel, firmware::PROBE_PVH).unwrap();
    let disk = dir.join("disk.img");
    let pattern: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&disk, &pattern).unwrap();
    let run = |disk_arg: String, cmdline: &str| {
        let out = Command::new(&edgevisor)
            .args(["run", "--mem", "64M", "--kernel"])
            .arg(&kernel)
            .args(["--disk", &disk_arg, "--cmdline", cmdline])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let path = disk.display();

    let out = run(
        format!("path={path}"),
        "probe.blkbench=2,req=128,iops=16,depth=5",
    );
    assert!(out.contains("PROBE PASS"), "{out}");
    for line in [
        "probe: blkbench read bytes=2097152 req_bytes=131072 depth=5 ticks=",
        "probe: blkbench write bytes=2097152 req_bytes=131072 depth=5 ticks=",
        "probe: blkbench iops reqs=16 req_bytes=4096 depth=5 ticks=",
    ] {
        assert!(out.contains(line), "no {line:?}\n{out}");
    }
    // The write pass reached the file (it writes back buffers the reads filled, in another
    // order).
    assert!(
        std::fs::read(&disk).unwrap() != pattern,
        "the disk did not change"
    );

    std::fs::write(&disk, &pattern).unwrap();
    let out = run(
        format!("path={path},readonly=on"),
        "probe.blkbench=1,iops=0",
    );
    assert!(
        out.contains("PROBE PASS") && out.contains("blkbench read bytes=1048576"),
        "{out}"
    );
    assert!(
        !out.contains("blkbench write") && !out.contains("blkbench iops"),
        "{out}"
    );
    assert!(
        std::fs::read(&disk).unwrap() == pattern,
        "a read-only disk changed"
    );

    for (cmdline, reason) in [
        ("probe.blkbench=3", "asks for more than the disk has"),
        ("probe.blkbench=1,req=3", "use probe.blkbench=MiB"),
        ("probe.blkbench=1,depth=6", "use probe.blkbench=MiB"),
        ("probe.blkbench=1x", "use probe.blkbench=MiB"),
    ] {
        let out = run(format!("path={path}"), cmdline);
        assert!(
            out.contains("PROBE FAIL protocol=pvh check=blkbench") && out.contains(reason),
            "{cmdline}: {out}"
        );
    }
    let out = run(format!("path={path}"), "probe.spin=0");
    assert!(out.contains("check=spin use probe.spin=N"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
