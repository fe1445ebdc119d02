//! Real guests on a complete x86 CPU, one level down: QEMU (TCG, emulated AMD EPYC with SVM)
//! boots a Debian cloud kernel whose `kvm_amd` gives a real `/dev/kvm`, and `edgevisor` runs
//! our firmware probes and that same Debian kernel on it.
//!
//! Every test here reads the serial log of ONE L1 boot (TCG costs seconds per boot), made on
//! first use and shared through a `OnceLock`. Each check is a named step of the L1 `/init`, so a
//! failing test quotes just its step's output. Needs: scripts/install-test-deps.sh (QEMU,
//! busybox-static, cpio, xz) and apt lists that know a linux-image-6.1.0-*-cloud-amd64 package;
//! the kernel is downloaded once into `<target>/nested-cache/`.

use std::sync::OnceLock;
use std::time::Duration;

use tests::nested::{
    busybox, edgevisor_binary, DebianKernel, Initramfs, L1Builder, L1Run, NestedError, ScratchDir,
    Step, StepOutput, KVM_SETUP_STEP,
};

/// The protocols `firmware::all()` must provide probes for.
const PROTOCOLS: [&str; 4] = ["linux64", "pvh", "multiboot", "bzimage"];
/// Per-probe limit inside L1 (a probe boots in well under a second even there).
const PROBE_SECS: u32 = 20;
/// Limit for booting the Debian kernel as an L2 guest.
const L2_SECS: u32 = 60;
/// QEMU's allowance for booting L1 and powering off, on top of the steps' limits.
const L1_BOOT_ALLOWANCE: Duration = Duration::from_secs(60);
/// The line the L2 `/init` prints, followed by `release=$(uname -r)`.
const L2_MARKER: &str = "L2-INIT-OK";

/// Prints the marker with the release and the CPU count, then powers off through ACPI.
const L2_INIT: &str = "#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
echo \"L2-INIT-OK release=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo)\"
poweroff -f
";

/// Extracts the ELF vmlinux from a bzImage whose payload is LZ4 (Debian's 6.1 kernels), with
/// the `lz4` tool, so the PVH entry of a real Linux gets exercised too.
fn extract_vmlinux(bzimage: &std::path::Path, out: &std::path::Path) -> Result<(), String> {
    let bytes = std::fs::read(bzimage).map_err(|e| format!("read {}: {e}", bzimage.display()))?;
    let magic = [0x02, 0x21, 0x4c, 0x18]; // LZ4 legacy frame
    let at = bytes
        .windows(4)
        .position(|w| w == magic)
        .ok_or("no LZ4 payload in the bzImage")?;
    let mut child = std::process::Command::new("lz4")
        .args(["-dc", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("lz4 (apt-get install lz4): {e}"))?;
    let mut stdin = child.stdin.take().ok_or("lz4 stdin")?;
    let payload = bytes[at..].to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        // lz4 stops reading at the end of its frame; the bzImage tail is ignored.
        let _ = stdin.write_all(&payload);
    });
    let output = child.wait_with_output().map_err(|e| format!("lz4: {e}"))?;
    let _ = writer.join();
    if output.stdout.get(..4) != Some(b"\x7fELF") {
        return Err("lz4 did not produce an ELF vmlinux".into());
    }
    std::fs::write(out, &output.stdout).map_err(|e| format!("write {}: {e}", out.display()))
}

/// Runs `command`, prints `EXIT=<status>` and exits with that status.
fn exit_recorded(command: &str) -> String {
    format!("{command}\nrc=$?\necho \"EXIT=$rc\"\nexit $rc\n")
}

fn probe_step(name: &str) -> String {
    format!("probe-{name}")
}

struct Boot {
    kernel: DebianKernel,
    probes: Vec<String>,
    run: L1Run,
}

fn boot_l1() -> Result<Boot, NestedError> {
    let kernel = DebianKernel::ensure()?;
    let edgevisor = edgevisor_binary()?;
    let work = ScratchDir::new("nested-test")?;

    let mut l2 = Initramfs::with_busybox(&busybox())?;
    l2.set_init(L2_INIT)?;
    let l2_initrd = work.path().join("l2-initrd.cpio");
    l2.write(&l2_initrd)?;
    let vmlinux = work.path().join("vmlinux");
    extract_vmlinux(&kernel.vmlinuz, &vmlinux).map_err(NestedError::Other)?;

    let mut l1 = L1Builder::new(&kernel)?;
    let fs = l1.initramfs();
    fs.add_executable("/bin/edgevisor", &edgevisor)?;
    fs.add_file("/l2/vmlinuz", &kernel.vmlinuz)?;
    fs.add_file("/l2/initrd", &l2_initrd)?;
    fs.add_file("/l2/vmlinux", &vmlinux)?;
    let mut probes = Vec::new();
    for (name, bytes) in firmware::all() {
        fs.add_bytes(&format!("/probes/{name}"), *bytes, 0o644)?;
        probes.push(name.to_string());
    }

    l1.step(Step::new("dev-kvm", "ls -l /dev/kvm").with_timeout(10))?;
    l1.step(Step::new("edgevisor-version", "edgevisor --version").with_timeout(10))?;
    for name in &probes {
        let run = format!(
            "edgevisor run --kernel /probes/{name} --cmdline \"probe.exit=poweroff\" --timings"
        );
        l1.step(Step::new(&probe_step(name), &exit_recorded(&run)).with_timeout(PROBE_SECS))?;
    }
    // The bzImage through its 64-bit entry, with two vCPUs (ACPI MADT: Debian's cloud kernel
    // has no MP-table parser), and the ELF vmlinux inside it through its PVH entry.
    let l2_run = "edgevisor run --kernel /l2/vmlinuz --initrd /l2/initrd --vcpus 2 \
                  --cmdline \"console=ttyS0 reboot=k panic=-1\" --mem 256M --timings";
    l1.step(Step::new("l2-linux", &exit_recorded(l2_run)).with_timeout(L2_SECS))?;
    let pvh_run = "edgevisor run --kernel /l2/vmlinux --initrd /l2/initrd \
                   --cmdline \"console=ttyS0 reboot=k panic=-1\" --mem 256M --timings";
    l1.step(Step::new("l2-linux-pvh", &exit_recorded(pvh_run)).with_timeout(L2_SECS))?;

    let run = l1.boot(work.path(), L1_BOOT_ALLOWANCE)?;
    eprintln!(
        "nested: {} {} booted in L1; QEMU ran {:.1} s; all steps done: {}",
        kernel.package,
        kernel.version,
        run.elapsed.as_secs_f64(),
        run.completed()
    );
    Ok(Boot {
        kernel,
        probes,
        run,
    })
}

/// The shared L1 boot; every test fails with the same message if it could not be made.
fn boot() -> &'static Boot {
    static BOOT: OnceLock<Result<Boot, String>> = OnceLock::new();
    BOOT.get_or_init(|| boot_l1().map_err(|e| e.to_string()))
        .as_ref()
        .unwrap_or_else(|e| panic!("the L1 guest could not be booted: {e}"))
}

/// The output of step `name`, or a panic quoting the end of the serial log.
fn step(name: &str) -> StepOutput {
    boot().run.step(name).unwrap_or_else(|e| panic!("{e}"))
}

fn show(step: &StepOutput) -> String {
    format!(
        "step {} rc={} timed_out={} seconds={:?}; output:\n{}",
        step.name, step.rc, step.timed_out, step.seconds, step.output
    )
}

#[test]
fn l1_loads_kvm_amd_and_has_dev_kvm() {
    let setup = step(KVM_SETUP_STEP);
    assert_eq!(setup.rc, 0, "{}", show(&setup));
    assert!(
        setup.has_line_containing("Nested Paging enabled"),
        "{}",
        show(&setup)
    );

    let ls = step("dev-kvm");
    assert_eq!(ls.rc, 0, "{}", show(&ls));
    let line = ls
        .output
        .lines()
        .find(|l| l.contains("/dev/kvm"))
        .unwrap_or_else(|| panic!("{}", show(&ls)));
    assert!(
        line.starts_with('c'),
        "/dev/kvm is not a character device: {line}"
    );
    assert!(
        line.contains("10,") && line.contains("232"),
        "not misc 10:232: {line}"
    );
}

#[test]
fn l1_runs_every_step_and_powers_off() {
    let boot = boot();
    assert!(boot.run.completed(), "{}", boot.run.tail(80));
}

#[test]
fn edgevisor_and_its_shared_libraries_run_in_l1() {
    let version = step("edgevisor-version");
    assert_eq!(version.rc, 0, "{}", show(&version));
    assert!(
        version.has_line_containing("edgevisor"),
        "{}",
        show(&version)
    );
}

#[test]
fn every_firmware_probe_passes_under_edgevisor_in_l1() {
    let boot = boot();
    for protocol in PROTOCOLS {
        assert!(
            boot.probes.iter().any(|p| p == protocol),
            "firmware::all() has no {protocol} probe: {:?}",
            boot.probes
        );
    }
    let mut failures = Vec::new();
    for name in &boot.probes {
        let out = step(&probe_step(name));
        let passed = out.has_line_containing(&format!("PROBE PASS protocol={name}"));
        if !passed || !out.has_line_containing("EXIT=0") || out.rc != 0 {
            failures.push(show(&out));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn assert_l2_boot(step_name: &str, protocol: &str, cpus: u32) {
    let boot = boot();
    let l2 = step(step_name);
    let expected = format!("{L2_MARKER} release={} cpus={cpus}", boot.kernel.release);
    assert!(
        l2.has_line_containing(&expected),
        "no {expected:?} in {}",
        show(&l2)
    );
    assert!(
        l2.has_line_containing(&format!("via {protocol} with 256 MiB, {cpus} vCPU(s)")),
        "{}",
        show(&l2)
    );
    // The guest's own `poweroff -f` reaches edgevisor through ACPI (\\_S5, PM1a control).
    assert!(
        l2.has_line_containing("guest powered off (ACPI S5)"),
        "{}",
        show(&l2)
    );
    assert!(l2.has_line_containing("EXIT=0"), "{}", show(&l2));
    assert_eq!(l2.rc, 0, "{}", show(&l2));
}

#[test]
fn debian_bzimage_boots_to_init_on_two_vcpus_and_powers_off() {
    assert_l2_boot("l2-linux", "linux64", 2);
}

#[test]
fn debian_vmlinux_boots_to_init_through_pvh() {
    assert_l2_boot("l2-linux-pvh", "pvh", 1);
}
