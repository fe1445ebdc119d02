//! Putting an L1 guest together: busybox, the KVM modules, step scripts and `/init`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::script::{check_names, l1_init_script, Step};
use super::{busybox, cache_dir, env_flag, run_l1, DebianKernel, Initramfs, L1Run, L1Spec};
use super::{NestedError, Result};

/// The name of the step `/init` runs first: load the modules and check `/dev/kvm`.
pub const KVM_SETUP_STEP: &str = "kvm-setup";
/// Where the KVM modules go in the L1 initramfs.
const MODULE_DIR: &str = "/nested/modules";

/// A directory removed with everything in it when dropped (kept if `EDGEVISOR_NESTED_KEEP=1`).
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

impl ScratchDir {
    /// A fresh directory under `<cache>/work/`.
    pub fn new(tag: &str) -> Result<ScratchDir> {
        ScratchDir::new_in(&cache_dir().join("work"), tag)
    }

    /// A fresh directory under `parent`, named after `tag`, this process and the time.
    pub fn new_in(parent: &Path, tag: &str) -> Result<ScratchDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = parent.join(format!(".{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| NestedError::io(&path, e))?;
        Ok(ScratchDir {
            path,
            keep: env_flag("EDGEVISOR_NESTED_KEEP"),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("nested: keeping {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The L1 guest under construction: a busybox initramfs holding the KVM modules, whose `/init`
/// first runs [`KVM_SETUP_STEP`] (insmod irqbypass, kvm, kvm-amd; rc 0 when `/dev/kvm` is a
/// character device) and then the caller's steps, each framed by markers.
#[derive(Debug, Clone)]
pub struct L1Builder {
    kernel: DebianKernel,
    initramfs: Initramfs,
    steps: Vec<Step>,
    extra_args: Vec<String>,
    extra_cmdline: String,
}

impl L1Builder {
    /// Starts from [`busybox()`] (which must be static) and the
    /// modules of `kernel`.
    pub fn new(kernel: &DebianKernel) -> Result<L1Builder> {
        let mut initramfs = Initramfs::with_busybox(&busybox())?;
        let mut insmod = String::from("status=0\n");
        for module in &kernel.modules {
            let name = module
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let guest = format!("{MODULE_DIR}/{name}");
            initramfs.add_file(&guest, module)?;
            insmod.push_str(&format!(
                "insmod {guest} || {{ echo \"insmod {guest} failed\"; status=1; }}\n"
            ));
        }
        let setup = format!(
            "{insmod}dmesg | grep -i -e 'kvm' -e 'svm'\n\
             if [ -c /dev/kvm ]; then echo '/dev/kvm is ready'; else echo '/dev/kvm is missing'; status=1; fi\n\
             exit $status\n"
        );
        Ok(L1Builder {
            kernel: kernel.clone(),
            initramfs,
            steps: vec![Step::new(KVM_SETUP_STEP, &setup).with_timeout(30)],
            extra_args: Vec::new(),
            extra_cmdline: String::new(),
        })
    }

    /// Boots L1 on QEMU's q35 machine with an emulated Intel IOMMU (DMA and interrupt
    /// remapping; VFIO's type 1 IOMMU refuses a host without the latter) turned on with
    /// `intel_iommu=on`, and QEMU's `edu` PCI device behind
    /// it: a function L1 can bind to vfio-pci and pass through to an L2 guest.
    pub fn with_edu_behind_an_iommu(&mut self) -> &mut Self {
        self.extra_args.extend(
            [
                "-M",
                "q35",
                "-device",
                "intel-iommu,intremap=on",
                "-device",
                "edu",
            ]
            .map(String::from),
        );
        self.extra_cmdline.push_str(" intel_iommu=on");
        self
    }

    /// Adds QEMU's emulated NVMe controller (1b36:0010, MSI-X with its table in BAR 0) with
    /// serial number `serial`, backed by the raw image `disk`. Call it after
    /// [`L1Builder::with_edu_behind_an_iommu`]: QEMU puts a device behind the IOMMU only when
    /// the IOMMU was created first.
    pub fn with_nvme(&mut self, disk: &Path, serial: &str) -> &mut Self {
        self.extra_args.push("-drive".to_string());
        self.extra_args.push(format!(
            "if=none,id=nvme0,format=raw,file={}",
            // QEMU's option syntax escapes a comma by doubling it.
            disk.display().to_string().replace(',', ",,")
        ));
        self.extra_args.push("-device".to_string());
        self.extra_args
            .push(format!("nvme,serial={serial},drive=nvme0"));
        self
    }

    /// The initramfs, to add files, executables and directories.
    pub fn initramfs(&mut self) -> &mut Initramfs {
        &mut self.initramfs
    }

    /// Appends a step (names must be unique; see [`Step::name`]).
    pub fn step(&mut self, step: Step) -> Result<&mut Self> {
        self.steps.push(step);
        if let Err(err) = check_names(&self.steps) {
            self.steps.pop();
            return Err(err);
        }
        Ok(self)
    }

    /// The steps so far, [`KVM_SETUP_STEP`] first.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The sum of the steps' time limits: how long `/init` may run at most, boot excluded.
    pub fn step_time_limit(&self) -> Duration {
        Duration::from_secs(self.steps.iter().map(|s| u64::from(s.timeout_secs)).sum())
    }

    /// Writes the finished initramfs (step scripts and `/init` included) to `out`.
    pub fn write_initramfs(&self, out: &Path) -> Result<()> {
        let mut initramfs = self.initramfs.clone();
        for step in &self.steps {
            initramfs.add_bytes(&step.guest_path(), step.script.as_bytes(), 0o755)?;
        }
        initramfs.set_init(&l1_init_script(&self.steps)?)?;
        initramfs.write(out)
    }

    /// Writes the initramfs into `work` and boots it. QEMU's limit is the steps' limits plus
    /// `boot_allowance` for booting and powering off.
    pub fn boot(&self, work: &Path, boot_allowance: Duration) -> Result<L1Run> {
        let initramfs = work.join("l1-initramfs.cpio");
        self.write_initramfs(&initramfs)?;
        let mut spec = L1Spec::new(self.kernel.vmlinuz.clone(), initramfs);
        spec.timeout = self.step_time_limit() + boot_allowance;
        spec.extra_args = self.extra_args.clone();
        spec.cmdline.push_str(&self.extra_cmdline);
        run_l1(&spec)
    }
}
