//! `edgevisor-bench memory`: boot time and a guest memory-touch workload with 4 KiB pages
//! versus 2 MiB hugepages, each with and without prefault, interleaved.
//!
//! The guest is the firmware probe with `probe.touch=N`: after its checks it writes one
//! quadword per 4 KiB page of N MiB, so every page is faulted in once (or was prefaulted).
//! Each run writes edgevisor's `--report`; the figures come from the VMM's own phase stamps:
//! boot = first serial byte; guest run = guest exit minus the probe's first boot-timer stamp
//! (the touch workload plus the probe's checks and output, ~10 ms and the same in every
//! configuration). The total is measured from outside (spawn to exit) and includes mapping
//! and prefaulting.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::error::BenchError;
use crate::measure::measure;
use crate::report::Figure;
use crate::stats::ratio;
use crate::systems::GuestFile;

/// How guest RAM is backed in one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Backing {
    /// 2 MiB hugepages instead of 4 KiB pages.
    pub hugepages: bool,
    /// Every page populated before the guest starts.
    pub prefault: bool,
}

/// The four configurations, baseline first.
pub const BACKINGS: [Backing; 4] = [
    Backing {
        hugepages: false,
        prefault: false,
    },
    Backing {
        hugepages: false,
        prefault: true,
    },
    Backing {
        hugepages: true,
        prefault: false,
    },
    Backing {
        hugepages: true,
        prefault: true,
    },
];

impl Backing {
    /// Short label for tables.
    pub fn label(self) -> &'static str {
        match (self.hugepages, self.prefault) {
            (false, false) => "4K",
            (false, true) => "4K+prefault",
            (true, false) => "2M",
            (true, true) => "2M+prefault",
        }
    }

    /// The `--mem` value for `mem_mib` MiB.
    pub fn mem_arg(self, mem_mib: u64) -> String {
        let mut arg = format!("{mem_mib}M");
        if self.hugepages {
            arg.push_str(",hugepages=2M");
        }
        if self.prefault {
            arg.push_str(",prefault=on");
        }
        arg
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    /// Measured runs per configuration.
    pub runs: usize,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// MiB the guest touches.
    pub touch_mib: u64,
    /// The edgevisor binary.
    pub edgevisor: PathBuf,
    /// Per-run time limit.
    pub timeout: Duration,
}

/// The figures of one configuration, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryRow {
    /// Which configuration.
    pub backing: Backing,
    /// Label.
    pub label: &'static str,
    /// VMM-measured time to the guest's first serial byte.
    pub boot_ms: Figure,
    /// VMM-measured guest run: first boot-timer stamp to guest exit (the touch workload plus
    /// the probe's constant checks and output).
    pub touch_ms: Figure,
    /// Spawn to exit, measured from outside.
    pub total_ms: Figure,
    /// Medians of boot, touch and total against the 4K baseline.
    pub ratio_vs_4k: [Option<f64>; 3],
}

/// The whole memory bench.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// MiB touched.
    pub touch_mib: u64,
    /// Runs per configuration.
    pub runs: usize,
    /// One row per configuration.
    pub rows: Vec<MemoryRow>,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Reserves 2 MiB pages for the bench and puts the pool back on drop.
pub(crate) struct Reservation(String);

impl Reservation {
    pub(crate) fn reserve(pages: u64) -> Result<Reservation, BenchError> {
        let fail = |detail: String| BenchError::HugePages { pages, detail };
        let before = std::fs::read_to_string(NR_HUGEPAGES).map_err(|e| fail(e.to_string()))?;
        let current: u64 = before.trim().parse().unwrap_or(0);
        std::fs::write(NR_HUGEPAGES, (current + pages).to_string())
            .map_err(|e| fail(e.to_string()))?;
        let got: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let reservation = Reservation(before.trim().to_string());
        if got < current + pages {
            return Err(fail(format!(
                "the kernel granted {}",
                got - current.min(got)
            )));
        }
        Ok(reservation)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, &self.0);
    }
}

/// One run's three figures, or why it failed.
fn one_run(
    options: &MemoryOptions,
    kernel: &Path,
    backing: Backing,
    report: &Path,
) -> Result<(f64, f64, f64), String> {
    let argv: Vec<OsString> = vec![
        options.edgevisor.clone().into(),
        "run".into(),
        "--kernel".into(),
        kernel.into(),
        "--mem".into(),
        backing.mem_arg(options.mem_mib).into(),
        "--cmdline".into(),
        format!("probe.touch={}", options.touch_mib).into(),
        "--report".into(),
        report.into(),
    ];
    let outcome = measure(&argv, options.timeout).map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let touched = format!("probe: touched {} MiB", options.touch_mib);
    if outcome.status.code() != Some(0) || !stdout.contains(&touched) {
        return Err(format!(
            "exit {:?}, no {touched:?}: {}",
            outcome.status.code(),
            String::from_utf8_lossy(&outcome.stderr).trim()
        ));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).map_err(|e| format!("no report: {e}"))?)
            .map_err(|e| format!("bad report: {e}"))?;
    let us = |name: &str| json["timings"][name].as_f64();
    let (Some(first), Some(exit), Some(main)) = (
        us("first_serial_byte_us"),
        us("guest_exit_us"),
        us("guest_main_us"),
    ) else {
        return Err(format!("report lacks phases: {}", json["timings"]));
    };
    Ok((
        first / 1000.0,
        (exit - main) / 1000.0,
        outcome.exit.as_secs_f64() * 1000.0,
    ))
}

/// Runs every configuration `options.runs` times, interleaved.
pub fn run_memory(
    options: &MemoryOptions,
    progress: &mut dyn Write,
) -> Result<MemoryReport, BenchError> {
    let guest = GuestFile::write(crate::systems::Guest::Pvh)?;
    let _pool = Reservation::reserve(options.mem_mib.div_ceil(2))?;
    let report_path = std::env::temp_dir().join(format!(
        "edgevisor-bench-memory-{}.json",
        std::process::id()
    ));
    let mut samples: Vec<[Vec<f64>; 3]> = BACKINGS.iter().map(|_| Default::default()).collect();
    let mut failures = 0;
    for round in 0..options.runs {
        for (i, backing) in BACKINGS.iter().enumerate() {
            match one_run(options, guest.kernel(), *backing, &report_path) {
                Ok((boot, touch, total)) => {
                    let _ = writeln!(
                        progress,
                        "{} run {}/{}: boot {boot:.2} ms, touch {touch:.2} ms, total {total:.2} ms",
                        backing.label(),
                        round + 1,
                        options.runs
                    );
                    samples[i][0].push(boot);
                    samples[i][1].push(touch);
                    samples[i][2].push(total);
                }
                Err(e) => {
                    failures += 1;
                    let _ = writeln!(
                        progress,
                        "{} run {} failed: {e}",
                        backing.label(),
                        round + 1
                    );
                }
            }
        }
    }
    let _ = std::fs::remove_file(&report_path);
    if failures > 0 {
        return Err(BenchError::RunsFailed { count: failures });
    }
    let figures: Vec<[Figure; 3]> = samples
        .into_iter()
        .map(|[b, t, x]| {
            [
                Figure::from_samples(b),
                Figure::from_samples(t),
                Figure::from_samples(x),
            ]
        })
        .collect();
    let base: Vec<Option<f64>> = figures[0].iter().map(|f| f.median).collect();
    let rows = BACKINGS
        .iter()
        .zip(figures)
        .map(|(backing, [boot_ms, touch_ms, total_ms])| {
            let r = |f: &Figure, b: Option<f64>| match (f.median, b) {
                (Some(v), Some(b)) => ratio(v, b),
                _ => None,
            };
            MemoryRow {
                backing: *backing,
                label: backing.label(),
                ratio_vs_4k: [
                    r(&boot_ms, base[0]),
                    r(&touch_ms, base[1]),
                    r(&total_ms, base[2]),
                ],
                boot_ms,
                touch_ms,
                total_ms,
            }
        })
        .collect();
    Ok(MemoryReport {
        mem_mib: options.mem_mib,
        touch_mib: options.touch_mib,
        runs: options.runs,
        rows,
    })
}

/// The report as a table.
pub fn render_memory_table(report: &MemoryReport) -> String {
    let fmt = |f: &Figure| match f.median {
        Some(m) => format!("{m:.2}"),
        None => "-".into(),
    };
    let fmt_ratio = |r: Option<f64>| match r {
        Some(r) => format!("{r:.2}"),
        None => "-".into(),
    };
    let mut out = format!(
        "guest memory {} MiB, probe touches {} MiB, medians of {} interleaved runs (ms; ratio vs 4K)\n",
        report.mem_mib, report.touch_mib, report.runs
    );
    out.push_str(&format!(
        "{:<12} {:>18} {:>18} {:>18}\n",
        "backing", "boot (first out)", "guest run+touch", "total (exit)"
    ));
    for row in &report.rows {
        out.push_str(&format!(
            "{:<12} {:>9} ({:>6}) {:>9} ({:>6}) {:>9} ({:>6})\n",
            row.label,
            fmt(&row.boot_ms),
            fmt_ratio(row.ratio_vs_4k[0]),
            fmt(&row.touch_ms),
            fmt_ratio(row.ratio_vs_4k[1]),
            fmt(&row.total_ms),
            fmt_ratio(row.ratio_vs_4k[2]),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_args_name_the_backing() {
        assert_eq!(BACKINGS[0].mem_arg(512), "512M");
        assert_eq!(BACKINGS[1].mem_arg(512), "512M,prefault=on");
        assert_eq!(BACKINGS[2].mem_arg(512), "512M,hugepages=2M");
        assert_eq!(BACKINGS[3].mem_arg(512), "512M,hugepages=2M,prefault=on");
        let labels: Vec<_> = BACKINGS.iter().map(|b| b.label()).collect();
        assert_eq!(labels, ["4K", "4K+prefault", "2M", "2M+prefault"]);
    }

    #[test]
    fn table_shows_medians_and_ratios_against_4k() {
        let row = |b: Backing, touch: f64| MemoryRow {
            backing: b,
            label: b.label(),
            boot_ms: Figure::from_samples(vec![2.0]),
            touch_ms: Figure::from_samples(vec![touch]),
            total_ms: Figure::from_samples(vec![10.0]),
            ratio_vs_4k: [Some(1.0), ratio(touch, 100.0), Some(1.0)],
        };
        let report = MemoryReport {
            mem_mib: 512,
            touch_mib: 256,
            runs: 1,
            rows: vec![row(BACKINGS[0], 100.0), row(BACKINGS[2], 25.0)],
        };
        let table = render_memory_table(&report);
        assert!(table.contains("25.00 (  0.25)"), "{table}");
        assert!(table.contains("100.00 (  1.00)"), "{table}");
    }
}
