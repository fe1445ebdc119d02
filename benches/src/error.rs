//! Why a benchmark could not run or did not pass.

use std::io;
use std::path::PathBuf;

/// Everything that stops a benchmark before it can report, or makes it fail.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The temporary directory for the guest images could not be made.
    #[error(
        "could not create the temporary directory {path}: {source}; check that TMPDIR is writable"
    )]
    TempDir {
        /// The directory we tried to create.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A guest image could not be written to the temporary directory.
    #[error("could not write the guest image {path}: {source}; check that TMPDIR is writable and not full")]
    WriteGuest {
        /// The file we tried to write.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A program (VMM, QEMU, cargo) could not be started.
    #[error("could not start `{program}`: {source}; check the path or install it (QEMU: `apt-get install qemu-system-x86`)")]
    Spawn {
        /// The program we tried to start.
        program: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Waiting for a child process failed.
    #[error("waiting for `{program}` (pid {pid}) failed: {source}; this is a bug in the bench or the host")]
    Wait {
        /// The program we were waiting for.
        program: String,
        /// Its process id.
        pid: i32,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A helper thread of the bench died.
    #[error("a helper thread measuring `{program}` died; this is a bug in the bench")]
    Thread {
        /// The program it was measuring.
        program: String,
    },
    /// `cargo build` of the edgevisor binary failed.
    #[error("`cargo build --release -p vmm --bin edgevisor` in {workspace} failed ({status}); fix the build or pass --edgevisor PATH")]
    BuildFailed {
        /// The workspace root cargo ran in.
        workspace: PathBuf,
        /// How cargo ended.
        status: String,
    },
    /// `cargo build` succeeded but named no edgevisor executable.
    #[error("`cargo build` in {workspace} reported no executable for the edgevisor binary; pass --edgevisor PATH")]
    NoExecutable {
        /// The workspace root cargo ran in.
        workspace: PathBuf,
    },
    /// The given or built edgevisor binary does not exist.
    #[error(
        "the edgevisor binary {path} does not exist; build it or pass another --edgevisor PATH"
    )]
    MissingEdgevisor {
        /// The path that was given or reported.
        path: PathBuf,
    },
    /// The JSON report could not be written.
    #[error("could not write the JSON report to {path}: {source}; pass a --json path in a writable directory")]
    WriteJson {
        /// The file we tried to write.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The JSON report could not be serialized.
    #[error("could not serialize the JSON report: {0}; this is a bug in the bench")]
    Serialize(#[from] serde_json::Error),
    /// Some runs failed: their reasons were printed and are in the report.
    #[error("{count} run(s) failed (reasons above); the figures cover only the runs that passed")]
    RunsFailed {
        /// How many runs failed.
        count: usize,
    },
    /// The hugepage pool could not be resized for the memory bench.
    #[error("could not reserve {pages} 2 MiB hugepages ({detail}): run as root on a host with hugepage support")]
    HugePages {
        /// Pages wanted.
        pages: u64,
        /// What went wrong.
        detail: String,
    },
    /// A piece of the bench's own setup (network namespace, testpmd) failed.
    #[error("could not {what}: {detail}")]
    Setup {
        /// What the bench was doing.
        what: String,
        /// What went wrong.
        detail: String,
    },
}
