//! Boots each probe image on real KVM (/dev/kvm) with the harness in `common/` and
//! checks what the probe prints on COM1 and how it ends the VM.
//!
//! Set EDGEVISOR_SKIP_KVM_TESTS=1 to skip them on a machine without /dev/kvm.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;

use common::*;

fn kvm_tests_skipped() -> bool {
    if std::env::var_os("EDGEVISOR_SKIP_KVM_TESTS").is_some() {
        eprintln!("EDGEVISOR_SKIP_KVM_TESTS is set: not booting the probe");
        return true;
    }
    false
}

/// Deterministic bytes (xorshift64*), so initrds are not trivially patterned.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// FNV-1a, 32 bits, computed here independently of the probe.
fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The complete serial output a passing boot of `spec` must produce.
fn expected_pass_output(spec: &BootSpec, reported: &str) -> String {
    let (rdrand, rdseed) = (u8::from(spec.rdrand), u8::from(spec.rdseed));
    let mode = match spec.entry_mode() {
        EntryMode::Long => "mode=long paging=on",
        EntryMode::Protected32 => "mode=protected32 paging=off",
    };
    let cmdline: String = spec
        .cmdline
        .as_deref()
        .unwrap_or_default()
        .iter()
        .take(200)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    let available: Vec<&(u64, u64, u32)> = spec.memory_map.iter().filter(|e| e.2 == 1).collect();
    let total_kib: u64 = available.iter().map(|e| e.1).sum::<u64>() / 1024;
    let initrd = match &spec.initrd {
        Some(data) => format!("initrd size={} fnv1a={:#010x}", data.len(), fnv1a(data)),
        None => "initrd none".to_string(),
    };
    let (h, m, s) = spec.rtc_time;
    format!(
        "probe: protocol={reported}\n\
         probe: {mode}\n\
         probe: cmdline=\"{cmdline}\"\n\
         probe: memory total_kib={total_kib} regions={}\n\
         probe: {initrd}\n\
         probe: cpuid tsc_khz={} hv_max={:#x} rdrand={rdrand} rdseed={rdseed}\n\
         probe: rtc status_a={:#04x} uip=0 time={h:02x}:{m:02x}:{s:02x}\n\
         PROBE PASS protocol={reported}\n",
        available.len(),
        spec.tsc_khz,
        spec.hv_max_leaf,
        spec.rtc_status_a,
    )
}

/// Boot, and require the whole expected PASS output, both timer stamps and `exit`.
fn assert_pass(spec: &BootSpec, reported: &str, exit: GuestExit) {
    let out = boot(spec);
    assert_eq!(
        out.serial,
        expected_pass_output(spec, reported),
        "serial output of {reported}"
    );
    assert_eq!(
        out.exit, exit,
        "exit of {reported}; serial:\n{}",
        out.serial
    );
    assert_eq!(out.timer_stamps, [1, 2], "boot timer stamps of {reported}");
    assert_eq!(
        out.lsr_reads,
        2 * out.serial.len(),
        "LSR polled until THRE (busy, then ready) before every byte"
    );
}

/// Boot, and require the verdict `PROBE FAIL protocol=<p> check=<check> <detail...>`
/// as the last line, no PASS, isa-debug-exit 1 and only the entry stamp.
fn assert_fail(spec: &BootSpec, check: &str, detail: &str) -> Outcome {
    let out = boot(spec);
    let last = out.lines().last().copied().unwrap_or_default().to_string();
    let prefix = format!(
        "PROBE FAIL protocol={} check={check} {detail}",
        spec.protocol.name()
    );
    assert!(
        last.starts_with(&prefix),
        "expected a line starting with {prefix:?}, serial:\n{}",
        out.serial
    );
    assert!(!out.serial.contains("PROBE PASS"), "{}", out.serial);
    assert_eq!(out.exit, GuestExit::DebugExit(1), "serial:\n{}", out.serial);
    assert_eq!(out.timer_stamps, [1]);
    out
}

/// A boot with a command line and an initrd of a length that is no multiple of 4.
fn full_spec(protocol: Protocol, seed: u64) -> BootSpec {
    let mut spec = BootSpec::new(protocol)
        .with_cmdline("console=ttyS0 probe.exit=poweroff edgevisor.test=\"1 2\" quiet");
    spec.initrd = Some(pseudo_random(4093 + 1000 * seed as usize, seed));
    spec
}

#[test]
fn linux64_passes_with_cmdline_and_initrd() {
    if kvm_tests_skipped() {
        return;
    }
    assert_pass(
        &full_spec(Protocol::Linux64, 1),
        "linux64",
        GuestExit::PowerOff(0x2000),
    );
}

#[test]
fn pvh_passes_with_cmdline_and_initrd() {
    if kvm_tests_skipped() {
        return;
    }
    assert_pass(
        &full_spec(Protocol::Pvh, 2),
        "pvh",
        GuestExit::PowerOff(0x2000),
    );
}

#[test]
fn multiboot_passes_with_cmdline_and_initrd() {
    if kvm_tests_skipped() {
        return;
    }
    assert_pass(
        &full_spec(Protocol::Multiboot, 3),
        "multiboot",
        GuestExit::PowerOff(0x2000),
    );
}

#[test]
fn bzimage_passes_with_cmdline_and_initrd() {
    if kvm_tests_skipped() {
        return;
    }
    assert_pass(
        &full_spec(Protocol::BzImage, 4),
        "bzimage",
        GuestExit::PowerOff(0x2000),
    );
}

#[test]
fn initrd_of_64_kib_is_hashed_in_full() {
    if kvm_tests_skipped() {
        return;
    }
    for protocol in [Protocol::Linux64, Protocol::Multiboot] {
        let mut spec = BootSpec::new(protocol);
        spec.initrd = Some(pseudo_random(64 * 1024, 99));
        assert_pass(&spec, protocol.name(), GuestExit::PowerOff(0x2000));
    }
}

#[test]
fn images_loaded_by_linux_loader_pass() {
    if kvm_tests_skipped() {
        return;
    }
    for protocol in [Protocol::Linux64, Protocol::Pvh, Protocol::BzImage] {
        let mut spec = full_spec(protocol, 5);
        spec.use_linux_loader = true;
        assert_pass(&spec, protocol.name(), GuestExit::PowerOff(0x2000));
    }
}

#[test]
fn pvh_image_entered_at_its_elf_entry_reports_linux64() {
    if kvm_tests_skipped() {
        return;
    }
    let mut spec = full_spec(Protocol::Pvh, 6);
    spec.entry = EntryChoice::ElfEntry;
    spec.boot_data = Protocol::Linux64;
    assert_pass(&spec, "linux64", GuestExit::PowerOff(0x2000));
}

#[test]
fn bzimage_32bit_entry_fails_the_mode_check() {
    if kvm_tests_skipped() {
        return;
    }
    let mut spec = BootSpec::new(Protocol::BzImage);
    spec.entry = EntryChoice::BzImage32;
    let out = assert_fail(&spec, "mode", "long mode inactive at entry (EFER.LMA=0)");
    assert!(out.serial.starts_with("probe: protocol=bzimage\n"));
}

#[test]
fn linux_cmdline_pointer_zero_fails_the_cmdline_check() {
    if kvm_tests_skipped() {
        return;
    }
    for protocol in [Protocol::Linux64, Protocol::BzImage] {
        let mut spec = BootSpec::new(protocol);
        spec.cmdline = None;
        let out = assert_fail(&spec, "cmdline", "zero page cmd_line_ptr is 0");
        assert_eq!(out.lines().len(), 3, "serial:\n{}", out.serial);
    }
}

#[test]
fn linux_high_halves_of_cmdline_and_initrd_pointers_are_read() {
    if kvm_tests_skipped() {
        return;
    }
    let mut spec = BootSpec::new(Protocol::Linux64);
    spec.linux_ext_cmd_line_ptr = 1;
    assert_fail(&spec, "cmdline", "command line is above 4 GiB: 0x100020000");

    let mut spec = BootSpec::new(Protocol::BzImage);
    spec.initrd = Some(pseudo_random(100, 7));
    spec.linux_ext_ramdisk_image = 2;
    let start = 0x2_0000_0000 + spec.initrd_addr().unwrap_or_default();
    assert_fail(
        &spec,
        "initrd",
        &format!("initrd does not end below 4 GiB: start={start:#x}"),
    );
}

#[test]
fn pvh_and_multiboot_without_cmdline_print_it_empty_and_pass() {
    if kvm_tests_skipped() {
        return;
    }
    for protocol in [Protocol::Pvh, Protocol::Multiboot] {
        let mut spec = BootSpec::new(protocol);
        spec.cmdline = None;
        assert_pass(&spec, protocol.name(), GuestExit::PowerOff(0x2000));
    }
}

#[test]
fn long_cmdline_is_truncated_at_200_chars_and_still_parsed() {
    if kvm_tests_skipped() {
        return;
    }
    let mut cmdline: Vec<u8> = b"ctl=\x01\x7f ".to_vec();
    cmdline.extend((0..300).map(|i| b'a' + (i % 26) as u8));
    cmdline.extend(b" probe.exit=debug=9");
    let mut spec = BootSpec::new(Protocol::Linux64);
    spec.cmdline = Some(cmdline);
    assert_pass(&spec, "linux64", GuestExit::DebugExit(9));
}

#[test]
fn exit_modes_from_the_command_line() {
    if kvm_tests_skipped() {
        return;
    }
    let cases = [
        ("console=ttyS0", GuestExit::PowerOff(0x2000)),
        ("probe.exit=poweroff", GuestExit::PowerOff(0x2000)),
        ("a=b probe.exit=reset", GuestExit::Reset),
        ("probe.exit=panic x", GuestExit::Panic(1)),
        ("probe.exit=debug=7", GuestExit::DebugExit(7)),
        ("probe.exit=debug=0", GuestExit::DebugExit(0)),
        ("probe.exit=debug=255", GuestExit::DebugExit(255)),
        ("x\tprobe.exit=triple", GuestExit::TripleFault),
        ("probe.exit=hang", GuestExit::Halted),
        // Not at the start of a word: ignored.
        ("xprobe.exit=reset", GuestExit::PowerOff(0x2000)),
        // The first token wins.
        (
            "probe.exit=debug=3 probe.exit=reset",
            GuestExit::DebugExit(3),
        ),
    ];
    for (cmdline, exit) in cases {
        let spec = BootSpec::new(Protocol::Linux64).with_cmdline(cmdline);
        assert_pass(&spec, "linux64", exit);
    }
}

#[test]
fn exit_modes_after_the_switch_to_long_mode() {
    if kvm_tests_skipped() {
        return;
    }
    for protocol in [Protocol::Pvh, Protocol::Multiboot] {
        let cases = [
            ("probe.exit=triple", GuestExit::TripleFault),
            ("probe.exit=debug=42", GuestExit::DebugExit(42)),
            ("probe.exit=reset", GuestExit::Reset),
        ];
        for (cmdline, exit) in cases {
            let spec = BootSpec::new(protocol).with_cmdline(cmdline);
            assert_pass(&spec, protocol.name(), exit);
        }
    }
}

#[test]
fn bad_exit_values_fail_the_cmdline_check() {
    if kvm_tests_skipped() {
        return;
    }
    let cases = [
        ("probe.exit=sleep", "unknown probe.exit= value"),
        ("probe.exit=poweroffx", "unknown probe.exit= value"),
        ("probe.exit=", "unknown probe.exit= value"),
        (
            "probe.exit=debug=256",
            "probe.exit=debug=N needs a decimal N",
        ),
        ("probe.exit=debug=", "probe.exit=debug=N needs a decimal N"),
        (
            "probe.exit=debug=12x",
            "probe.exit=debug=N needs a decimal N",
        ),
    ];
    for (cmdline, detail) in cases {
        let spec = BootSpec::new(Protocol::Multiboot).with_cmdline(cmdline);
        let out = assert_fail(&spec, "cmdline", detail);
        let echoed = format!("probe: cmdline=\"{cmdline}\"");
        assert!(out.lines().contains(&echoed.as_str()), "{}", out.serial);
    }
}

#[test]
fn memory_maps_are_summed_for_every_protocol() {
    if kvm_tests_skipped() {
        return;
    }
    for protocol in Protocol::ALL {
        let mut spec = BootSpec::new(protocol);
        let mem = spec.mem_size;
        // Type-1 regions around reserved ones, one of them above 4 GiB (only counted).
        spec.memory_map = vec![
            (0, 0x9fc00, 1),
            (0x9fc00, 0x60400, 2),
            (0x10_0000, 0x80_0000, 1),
            (0x90_0000, 0x10_0000, 3),
            (0xa0_0000, mem - 0xa0_0000, 1),
            (0x1_0000_0000, 0x4000_0000, 1),
        ];
        assert_pass(&spec, protocol.name(), GuestExit::PowerOff(0x2000));
    }
}

#[test]
fn memory_map_without_ram_at_1_mib_fails_for_every_protocol() {
    if kvm_tests_skipped() {
        return;
    }
    for protocol in Protocol::ALL {
        let mut spec = BootSpec::new(protocol);
        spec.memory_map = vec![
            (0, 0x9fc00, 1),
            (0x9fc00, 0x60400, 2),
            (0x10_1000, spec.mem_size - 0x10_1000, 1),
        ];
        assert_fail(
            &spec,
            "memory",
            "no available (type 1) region contains 0x100000",
        );
    }
}

#[test]
fn hypervisor_cpuid_leaves_are_checked() {
    if kvm_tests_skipped() {
        return;
    }
    let mut spec = BootSpec::new(Protocol::Pvh);
    spec.hv_max_leaf = 0x4000_0001;
    assert_fail(
        &spec,
        "cpuid",
        "leaf 0x40000000 eax is below 0x40000010: eax=0x40000001",
    );
    let mut spec = BootSpec::new(Protocol::Linux64);
    spec.tsc_khz = 0;
    assert_fail(
        &spec,
        "cpuid",
        "leaf 0x40000010 reports a TSC frequency of 0 kHz",
    );
}

#[test]
fn rtc_update_in_progress_forever_fails() {
    if kvm_tests_skipped() {
        return;
    }
    let mut spec = BootSpec::new(Protocol::Linux64);
    spec.rtc_uip_stuck = true;
    assert_fail(
        &spec,
        "rtc",
        "update in progress (UIP) stayed set for 1000 reads: status_a=0xa6",
    );
}

#[test]
fn rtc_values_are_echoed() {
    if kvm_tests_skipped() {
        return;
    }
    let mut spec = BootSpec::new(Protocol::Multiboot);
    spec.rtc_status_a = 0x2f;
    spec.rtc_time = (0x23, 0x59, 0x07);
    assert_pass(&spec, "multiboot", GuestExit::PowerOff(0x2000));
}

#[test]
fn wrong_magic_fails_the_magic_check() {
    if kvm_tests_skipped() {
        return;
    }
    let mut spec = BootSpec::new(Protocol::Linux64);
    spec.linux_boot_flag = 0x1234;
    let out = assert_fail(&spec, "magic", "zero page boot_flag is not 0xaa55: 0x1234");
    assert_eq!(out.lines().len(), 1, "the magic check comes first");

    let mut spec = BootSpec::new(Protocol::Pvh);
    spec.pvh_magic = 0xdead_beef;
    assert_fail(
        &spec,
        "magic",
        "hvm_start_info magic is not 0x336ec578: 0xdeadbeef",
    );

    let mut spec = BootSpec::new(Protocol::Multiboot);
    spec.multiboot_magic = 0x1bad_b002;
    assert_fail(&spec, "magic", "eax is not 0x2badb002: 0x1badb002");

    let mut spec = BootSpec::new(Protocol::Multiboot);
    spec.multiboot_clear_flags = 1 << 6;
    assert_fail(
        &spec,
        "magic",
        "multiboot info lacks MEM_MAP (flags bit 6): flags=0x205",
    );
}

#[test]
fn virtio_tokens_after_a_double_dash_are_ignored() {
    if kvm_tests_skipped() {
        return;
    }
    // Everything after `--` belongs to init, as for Linux: no device, no new output.
    for protocol in [Protocol::Linux64, Protocol::Multiboot] {
        let spec = BootSpec::new(protocol)
            .with_cmdline("console=ttyS0 -- virtio_mmio.device=4K@0xd0000000:5");
        assert_pass(&spec, protocol.name(), GuestExit::PowerOff(0x2000));
    }
}

#[test]
fn virtio_token_without_a_device_fails_the_magic_check() {
    if kvm_tests_skipped() {
        return;
    }
    // This harness answers every MMIO read with all ones: no virtio magic there.
    for (protocol, token) in [
        (Protocol::Pvh, "virtio_mmio.device=4K@0xd0000000:5"),
        (
            Protocol::BzImage,
            "libvirtio_mmio.device=0x200@0xd0001000:6:1",
        ),
    ] {
        let spec = BootSpec::new(protocol).with_cmdline(&format!("console=ttyS0 {token}"));
        let base = token
            .split_once('@')
            .and_then(|(_, rest)| rest.split_once(':'))
            .map(|(base, _)| base)
            .unwrap_or_default();
        let out = assert_fail(
            &spec,
            "virtio",
            &format!("no virtio-mmio magic 0x74726976 at base={base}"),
        );
        assert!(
            out.serial.contains("probe: rtc "),
            "the virtio checks run after the RTC check:\n{}",
            out.serial
        );
    }
}

#[test]
fn malformed_virtio_tokens_fail() {
    if kvm_tests_skipped() {
        return;
    }
    for token in [
        "virtio_mmio.device=4K@0xd0000000",
        "virtio_mmio.device=4K@0xd0000000:",
        "virtio_mmio.device=4K0xd0000000:5",
        "virtio_mmio.device=4K@0x1d0000000:5",
        "virtio_mmio.device=4K@0xfffff800:5",
        "virtio_mmio.device=16@0xd0000000:5",
        "virtio_mmio.device=4K@0xd0000000:5x",
        "virtio_mmio.device=@0xd0000000:5",
    ] {
        let spec = BootSpec::new(Protocol::Linux64).with_cmdline(token);
        assert_fail(&spec, "virtio", "bad virtio_mmio.device= token");
    }
}

#[test]
fn more_than_eight_virtio_tokens_fail_before_any_device_is_touched() {
    if kvm_tests_skipped() {
        return;
    }
    let tokens = |n: u32| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "virtio_mmio.device=4K@{:#x}:{}",
                    0xd000_0000 + i * 0x1000,
                    5 + i
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let spec = BootSpec::new(Protocol::Linux64).with_cmdline(&tokens(9));
    assert_fail(&spec, "virtio", "more than 8 virtio_mmio.device= tokens");
    // Eight are accepted: the first device is probed (and has no magic here).
    let spec = BootSpec::new(Protocol::Linux64).with_cmdline(&tokens(8));
    assert_fail(
        &spec,
        "virtio",
        "no virtio-mmio magic 0x74726976 at base=0xd0000000",
    );
}

#[test]
fn fnv1a_reference_matches_published_vectors() {
    // Vectors from the FNV reference (draft-eastlake-fnv): the test's own hash must
    // be right for the initrd comparisons above to mean anything.
    assert_eq!(fnv1a(b""), 0x811c_9dc5);
    assert_eq!(fnv1a(b"a"), 0xe40c_292c);
    assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
}
