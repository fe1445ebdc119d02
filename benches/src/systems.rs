//! The systems under test, the guests they boot, and their exact command lines.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::BenchError;

/// Kernel command line for every run: the probe ends the VM through isa-debug-exit
/// with value 0 after `PROBE PASS`.
pub const PROBE_CMDLINE: &str = "probe.exit=debug=0";

/// Process exit code both systems give for an isa-debug-exit write of 0: `(0 << 1) | 1`.
pub const EXPECTED_EXIT_CODE: i32 = 1;

/// Guest memory for both systems.
pub const GUEST_MEM: &str = "64M";

/// QEMU microvm reduced to what the probe uses, with the in-kernel PIC, IOAPIC and PIT
/// that edgevisor gives every guest too: COM1 (`isa-serial`), the CMOS RTC (`rtc`),
/// no option ROMs, ACPI tables, PCIe, USB, SMM or second IOAPIC.
pub const QEMU_MACHINE: &str = "microvm,x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on,\
acpi=off,pcie=off,usb=off,smm=off,ioapic2=off,graphics=off,auto-kernel-cmdline=off";

/// QEMU CPU model: the host's, without `arch-capabilities` (plain `host` aborts on
/// this PVM host), with `invtsc` so QEMU fills CPUID leaf 0x40000010 (TSC and APIC
/// frequencies), which edgevisor always offers and the probe checks.
pub const QEMU_CPU: &str = "host,-arch-capabilities,+invtsc";

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// `edgevisor run`.
    Edgevisor,
    /// QEMU's microvm machine on KVM.
    Qemu,
}

impl System {
    /// Name in tables and progress lines.
    pub fn label(self) -> &'static str {
        match self {
            System::Edgevisor => "edgevisor",
            System::Qemu => "qemu-microvm",
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Which firmware probe image both systems boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Guest {
    /// ELF64 with a PVH note (`firmware::PROBE_PVH`).
    Pvh,
    /// ELF32 multiboot v1 (`firmware::PROBE_MULTIBOOT`).
    Multiboot,
}

impl Guest {
    /// The protocol the probe names in its `PROBE PASS protocol=` line.
    pub fn protocol(self) -> &'static str {
        match self {
            Guest::Pvh => "pvh",
            Guest::Multiboot => "multiboot",
        }
    }

    /// The image bytes.
    pub fn image(self) -> &'static [u8] {
        match self {
            Guest::Pvh => firmware::PROBE_PVH,
            Guest::Multiboot => firmware::PROBE_MULTIBOOT,
        }
    }

    /// The line the probe prints when every check passed.
    pub fn pass_line(self) -> String {
        format!("PROBE PASS protocol={}", self.protocol())
    }
}

/// A private temporary directory holding the guest image; removed on drop.
#[derive(Debug)]
pub struct GuestFile {
    dir: PathBuf,
    kernel: PathBuf,
}

impl GuestFile {
    /// Writes `guest`'s image to a new directory under the system's temp dir.
    pub fn write(guest: Guest) -> Result<GuestFile, BenchError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("edgevisor-bench-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|source| BenchError::TempDir {
            path: dir.clone(),
            source,
        })?;
        let file = GuestFile {
            kernel: dir.join(format!("probe-{}.elf", guest.protocol())),
            dir,
        };
        std::fs::write(&file.kernel, guest.image()).map_err(|source| BenchError::WriteGuest {
            path: file.kernel.clone(),
            source,
        })?;
        Ok(file)
    }

    /// Path of the image file.
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }
}

impl Drop for GuestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `edgevisor run` booting `kernel` with the probe's command line.
pub fn edgevisor_argv(binary: &Path, kernel: &Path) -> Vec<OsString> {
    vec![
        binary.into(),
        "run".into(),
        "--kernel".into(),
        kernel.into(),
        "--mem".into(),
        GUEST_MEM.into(),
        "--cmdline".into(),
        PROBE_CMDLINE.into(),
    ]
}

/// `binary` with what every bench's QEMU run shares: microvm as `machine` says, KVM, one vCPU
/// of [`QEMU_CPU`], no default devices, serial on stdout and isa-debug-exit at 0x501.
pub fn qemu_base_argv(binary: &Path, machine: &str) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![binary.into()];
    argv.extend(
        [
            "-M",
            machine,
            "-accel",
            "kvm",
            "-cpu",
            QEMU_CPU,
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0x501,iosize=1",
        ]
        .map(OsString::from),
    );
    argv
}

/// QEMU microvm booting `kernel` with `-kernel`, serial on stdout, isa-debug-exit at 0x501.
pub fn qemu_argv(binary: &Path, kernel: &Path) -> Vec<OsString> {
    let mut argv = qemu_base_argv(binary, QEMU_MACHINE);
    argv.extend(["-m", GUEST_MEM, "-kernel"].map(OsString::from));
    argv.push(kernel.into());
    argv.push("-append".into());
    argv.push(PROBE_CMDLINE.into());
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(argv: &[OsString]) -> Vec<String> {
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn value_after(argv: &[String], flag: &str) -> String {
        let at = argv
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} missing from {argv:?}"));
        argv[at + 1].clone()
    }

    #[test]
    fn edgevisor_command_boots_the_kernel_with_the_probe_cmdline() {
        let argv = strings(&edgevisor_argv(
            Path::new("/bin/edgevisor"),
            Path::new("/tmp/k.elf"),
        ));
        assert_eq!(argv[0], "/bin/edgevisor");
        assert_eq!(argv[1], "run");
        assert_eq!(value_after(&argv, "--kernel"), "/tmp/k.elf");
        assert_eq!(value_after(&argv, "--mem"), "64M");
        assert_eq!(value_after(&argv, "--cmdline"), "probe.exit=debug=0");
    }

    #[test]
    fn qemu_command_keeps_what_the_probe_needs() {
        let argv = strings(&qemu_argv(Path::new("qemu"), Path::new("/tmp/k.elf")));
        let machine = value_after(&argv, "-M");
        assert!(machine.starts_with("microvm,"));
        for needed in ["isa-serial=on", "rtc=on", "x-option-roms=off"] {
            assert!(
                machine.split(',').any(|o| o == needed),
                "{needed} in {machine}"
            );
        }
        assert_eq!(value_after(&argv, "-accel"), "kvm");
        assert_eq!(value_after(&argv, "-m"), GUEST_MEM);
        assert_eq!(value_after(&argv, "-serial"), "stdio");
        assert_eq!(value_after(&argv, "-kernel"), "/tmp/k.elf");
        assert_eq!(value_after(&argv, "-append"), PROBE_CMDLINE);
        assert_eq!(
            value_after(&argv, "-device"),
            "isa-debug-exit,iobase=0x501,iosize=1"
        );
        let cpu = value_after(&argv, "-cpu");
        assert!(cpu.contains("-arch-capabilities") && cpu.contains("+invtsc"));
    }

    #[test]
    fn guest_file_holds_the_image_and_goes_away() {
        let file = GuestFile::write(Guest::Multiboot).expect("temp dir writable");
        let path = file.kernel().to_path_buf();
        assert_eq!(
            std::fs::read(&path).expect("written"),
            firmware::PROBE_MULTIBOOT
        );
        assert!(path.to_string_lossy().ends_with("probe-multiboot.elf"));
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn guests_map_to_their_images_and_pass_lines() {
        assert_eq!(Guest::Pvh.image(), firmware::PROBE_PVH);
        assert_eq!(Guest::Multiboot.image(), firmware::PROBE_MULTIBOOT);
        assert_eq!(Guest::Pvh.pass_line(), "PROBE PASS protocol=pvh");
        assert_eq!(
            Guest::Multiboot.pass_line(),
            "PROBE PASS protocol=multiboot"
        );
    }
}
