//! `edgevisor-bench`: whole-process benchmarks of edgevisor against QEMU.
//!
//! ```text
//! cargo run --release -p benches --bin edgevisor-bench -- boot [--runs 11] [--warmup 1]
//!     [--guest pvh|multiboot] [--only edgevisor|qemu] [--edgevisor PATH]
//!     [--qemu qemu-system-x86_64] [--timeout-secs 10] [--json FILE]
//! cargo run --release -p benches --bin edgevisor-bench -- io [--runs 5] [--frames 20000]
//!     [--blk-mib 128] [--iops 2048] [--spin 250000] [--vhost-user] [--only edgevisor|qemu]
//!     [--edgevisor PATH] [--qemu qemu-system-x86_64] [--json FILE]
//! ```
//! The table goes to stdout, one progress line per run to stderr. Exit code 0: every
//! run passed; 1: some run failed (the report still covers the passing ones); 2: the
//! bench could not start (no QEMU, edgevisor did not build, ...).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use benches::{
    render_io_table, render_memory_table, render_table, run_boot, run_io, run_memory, BenchError,
    BootOptions, BootReport, Guest, IoOptions, MemoryOptions, System,
};
use clap::{Parser, Subcommand};

/// Exit code when runs failed (the report is still printed).
const EXIT_RUNS_FAILED: u8 = 1;
/// Exit code when the bench could not start measuring.
const EXIT_SETUP_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "edgevisor-bench",
    version,
    about = "Whole-process benchmarks of edgevisor, side by side with QEMU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot the firmware probe with edgevisor and QEMU microvm, interleaved, and compare
    /// time to first serial output, time to exit and peak RSS.
    Boot(BootArgs),
    /// Boot time and a guest memory-touch workload with 4 KiB pages versus 2 MiB
    /// hugepages, with and without prefault (reserves the hugepages itself; needs root).
    Memory(MemoryArgs),
    /// virtio-blk and virtio-net (TAP; with --vhost-user also into dpdk-testpmd) throughput
    /// of the same guest under edgevisor and QEMU microvm, interleaved (needs root).
    Io(IoArgs),
}

#[derive(clap::Args)]
struct IoArgs {
    /// Measured runs per system (after one warm-up run each).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    runs: u16,
    /// Frames per net pass (one pass of 1514-byte frames, one of 64-byte frames).
    #[arg(long, default_value_t = 20000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    frames: u64,
    /// MiB per sequential block pass (read, then write; 1 MiB requests), at most 256.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=256))]
    blk_mib: u64,
    /// Random 4 KiB block reads.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    iops: u64,
    /// Iterations of the guest's register-only loop (4 instructions each).
    #[arg(long, default_value_t = 250_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000_000))]
    spin: u64,
    /// Also send the frames over vhost-user into dpdk-testpmd (package dpdk-dev; reserves
    /// 64 hugepages while it runs).
    #[arg(long)]
    vhost_user: bool,
    /// Run only one system (no ratios).
    #[arg(long, value_enum)]
    only: Option<System>,
    /// The edgevisor binary (default: `cargo build --release -p vmm --bin edgevisor`).
    #[arg(long)]
    edgevisor: Option<PathBuf>,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Kill a run and count it failed after this many seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_secs: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn io(args: IoArgs) -> Result<(), BenchError> {
    let edgevisor = given_or_built(args.edgevisor)?;
    let options = IoOptions {
        runs: usize::from(args.runs),
        only: args.only,
        edgevisor,
        qemu: args.qemu,
        frames: args.frames,
        blk_mib: args.blk_mib,
        iops: args.iops,
        spin: args.spin,
        vhost_user: args.vhost_user,
        timeout: Duration::from_secs(args.timeout_secs),
    };
    let report = run_io(&options, &mut std::io::stderr())?;
    print!("{}", render_io_table(&report));
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    let (counted, sent) = report.tap_frames_counted;
    let pmd_ok = report
        .testpmd_frames_counted
        .is_none_or(|(counted, sent)| counted == sent);
    if counted != sent || !pmd_ok {
        eprintln!("edgevisor-bench: the host counted other frame numbers than the guests sent");
        return Err(BenchError::RunsFailed { count: 1 });
    }
    Ok(())
}

#[derive(clap::Args)]
struct MemoryArgs {
    /// Measured runs per configuration.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u16).range(1..))]
    runs: u16,
    /// Guest RAM in MiB (a multiple of 2).
    #[arg(long, default_value_t = 512)]
    mem_mib: u64,
    /// MiB the guest touches, from 16 MiB up.
    #[arg(long, default_value_t = 256)]
    touch_mib: u64,
    /// The edgevisor binary (default: `cargo build --release -p vmm --bin edgevisor`).
    #[arg(long)]
    edgevisor: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `--edgevisor PATH` if given, else `cargo build --release -p vmm --bin edgevisor`.
fn given_or_built(edgevisor: Option<PathBuf>) -> Result<PathBuf, BenchError> {
    match edgevisor {
        Some(path) => Ok(path),
        None => benches::locate::build_edgevisor(&benches::locate::workspace_root()),
    }
}

fn memory(args: MemoryArgs) -> Result<(), BenchError> {
    let edgevisor = given_or_built(args.edgevisor)?;
    let options = MemoryOptions {
        runs: usize::from(args.runs),
        mem_mib: args.mem_mib,
        touch_mib: args.touch_mib,
        edgevisor,
        timeout: Duration::from_secs(60),
    };
    let report = run_memory(&options, &mut std::io::stderr())?;
    print!("{}", render_memory_table(&report));
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(())
}

#[derive(clap::Args)]
struct BootArgs {
    /// Measured runs per system.
    #[arg(long, default_value_t = 11, value_parser = clap::value_parser!(u16).range(1..))]
    runs: u16,
    /// Unmeasured runs per system before the measured ones.
    #[arg(long, default_value_t = 1)]
    warmup: u16,
    /// Which probe image both systems boot.
    #[arg(long, value_enum, default_value_t = Guest::Pvh)]
    guest: Guest,
    /// Run only one system (for debugging; no ratios).
    #[arg(long, value_enum)]
    only: Option<System>,
    /// The edgevisor binary (default: `cargo build --release -p vmm --bin edgevisor`).
    #[arg(long)]
    edgevisor: Option<PathBuf>,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Kill a run and count it failed after this many seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_secs: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn boot(args: BootArgs) -> Result<BootReport, BenchError> {
    let options = BootOptions {
        runs: usize::from(args.runs),
        warmup: usize::from(args.warmup),
        guest: args.guest,
        only: args.only,
        edgevisor: args.edgevisor,
        qemu: args.qemu,
        timeout: Duration::from_secs(args.timeout_secs),
    };
    let report = run_boot(&options, &mut std::io::stderr())?;
    print!("{}", render_table(&report));
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(report)
}

/// Writes a report as pretty JSON for `--json`.
fn write_json(path: &std::path::Path, report: &impl serde::Serialize) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").map_err(|source| BenchError::WriteJson {
        path: path.to_path_buf(),
        source,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Boot(args) => boot(args),
        Command::Memory(args) => return finish(memory(args)),
        Command::Io(args) => return finish(io(args)),
    };
    match result {
        Ok(report) if report.failures.is_empty() => ExitCode::SUCCESS,
        Ok(report) => {
            let error = BenchError::RunsFailed {
                count: report.failures.len(),
            };
            eprintln!("edgevisor-bench: {error}");
            ExitCode::from(EXIT_RUNS_FAILED)
        }
        Err(error) => {
            eprintln!("edgevisor-bench: {error}");
            ExitCode::from(EXIT_SETUP_ERROR)
        }
    }
}

/// Exit code for the memory and io benches, which print their own report.
fn finish(result: Result<(), BenchError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ BenchError::RunsFailed { .. }) => {
            eprintln!("edgevisor-bench: {error}");
            ExitCode::from(EXIT_RUNS_FAILED)
        }
        Err(error) => {
            eprintln!("edgevisor-bench: {error}");
            ExitCode::from(EXIT_SETUP_ERROR)
        }
    }
}
