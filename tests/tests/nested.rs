//! Real guests on a complete x86 CPU, one level down: QEMU (TCG, emulated AMD EPYC with SVM)
//! boots a Debian cloud kernel whose `kvm_amd` gives a real `/dev/kvm`, and `edgevisor` runs
//! our firmware probes and that same Debian kernel on it.
//!
//! Every test here reads the serial log of ONE L1 boot (TCG costs seconds per boot), made on
//! first use and shared through a `OnceLock`. Each check is a named step of the L1 `/init`, so a
//! failing test quotes just its step's output. The Debian kernel boots as an L2 guest three ways:
//! the bzImage through its 64-bit entry on two vCPUs, and the ELF vmlinux unpacked from it through
//! its PVH entry on two vCPUs and through its 64-bit ELF entry (with a zero page) on one.
//! L1 is QEMU's q35 machine with an emulated Intel IOMMU and QEMU's `edu` PCI device, so one
//! step (`vfio-edu`) can pass edu through to a probe guest with `--device vfio=`: L1 loads the
//! cloud kernel's VFIO modules and binds edu to vfio-pci; the step itself takes about 1.5 s.
//! Needs: scripts/install-test-deps.sh (QEMU, busybox-static, cpio, xz, lz4, binutils) and apt
//! lists that know a linux-image-6.1.0-*-cloud-amd64 package; the kernel is downloaded once into
//! `<target>/nested-cache/` and its vmlinux is unpacked beside it.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

use std::sync::OnceLock;
use std::time::Duration;

use tests::nested::{
    busybox, edgevisor_binary, pvh_entry, DebianKernel, Initramfs, L1Builder, L1Run, NestedError,
    ScratchDir, Step, StepOutput, KVM_SETUP_STEP,
};

/// The protocols `firmware::all()` must provide probes for.
const PROTOCOLS: [&str; 4] = ["linux64", "pvh", "multiboot", "bzimage"];
/// Per-probe limit inside L1 (a probe boots in well under a second even there).
const PROBE_SECS: u32 = 20;
/// Limit for booting the Debian kernel as an L2 guest (10-12 s in L1 on a 2-core host).
const L2_SECS: u32 = 45;
/// QEMU's allowance for booting L1 and powering off, on top of the steps' limits.
const L1_BOOT_ALLOWANCE: Duration = Duration::from_secs(60);
/// The line the L2 `/init` prints first, followed by `release=$(uname -r)`.
const L2_MARKER: &str = "L2-INIT-OK";
/// The L2 `/init` prints `L2-CPUS=<processors in /proc/cpuinfo>`.
const L2_CPUS: &str = "L2-CPUS=";
/// The same kernel command line for every L2 boot.
const L2_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// One `/init` for every L2 boot: markers that do not depend on the boot protocol, then power
/// off through ACPI.
const L2_INIT: &str = "#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
echo \"L2-INIT-OK release=$(uname -r)\"
echo \"L2-CPUS=$(grep -c ^processor /proc/cpuinfo)\"
if grep -q l2.virtio /proc/cmdline; then
  mount -t sysfs sysfs /sys
  mount -t devtmpfs devtmpfs /dev
  for m in virtio_ring virtio virtio_mmio virtio_blk virtio-rng failover net_failover virtio_net; do
    insmod /modules/$m.ko || echo \"L2-INSMOD-FAILED $m\"
  done
  for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.2; done
  echo \"L2-VIRTIO-DEVICES=$(ls /sys/bus/virtio/devices | wc -l)\"
  echo \"L2-VDA-HEAD=$(head -c 17 /dev/vda)\"
  echo \"L2-VDA-SECTORS=$(cat /sys/block/vda/size)\"
  head -c 17 /dev/vda > /tmp/copy
  echo ' copied by L2' >> /tmp/copy
  dd if=/tmp/copy of=/dev/vda bs=512 seek=8 conv=notrunc,fsync 2>/dev/null && echo L2-VDA-WRITE-OK
  echo \"L2-HWRNG=$(cat /sys/class/misc/hw_random/rng_current)\"
  echo \"L2-HWRNG-BYTES=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | wc -c)\"
  ip link set eth0 up
  ip addr add 169.254.10.2/24 dev eth0
  ping -c 3 -W 3 169.254.10.1 && echo L2-PING-OK
fi
if grep -q l2.nvme /proc/cmdline; then
  mount -t sysfs sysfs /sys
  mount -t devtmpfs devtmpfs /dev
  for i in $(seq 1 50); do [ -b /dev/nvme0n1 ] && break; sleep 0.2; done
  echo \"L2-NVME-HEAD=$(head -c 19 /dev/nvme0n1)\"
  echo \"L2-NVME-SERIAL=$(cat /sys/class/nvme/nvme0/serial)\"
  head -c 19 /dev/nvme0n1 > /tmp/copy
  echo ' copied by L2' >> /tmp/copy
  dd if=/tmp/copy of=/dev/nvme0n1 bs=512 seek=8 conv=notrunc,fsync 2>/dev/null && echo L2-NVME-WRITE-OK
  modes=$(cat /sys/bus/pci/devices/*/msi_irqs/*)
  echo \"L2-NVME-VECTORS msix=$(echo \"$modes\" | grep -c '^msix$') msi=$(echo \"$modes\" | grep -c '^msi$')\"
  grep nvme0q /proc/interrupts | sed 's/^/L2-IRQ/'
fi
poweroff -f
";

/// An L2 boot of the Debian kernel: the step name, how edgevisor is asked to boot it and what it
/// must report.
struct L2Boot {
    step: &'static str,
    /// Guest path of the kernel image in L1.
    kernel: &'static str,
    /// `--boot-protocol`, when the image's default is not wanted.
    forced: Option<&'static str>,
    /// The protocol edgevisor must name in `via <protocol>`.
    protocol: &'static str,
    vcpus: u32,
}

impl L2Boot {
    fn command(&self) -> String {
        let forced = self
            .forced
            .map(|p| format!(" --boot-protocol {p}"))
            .unwrap_or_default();
        format!(
            "edgevisor run --kernel {}{forced} --initrd /l2/initrd --vcpus {} \
             --cmdline \"{L2_CMDLINE}\" --mem 256M --timings",
            self.kernel, self.vcpus
        )
    }
}

/// The bzImage through its 64-bit entry on two vCPUs (the ACPI MADT lists them: Debian's cloud
/// kernel has no MP-table parser).
const L2_BZIMAGE: L2Boot = L2Boot {
    step: "l2-linux",
    kernel: "/l2/vmlinuz",
    forced: None,
    protocol: "linux64",
    vcpus: 2,
};
/// The ELF vmlinux through its PVH entry (edgevisor's default for an ELF with the PVH note), two
/// vCPUs: PVH start info, the ACPI tables reached through `rsdp_paddr`, AP startup.
const L2_PVH: L2Boot = L2Boot {
    step: "l2-linux-pvh",
    kernel: "/l2/vmlinux",
    forced: None,
    protocol: "pvh",
    vcpus: 2,
};
/// The ELF vmlinux through its 64-bit ELF entry with a zero page, one vCPU.
const L2_ELF64: L2Boot = L2Boot {
    step: "l2-linux-elf64",
    kernel: "/l2/vmlinux",
    forced: Some("linux64"),
    protocol: "linux64",
    vcpus: 1,
};
const L2_BOOTS: [&L2Boot; 3] = [&L2_BZIMAGE, &L2_PVH, &L2_ELF64];

/// The Debian kernel with a virtio disk, network card and entropy source: it finds them
/// through the DSDT, reads the disk, copies its head to sector 8 with a flush, reads the
/// hardware RNG and pings L1 across the TAP edgevisor created; L1 then reads sector 8 of the
/// image file. Link-local addresses, inside the L1 guest only.
const L2_VIRTIO_STEP: &str = "l2-virtio";
const L2_VIRTIO_SCRIPT: &str = "dd if=/dev/zero of=/tmp/disk.img bs=1024 count=4096 2>/dev/null
printf 'edgevisor-l1-disk' | dd of=/tmp/disk.img conv=notrunc 2>/dev/null
edgevisor run --kernel /l2/vmlinuz --initrd /l2/initrd --mem 256M \
  --disk path=/tmp/disk.img --rng --net tap=evl2,mac=02:00:00:00:10:02 \
  --report /tmp/virtio-report.json \
  --cmdline \"console=ttyS0 reboot=k panic=-1 l2.virtio\" &
vm=$!
# edgevisor creates the TAP; give L1's side an address once it is there.
for i in $(seq 1 100); do ip link show evl2 >/dev/null 2>&1 && break; sleep 0.1; done
ip addr add 169.254.10.1/24 dev evl2
ip link set evl2 up
wait $vm
rc=$?
echo \"L1-SECTOR8=$(dd if=/tmp/disk.img bs=512 skip=8 count=1 2>/dev/null | head -c 30)\"
grep -o '\"flushes\": [0-9]*' /tmp/virtio-report.json | sed 's/^/L1-REPORT-/'
echo \"EXIT=$rc\"
exit $rc
";

/// `--device vfio=`: L1 loads VFIO, binds QEMU's edu device (behind QEMU's Intel IOMMU) to
/// vfio-pci with `edgevisor sriov bind-vfio`, and edgevisor passes it through to the probe,
/// which finds it on its PCI bus, reads its ID register and computes a factorial through
/// BAR 0, has it DMA through the IOMMU mapping of guest RAM and waits for its MSI.
const VFIO_STEP: &str = "vfio-edu";
const VFIO_SCRIPT: &str = "status=0
for m in vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci; do
  insmod /vfio/$m.ko || { echo \"insmod $m failed\"; status=1; }
done
bdf=
for d in /sys/bus/pci/devices/*; do
  [ \"$(cat $d/vendor) $(cat $d/device)\" = '0x1234 0x11e8' ] && bdf=${d##*/}
done
echo \"EDU-BDF=$bdf IOMMU-GROUPS=$(ls /sys/kernel/iommu_groups | wc -l)\"
if [ -z \"$bdf\" ] || [ $status != 0 ]; then dmesg | grep -i -e dmar -e iommu -e vfio | tail -20; exit 1; fi
edgevisor sriov bind-vfio $bdf
edgevisor sriov check $bdf
edgevisor run --device vfio=$bdf --cmdline \"probe.pci probe.edu probe.exit=poweroff\" --timings
rc=$?
echo \"EXIT=$rc\"
dmesg | grep -i -e vfio -e dmar | tail -8
exit $rc
";

/// MSI-X through `--device vfio=`: QEMU's NVMe controller (behind the same IOMMU as edu) is
/// bound to vfio-pci and passed through to the probe, whose NVMe driver (`probe.nvme`)
/// programs two MSI-X vectors in the table in BAR 0, identifies the controller on the admin
/// queue (vector 0) and reads LBA 0 through an I/O queue pair (vector 1). Then the Debian
/// kernel boots as L2 with the same function: its own nvme driver sets up MSI-X, reads LBA 0,
/// and copies it to sector 8 with a flush, which the host later finds in the image file.
/// Linux finds bus 0 through the host bridge (PNP0A03) in edgevisor's DSDT, with no `pci=`
/// option. The VFIO modules are loaded by the edu step unless already there.
const VFIO_NVME_STEP: &str = "vfio-nvme";
/// The serial number L1's NVMe controller reports, and the head of its disk's LBA 0.
const NVME_SERIAL: &str = "edgevisor";
const NVME_LBA0: &[u8] = b"edgevisor-nvme-disk";
const VFIO_NVME_SCRIPT: &str = "status=0
for m in vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci; do
  [ -d /sys/module/$(echo $m | tr - _) ] || insmod /vfio/$m.ko || { echo \"insmod $m failed\"; status=1; }
done
bdf=
for d in /sys/bus/pci/devices/*; do
  [ \"$(cat $d/class)\" = 0x010802 ] && bdf=${d##*/}
done
echo \"NVME-BDF=$bdf GROUP=$(basename $(readlink /sys/bus/pci/devices/$bdf/iommu_group)) DRIVER=$(basename $(readlink /sys/bus/pci/devices/$bdf/driver) 2>/dev/null)\"
if [ -z \"$bdf\" ] || [ $status != 0 ]; then exit 1; fi
ls /sys/bus/pci/devices/$bdf/iommu_group/devices
edgevisor sriov bind-vfio $bdf
edgevisor sriov check $bdf
edgevisor run --device vfio=$bdf --cmdline \"probe.pci probe.nvme probe.exit=poweroff\" --timings
rc=$?
echo \"EXIT=$rc\"
edgevisor run --kernel /l2/vmlinuz --initrd /l2/initrd --mem 256M --device vfio=$bdf \\
  --cmdline \"console=ttyS0 reboot=k panic=-1 l2.nvme\"
l2rc=$?
echo \"L2-EXIT=$l2rc\"
dmesg | grep -i -e vfio -e dmar | tail -8
[ $rc = 0 ] && rc=$l2rc
exit $rc
";

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
    /// Sector 8 of L1's NVMe disk image after QEMU exited (L2 writes it).
    nvme_sector8: Vec<u8>,
}

fn boot_l1() -> Result<Boot, NestedError> {
    let kernel = DebianKernel::ensure()?;
    let edgevisor = edgevisor_binary()?;
    let work = ScratchDir::new("nested-test")?;

    let mut l2 = Initramfs::with_busybox(&busybox())?;
    l2.set_init(L2_INIT)?;
    for module in &kernel.guest_modules {
        let name = module
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        l2.add_file(&format!("/modules/{name}"), module)?;
    }
    let l2_initrd = work.path().join("l2-initrd.cpio");
    l2.write(&l2_initrd)?;
    let vmlinux = kernel.vmlinux()?;

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
    for l2_boot in L2_BOOTS {
        let script = exit_recorded(&l2_boot.command());
        l1.step(Step::new(l2_boot.step, &script).with_timeout(L2_SECS))?;
    }
    l1.step(Step::new(L2_VIRTIO_STEP, L2_VIRTIO_SCRIPT).with_timeout(120))?;
    l1.with_edu_behind_an_iommu();
    for module in &kernel.vfio_modules {
        let name = module
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        l1.initramfs().add_file(&format!("/vfio/{name}"), module)?;
    }
    l1.step(Step::new(VFIO_STEP, VFIO_SCRIPT).with_timeout(90))?;
    let nvme_disk = work.path().join("nvme.img");
    let mut disk = vec![0u8; 1 << 20];
    disk[..NVME_LBA0.len()].copy_from_slice(NVME_LBA0);
    std::fs::write(&nvme_disk, disk).map_err(|source| NestedError::Io {
        path: nvme_disk.clone(),
        source,
    })?;
    l1.with_nvme(&nvme_disk, NVME_SERIAL);
    l1.step(Step::new(VFIO_NVME_STEP, VFIO_NVME_SCRIPT).with_timeout(90))?;

    let run = l1.boot(work.path(), L1_BOOT_ALLOWANCE)?;
    let nvme_sector8 = std::fs::read(&nvme_disk)
        .map_err(|source| NestedError::Io {
            path: nvme_disk.clone(),
            source,
        })?
        .get(4096..4096 + 512)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    eprintln!(
        "nested: {} {} booted in L1; QEMU ran {:.1} s; all steps done: {}",
        kernel.package,
        kernel.version,
        run.elapsed.as_secs_f64(),
        run.completed()
    );
    for l2_boot in L2_BOOTS {
        if let Ok(out) = run.step(l2_boot.step) {
            eprintln!(
                "nested: step {} took {:.1} s in L1 (rc {})",
                out.name,
                out.seconds.unwrap_or(f64::NAN),
                out.rc
            );
        }
    }
    Ok(Boot {
        kernel,
        probes,
        run,
        nvme_sector8,
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

fn assert_l2_boot(l2_boot: &L2Boot) {
    let boot = boot();
    let l2 = step(l2_boot.step);
    let booting = format!(
        "via {} with 256 MiB, {} vCPU(s)",
        l2_boot.protocol, l2_boot.vcpus
    );
    assert!(
        l2.has_line_containing(&booting),
        "no {booting:?} in {}",
        show(&l2)
    );
    let init = format!("{L2_MARKER} release={}", boot.kernel.release);
    assert!(
        l2.has_line_containing(&init),
        "no {init:?} in {}",
        show(&l2)
    );
    let cpus = l2
        .output
        .lines()
        .find_map(|l| l.trim().strip_prefix(L2_CPUS))
        .unwrap_or_else(|| panic!("no {L2_CPUS} line in {}", show(&l2)));
    assert_eq!(
        cpus,
        l2_boot.vcpus.to_string(),
        "the L2 kernel sees {cpus} CPU(s), edgevisor gave it {}; {}",
        l2_boot.vcpus,
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
fn debian_vmlinux_unpacked_from_the_bzimage_has_the_pvh_note() {
    let kernel = DebianKernel::ensure().unwrap_or_else(|e| panic!("{e}"));
    let vmlinux = kernel.vmlinux().unwrap_or_else(|e| panic!("{e}"));
    let entry = pvh_entry(&vmlinux)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| {
            panic!(
                "readelf -n {} shows no Xen note of type 0x12 (XEN_ELFNOTE_PHYS32_ENTRY)",
                vmlinux.display()
            )
        });
    // A 32-bit physical address above the first MiB, where the kernel is loaded.
    assert!(
        (0x10_0000..0x1_0000_0000).contains(&entry),
        "PVH entry {entry:#x} is not a physical address the kernel could start at"
    );
}

#[test]
fn debian_bzimage_boots_to_init_on_two_vcpus_and_powers_off() {
    assert_l2_boot(&L2_BZIMAGE);
}

#[test]
fn debian_vmlinux_boots_to_init_through_pvh_on_two_vcpus() {
    assert_l2_boot(&L2_PVH);
}

#[test]
fn debian_vmlinux_boots_to_init_through_its_64_bit_elf_entry() {
    assert_l2_boot(&L2_ELF64);
}

#[test]
fn edu_passed_through_with_vfio_answers_the_probe_with_dma_and_msi() {
    let out = step(VFIO_STEP);
    let has = |needle: &str| out.has_line_containing(needle);
    assert!(!has("failed"), "{}", show(&out));
    let bdf = out
        .output
        .lines()
        .find_map(|l| l.trim().strip_prefix("EDU-BDF="))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("L1 has no edu function: {}", show(&out)))
        .to_string();
    // The probe sees the host bridge, then edu with its 1 MiB BAR in the PCI window.
    assert!(
        has("probe: pci 00:00.0 8086:0d57 class=060000"),
        "{}",
        show(&out)
    );
    assert!(
        has("probe: pci 00:01.0 1234:11e8 class=00ff00 bar0=mem32@0xc0000000+0x100000"),
        "{bdf}: {}",
        show(&out)
    );
    assert!(
        has("probe: edu id=0x010000ed factorial(5)=120 dma=256 msi=0x40"),
        "{}",
        show(&out)
    );
    assert!(has("PROBE PASS"), "{}", show(&out));
    assert!(has("EXIT=0"), "{}", show(&out));
    assert_eq!(out.rc, 0, "{}", show(&out));
}

#[test]
fn nvme_passed_through_with_vfio_answers_the_probe_with_msix() {
    let out = step(VFIO_NVME_STEP);
    let has = |needle: &str| out.has_line_containing(needle);
    assert!(!has("failed"), "{}", show(&out));
    assert!(
        has("NVME-BDF=0000:"),
        "L1 has no NVMe function: {}",
        show(&out)
    );
    // The probe sees the host bridge, then the controller with its 16 KiB 64-bit BAR 0
    // (registers, doorbells, the MSI-X table and pending bits) in the PCI window.
    assert!(
        has("probe: pci 00:00.0 8086:0d57 class=060000"),
        "{}",
        show(&out)
    );
    assert!(
        has("probe: pci 00:01.0 1b36:0010 class=010802 bar0=mem64@0xc0000000+0x4000"),
        "{}",
        show(&out)
    );
    // Identify Controller and the read of LBA 0 DMA'd through the IOMMU mapping of guest
    // RAM; their completions raised MSI-X vectors 0 and 1, routed to vectors 0x42 and 0x43.
    let expected = format!(
        "probe: nvme vid=0x1b36 serial={NVME_SERIAL} admin-msix=0x42 lba0={} io-msix=0x43 masked=held",
        String::from_utf8_lossy(NVME_LBA0)
    );
    assert!(has(&expected), "no {expected:?} in {}", show(&out));
    assert!(has("PROBE PASS"), "{}", show(&out));
    assert!(has("EXIT=0"), "{}", show(&out));

    // The Debian kernel in L2 found bus 0 through the host bridge in edgevisor's DSDT (it
    // gets no `pci=` option), then drove the controller on MSI-X (it has no MSI capability).
    assert!(
        has("ACPI: PCI Root Bridge [PCI0] (domain 0000 [bus 00])"),
        "{}",
        show(&out)
    );
    let head = format!("L2-NVME-HEAD={}", String::from_utf8_lossy(NVME_LBA0));
    assert!(has(&head), "{}", show(&out));
    assert!(
        has(&format!("L2-NVME-SERIAL={NVME_SERIAL}")),
        "{}",
        show(&out)
    );
    assert!(has("L2-NVME-WRITE-OK"), "{}", show(&out));
    let vectors = out
        .output
        .lines()
        .find_map(|l| l.trim().strip_prefix("L2-NVME-VECTORS "))
        .unwrap_or_else(|| panic!("no vector count from L2: {}", show(&out)));
    let msix: u32 = vectors
        .strip_prefix("msix=")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        msix >= 2 && vectors.ends_with(" msi=0"),
        "L2's nvme driver should use MSI-X only, admin and I/O queue apart: {vectors}; {}",
        show(&out)
    );
    // Interrupts counted on the admin queue and on the I/O queue, each its own vector.
    for queue in ["nvme0q0", "nvme0q1"] {
        let count: u64 = out
            .output
            .lines()
            .filter_map(|l| l.trim().strip_prefix("L2-IRQ"))
            .find(|l| l.trim_end().ends_with(queue))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no /proc/interrupts line for {queue}: {}", show(&out)));
        assert!(count > 0, "no interrupt on {queue}: {}", show(&out));
    }
    assert!(has("L2-EXIT=0"), "{}", show(&out));
    assert_eq!(out.rc, 0, "{}", show(&out));
    // L2's write and flush reached the image file on the host through two VFIO levels.
    let copied = [NVME_LBA0, b" copied by L2"].concat();
    let sector8 = &boot().nvme_sector8;
    assert!(
        sector8.starts_with(&copied),
        "sector 8 of the NVMe image: {:?}",
        String::from_utf8_lossy(&sector8[..sector8.len().min(40)])
    );
}

#[test]
fn debian_kernel_finds_and_uses_virtio_block_net_and_rng_devices() {
    let l2 = step(L2_VIRTIO_STEP);
    let has = |needle: &str| l2.has_line_containing(needle);
    assert!(!has("L2-INSMOD-FAILED"), "{}", show(&l2));
    assert!(has("L2-VIRTIO-DEVICES=3"), "{}", show(&l2));
    assert!(has("L2-VDA-HEAD=edgevisor-l1-disk"), "{}", show(&l2));
    // 4 MiB image: 8192 sectors.
    assert!(has("L2-VDA-SECTORS=8192"), "{}", show(&l2));
    assert!(has("L2-VDA-WRITE-OK"), "{}", show(&l2));
    assert!(
        has("L1-SECTOR8=edgevisor-l1-disk copied by L2"),
        "{}",
        show(&l2)
    );
    // conv=fsync became a virtio flush, which reached fsync on the host side.
    let flushes = l2
        .output
        .lines()
        .find_map(|l| l.trim().strip_prefix("L1-REPORT-\"flushes\": "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no flush count in {}", show(&l2)));
    assert!(flushes >= 1, "{}", show(&l2));
    assert!(has("L2-HWRNG=virtio_rng.0"), "{}", show(&l2));
    assert!(has("L2-HWRNG-BYTES=32"), "{}", show(&l2));
    // Three pings from the guest to L1 across virtio-net and the TAP edgevisor created.
    assert!(
        has("3 packets transmitted, 3 packets received"),
        "{}",
        show(&l2)
    );
    assert!(has("L2-PING-OK"), "{}", show(&l2));
    assert!(has("guest powered off (ACPI S5)"), "{}", show(&l2));
    assert!(has("EXIT=0"), "{}", show(&l2));
}
