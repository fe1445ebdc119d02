//! The `edgevisor` binary booting our firmware probes on this host's KVM: every boot
//! protocol, every way a guest can end, and every kind of bad input.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;
use common::*;

const PROTOCOLS: [&str; 4] = ["linux64", "pvh", "multiboot", "bzimage"];

#[test]
fn builtin_probe_boots_with_no_arguments() {
    let o = edgevisor(&["run", "--timings"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stdout(&o).contains("PROBE PASS protocol=linux64"),
        "{}",
        show(&o)
    );
    let err = stderr(&o);
    assert!(err.contains("guest exited: guest powered off"), "{err}");
    assert!(err.contains("first-serial-byte"), "{err}");
}

#[test]
fn every_protocol_passes_its_checks_with_cmdline_and_initrd() {
    let dir = Scratch::new("protocols");
    let initrd: Vec<u8> = (0..12_345u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let initrd_path = dir.file("initrd.img", &initrd);
    let expected = format!(
        "initrd size={} fnv1a={:#010x}",
        initrd.len(),
        fnv1a(&initrd)
    );
    for name in PROTOCOLS {
        let kernel = dir.file(name, probe(name));
        let o = run_kernel(
            &kernel,
            &[
                "--cmdline",
                "console=ttyS0 hello=world",
                "--initrd",
                initrd_path.to_str().unwrap(),
                "--mem",
                "96M",
            ],
        );
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", show(&o));
        assert!(
            out.contains(&format!("PROBE PASS protocol={name}")),
            "{name}: {}",
            show(&o)
        );
        assert!(
            out.contains("hello=world"),
            "{name}: cmdline not echoed: {}",
            show(&o)
        );
        assert!(
            out.contains(&expected),
            "{name}: wanted {expected}: {}",
            show(&o)
        );
        // 96 MiB minus the reserved 0x9fc00..0x100000 hole.
        let kib = 96 * 1024 - (0x10_0000 - 0x9_fc00) / 1024;
        assert!(
            out.contains(&format!("total_kib={kib}")),
            "{name}: {}",
            show(&o)
        );
        assert!(out.contains("tsc_khz="), "{name}: {}", show(&o));
        assert!(!out.contains("tsc_khz=0 "), "{name}: {}", show(&o));
    }
}

#[test]
fn multiboot_command_line_starts_with_the_image_name() {
    let dir = Scratch::new("mbargv0");
    let kernel = dir.file("unikernel.elf", probe("multiboot"));
    let o = run_kernel(&kernel, &["--cmdline", "netdev=x"]);
    assert!(
        stdout(&o).contains("cmdline=\"unikernel.elf netdev=x\""),
        "{}",
        show(&o)
    );
}

#[test]
fn each_guest_exit_has_its_reason_and_code() {
    let dir = Scratch::new("exits");
    let kernel = dir.file("pvh", probe("pvh"));
    for (mode, code, reason) in [
        ("poweroff", 0, "powered off"),
        ("reset", 0, "reset"),
        ("panic", 4, "panicked"),
        ("debug=5", 11, "isa-debug-exit"),
        ("triple", 6, "triple-fault"),
    ] {
        let o = run_kernel(&kernel, &["--cmdline", &format!("probe.exit={mode}")]);
        assert_eq!(o.status.code(), Some(code), "{mode}: {}", show(&o));
        assert!(stderr(&o).contains(reason), "{mode}: {}", show(&o));
    }
}

#[test]
fn report_file_has_reason_code_and_phases() {
    let dir = Scratch::new("report");
    let report = dir.0.join("report.json");
    let o = edgevisor(&[
        "run",
        "--report",
        report.to_str().unwrap(),
        "--cmdline",
        "probe.exit=debug=2",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", show(&o));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["exit"]["reason"], "debug-exit");
    assert_eq!(json["exit"]["value"], 2);
    assert_eq!(json["exit_code"], 5);
    let t = &json["timings"];
    let phase = |n: &str| t[n].as_u64().unwrap_or_else(|| panic!("{n} missing: {t}"));
    assert!(phase("kvm_ready_us") <= phase("guest_entry_us"));
    assert!(phase("guest_entry_us") <= phase("first_serial_byte_us"));
    assert!(phase("guest_main_us") >= phase("guest_entry_us"));
    assert!(phase("first_serial_byte_us") <= phase("guest_exit_us"));
    assert_eq!(json["boot"]["protocol"], "linux64");
    assert!(json["serial_bytes"].as_u64().unwrap() > 100);
    assert_eq!(json["devices"]["serial"]["bytes_out"], json["serial_bytes"]);
    assert_eq!(json["devices"]["debug_exit"]["exits_requested"], 1);
    assert!(json["devices"]["rtc"]["reads"].as_u64().unwrap() >= 4);
}

#[test]
fn firecracker_config_file_boots() {
    let dir = Scratch::new("fcconfig");
    let kernel = dir.file("vmlinux", probe("linux64"));
    let config = dir.file(
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "from=config"}},
                "machine-config": {{"vcpu_count": 2, "mem_size_mib": 80}},
                "drives": [], "network-interfaces": []}}"#,
            kernel.display()
        )
        .as_bytes(),
    );
    let o = edgevisor(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).contains("from=config"), "{}", show(&o));
    assert!(stderr(&o).contains("80 MiB, 2 vCPU(s)"), "{}", show(&o));

    let bad = dir.file(
        "bad.json",
        br#"{"boot-source": {"kernel_image_path": "/x"}, "machine-config": {"mem_size_mib": 64, "turbo": true}}"#,
    );
    let o = edgevisor(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains("turbo"), "{}", show(&o));
}

#[test]
fn inspect_names_format_kind_and_protocols() {
    let dir = Scratch::new("inspect");
    for (name, format, protocol) in [
        ("linux64", "ELF64", "linux64"),
        ("pvh", "ELF", "pvh"),
        ("multiboot", "ELF32", "multiboot"),
        ("bzimage", "bzImage", "linux64"),
    ] {
        let kernel = dir.file(name, probe(name));
        let o = edgevisor(&["inspect", kernel.to_str().unwrap()]);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        assert!(out.contains(format), "{name}: {out}");
        assert!(
            out.contains(&format!("default {protocol}")),
            "{name}: {out}"
        );
        assert!(out.contains("edgevisor probe"), "{name}: {out}");
    }
}

fn assert_setup_error(o: &std::process::Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", show(o));
    let err = stderr(o);
    assert!(err.contains(needle), "wanted {needle:?} in: {err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "one sentence: {err}"
    );
    assert!(
        !stdout(o).contains("probe:"),
        "nothing may boot: {}",
        show(o)
    );
}

#[test]
fn bad_input_gets_one_clear_sentence_and_boots_nothing() {
    let dir = Scratch::new("badinput");
    let missing = dir.0.join("no-such-kernel");
    assert_setup_error(&run_kernel(&missing, &[]), "no-such-kernel");

    let junk = dir.file("junk.bin", &[0x5a; 4096]);
    assert_setup_error(&run_kernel(&junk, &[]), "junk.bin");

    let empty = dir.file("empty.bin", &[]);
    assert_setup_error(&run_kernel(&empty, &[]), "empty.bin");

    let elf = probe("linux64");
    let truncated = dir.file("truncated.elf", &elf[..100]);
    assert_setup_error(&run_kernel(&truncated, &[]), "truncated.elf");

    // Break the multiboot header's checksum: find the magic and flip a bit in the checksum.
    let mut mb = probe("multiboot").to_vec();
    let magic = 0x1bad_b002u32.to_le_bytes();
    let at = mb
        .windows(4)
        .position(|w| w == magic)
        .expect("multiboot magic");
    mb[at + 8] ^= 0x01;
    let bad_mb = dir.file("badsum.elf", &mb);
    assert_setup_error(&run_kernel(&bad_mb, &[]), "checksum");

    let kernel = dir.file("vmlinux", elf);
    let big = dir.file("big.initrd", &vec![1u8; 3 << 20]);
    assert_setup_error(
        &run_kernel(&kernel, &["--mem", "4M", "--initrd", big.to_str().unwrap()]),
        "initrd",
    );
    let missing_initrd = dir.0.join("no-initrd");
    assert_setup_error(
        &run_kernel(&kernel, &["--initrd", missing_initrd.to_str().unwrap()]),
        "no-initrd",
    );
    assert_setup_error(&run_kernel(&kernel, &["--mem", "0"]), "zero");
    assert_setup_error(
        &run_kernel(&kernel, &["--mem", "1000000G"]),
        "more than this host",
    );
    assert_setup_error(&run_kernel(&kernel, &["--mem", "12X"]), "12X");
    assert_setup_error(&run_kernel(&kernel, &["--vcpus", "0"]), "vCPU count 0");
    assert_setup_error(
        &run_kernel(&kernel, &["--boot-protocol", "multiboot"]),
        "multiboot",
    );

    // An unknown flag is a usage error with the same exit code.
    let o = edgevisor(&["run", "--kernal", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains("--kernal"), "{}", show(&o));
}

#[test]
fn no_permission_on_dev_kvm_is_explained() {
    // Drop to an unprivileged user: /dev/kvm here is root-only (crw-------).
    let meta = std::fs::metadata("/dev/kvm").expect("/dev/kvm");
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o006 != 0 {
        eprintln!("/dev/kvm is world-accessible here; nothing to test");
        return;
    }
    let o = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_edgevisor"))
        .arg("run")
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        stderr(&o).contains("no permission to open /dev/kvm"),
        "{}",
        show(&o)
    );
}

#[test]
fn an_instruction_kvm_cannot_run_is_reported_with_rip_and_bytes() {
    // out 'A' to COM1; pxor xmm0,xmm0; out 'B'; ACPI poweroff.
    let code = [
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'A', 0xee, // mov al, 'A'; out dx, al
        0x66, 0x0f, 0xef, 0xc0, // pxor xmm0, xmm0
        0xb0, b'B', 0xee, // mov al, 'B'; out dx, al
        0x66, 0xb8, 0x00, 0x20, // mov ax, 0x2000
        0x66, 0xba, 0x04, 0x06, // mov dx, 0x604
        0x66, 0xef, // out dx, ax
    ];
    let dir = Scratch::new("sse");
    let kernel = dir.file("sse.elf", &elf64_with_code(0x10_0000, &code));
    let o = run_kernel(&kernel, &[]);
    if host_has_vmx_or_svm() {
        // A complete CPU runs it: both bytes, then poweroff.
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        assert_eq!(stdout(&o), "AB");
    } else {
        // This host's PVM KVM emulates guest code and stops at the SSE instruction.
        assert_eq!(o.status.code(), Some(6), "{}", show(&o));
        assert_eq!(stdout(&o), "A");
        let err = stderr(&o);
        assert!(err.contains("at RIP 0x100007"), "{err}");
        assert!(err.contains("instruction bytes [66 0f ef c0"), "{err}");
        assert!(err.contains("no VMX/SVM"), "{err}");
    }
}

#[test]
fn malformed_pvh_note_and_bzimage_headers_are_refused() {
    let dir = Scratch::new("malformed");

    // PVH: point the XEN_ELFNOTE_PHYS32_ENTRY note (namesz 4, type 18, "Xen\0") outside the image.
    let mut pvh = probe("pvh").to_vec();
    let note_head: Vec<u8> = [4u32.to_le_bytes(), 4u32.to_le_bytes(), 18u32.to_le_bytes()]
        .concat()
        .into_iter()
        .chain(*b"Xen\0")
        .collect();
    let at = pvh
        .windows(note_head.len())
        .position(|w| w == note_head.as_slice())
        .expect("PVH note with a 4-byte entry");
    let desc = at + note_head.len();
    pvh[desc..desc + 4].copy_from_slice(&0x10u32.to_le_bytes());
    let bad_pvh = dir.file("badnote.elf", &pvh);
    assert_setup_error(&run_kernel(&bad_pvh, &[]), "badnote.elf");

    // bzImage: boot protocol older than 2.06.
    let mut old = probe("bzimage").to_vec();
    old[0x206..0x208].copy_from_slice(&0x0205u16.to_le_bytes());
    let old = dir.file("old.bzimage", &old);
    assert_setup_error(&run_kernel(&old, &[]), "old.bzimage");

    // bzImage: no 64-bit entry (XLF_KERNEL_64 cleared).
    let mut no64 = probe("bzimage").to_vec();
    no64[0x236] &= !1;
    let no64 = dir.file("no64.bzimage", &no64);
    assert_setup_error(&run_kernel(&no64, &[]), "64-bit");

    // bzImage: setup header magic gone: no longer a kernel at all.
    let mut nomagic = probe("bzimage").to_vec();
    nomagic[0x202..0x206].copy_from_slice(b"XXXX");
    let nomagic = dir.file("nomagic.bzimage", &nomagic);
    assert_setup_error(&run_kernel(&nomagic, &[]), "not a kernel image");
}

#[test]
fn the_probe_touches_the_memory_it_is_asked_to_and_no_more() {
    let o = edgevisor(&["run", "--mem", "64M", "--cmdline", "probe.touch=40"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).contains("probe: touched 40 MiB"), "{}", show(&o));
    // 16 MiB + 60 MiB is past the end of a 64 MiB guest: the probe refuses.
    let o = edgevisor(&["run", "--mem", "64M", "--cmdline", "probe.touch=60"]);
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
    assert!(stdout(&o).contains("check=touch"), "{}", show(&o));
}
