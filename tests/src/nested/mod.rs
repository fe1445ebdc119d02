//! Real guests on a complete x86 CPU: a Debian kernel booted by QEMU (TCG, an emulated AMD EPYC
//! with SVM and nested paging) loads `kvm_amd`, and inside that level-1 guest `edgevisor` runs its
//! own guests on a real `/dev/kvm`.
//!
//! The pieces, each usable alone:
//! - [`DebianKernel::ensure`]: the newest `linux-image-6.1.0-*-cloud-amd64` package, downloaded
//!   with `apt-get download` and unpacked once into a cache under the workspace target directory.
//! - [`Initramfs`]: a newc cpio archive written by our own code (busybox applets, an `/init`,
//!   host files and executables with their shared libraries).
//! - [`L1Builder`]: the level-1 initramfs (modules, `/init` that runs named steps between
//!   markers, then powers off) and its boot; [`run_l1`] boots any initramfs under QEMU with a
//!   timeout and returns the serial log as an [`L1Run`].
//! - [`DebianKernel::vmlinux`] / [`extract_vmlinux`]: the ELF `vmlinux` unpacked from a bzImage
//!   (found through its setup header, decompressed with the tool its magic bytes call for), and
//!   [`pvh_entry`] reads its PVH entry note with `readelf -n`.
//! - [`edgevisor_binary`]: builds `edgevisor` with cargo and returns its path.
//!
//! Environment knobs: `EDGEVISOR_NESTED_CACHE` (cache directory), `EDGEVISOR_NESTED_KERNEL_PKG`
//! (a kernel package name instead of the newest), `EDGEVISOR_BIN` (use this `edgevisor` instead of
//! building one), `EDGEVISOR_QEMU` (QEMU binary), `EDGEVISOR_BUSYBOX` (a static busybox),
//! `EDGEVISOR_NESTED_VERBOSE=1` (echo the L1 serial console to stderr while it runs) and
//! `EDGEVISOR_NESTED_KEEP=1` (keep scratch directories).

mod builder;
mod command;
mod edgevisor;
mod elf;
mod initramfs;
mod kernel;
mod qemu;
mod script;
mod vmlinux;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use builder::{L1Builder, ScratchDir, KVM_SETUP_STEP};
pub use edgevisor::edgevisor_binary;
pub use elf::{elf_interpreter, shared_libraries};
pub use initramfs::Initramfs;
pub use kernel::DebianKernel;
pub use qemu::{run_l1, L1Run, L1Spec};
pub use script::{l1_init_script, Step, StepOutput, DONE_MARKER, STEP_DIR};
pub use vmlinux::{bzimage_payload, extract_vmlinux, pvh_entry, Compression, Payload};

/// Everything that can go wrong while preparing or booting a nested guest.
#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    /// A host tool could not be started at all.
    #[error("could not start `{program}` ({source}); run scripts/install-test-deps.sh to install the test tools")]
    ToolMissing {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A host tool ran and failed.
    #[error("`{command}` failed with {status}; its output ends with:\n{output}")]
    CommandFailed {
        command: String,
        status: String,
        output: String,
    },
    /// apt knows no suitable kernel package.
    #[error("apt-cache lists no package named like {pattern} with an installable version; run scripts/install-test-deps.sh (it runs apt-get update) or set EDGEVISOR_NESTED_KERNEL_PKG to a package name")]
    NoKernelPackage { pattern: String },
    /// The unpacked kernel package lacks a file the nested boot needs.
    #[error("package {package} has no {what}; pick another kernel package with EDGEVISOR_NESTED_KERNEL_PKG")]
    MissingInPackage { package: String, what: String },
    /// Reading or writing a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A path inside a guest image is not a clean absolute path.
    #[error("guest path {path:?} is not usable: {reason}; give an absolute path like /bin/tool without . or .. parts")]
    InvalidGuestPath { path: String, reason: &'static str },
    /// A step name cannot be used in the marker lines.
    #[error("step name {name:?} is not usable; use 1-40 characters from A-Z a-z 0-9 . _ - and no name twice")]
    InvalidStepName { name: String },
    /// A kernel image is not what it should be (a bzImage with a known payload, a 64-bit ELF).
    #[error("kernel image {}: {reason}; give a bzImage from Linux's arch/x86/boot (boot protocol 2.08 or newer)", path.display())]
    BadKernelImage { path: PathBuf, reason: String },
    /// A file is not the kind of executable this harness can put into a guest.
    #[error("{}: {reason}", path.display())]
    BadExecutable { path: PathBuf, reason: String },
    /// cargo built nothing we recognise as the `edgevisor` executable.
    #[error("`cargo build` reported no executable for the edgevisor binary; check that crate vmm still has [[bin]] edgevisor")]
    NoEdgevisorArtifact,
    /// QEMU ran longer than the caller allowed and was killed.
    #[error("QEMU did not finish within {} s and was killed; the serial console ends with:\n{tail}", timeout.as_secs())]
    Timeout { timeout: Duration, tail: String },
    /// QEMU ended with an error status (it exits 0 on guest power-off and on reboot with -no-reboot).
    #[error(
        "QEMU exited with {status}; its stderr:\n{stderr}\nthe serial console ends with:\n{tail}"
    )]
    QemuFailed {
        status: String,
        stderr: String,
        tail: String,
    },
    /// A step the caller asked about has no complete begin/end markers in the serial log.
    #[error("step {name} did not run to its end marker in the L1 guest; the serial console ends with:\n{tail}")]
    StepMissing { name: String, tail: String },
    /// A test-specific preparation step failed; the text says which and why.
    #[error("{0}")]
    Other(String),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, NestedError>;

impl NestedError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> NestedError {
        NestedError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo target directory: `CARGO_TARGET_DIR` (relative to the workspace root when
/// relative) or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// Where downloaded kernels and scratch files live: `EDGEVISOR_NESTED_CACHE` or
/// `<target dir>/nested-cache`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("EDGEVISOR_NESTED_CACHE") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => target_dir().join("nested-cache"),
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// Whether an environment flag like `EDGEVISOR_NESTED_VERBOSE` is set to something other than
/// empty or `0`.
pub(crate) fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The static busybox to put into initramfs images: `EDGEVISOR_BUSYBOX` or `/bin/busybox`.
pub fn busybox() -> PathBuf {
    env_path("EDGEVISOR_BUSYBOX", "/bin/busybox")
}

/// An environment variable's value as a path, or `default`.
pub(crate) fn env_path(name: &str, default: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(default),
    }
}
