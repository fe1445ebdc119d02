//! The boot benchmark's results: JSON shape and the table printed on stdout.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{ratio, summarize};
use crate::systems::{Guest, System};

/// One measured figure of one system: its samples and their summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// Median of `samples` (`null` when there are none).
    pub median: Option<f64>,
    /// Smallest sample.
    pub min: Option<f64>,
    /// Largest sample.
    pub max: Option<f64>,
    /// Every passing run's value, in run order.
    pub samples: Vec<f64>,
}

impl Figure {
    /// Summarizes `samples`.
    pub fn from_samples(samples: Vec<f64>) -> Figure {
        let summary = summarize(&samples);
        Figure {
            median: summary.map(|s| s.median),
            min: summary.map(|s| s.min),
            max: summary.map(|s| s.max),
            samples,
        }
    }
}

/// The figures of one system over its passing runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemResult {
    /// Which system.
    pub system: System,
    /// The exact command line of every run.
    pub command: Vec<String>,
    /// How many measured runs passed (and are in the figures).
    pub runs_passed: usize,
    /// Spawn to the first byte on stdout, milliseconds.
    pub first_output_ms: Figure,
    /// Spawn to exit, milliseconds.
    pub exit_ms: Figure,
    /// Peak RSS (`ru_maxrss`), KiB.
    pub peak_rss_kib: Figure,
}

/// edgevisor's median divided by QEMU's, per figure (below 1: edgevisor is faster/smaller).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratios {
    /// Time to first output.
    pub first_output: Option<f64>,
    /// Time to exit.
    pub exit: Option<f64>,
    /// Peak RSS.
    pub peak_rss: Option<f64>,
}

impl Ratios {
    /// `numerator / denominator` for each figure's median.
    pub fn between(numerator: &SystemResult, denominator: &SystemResult) -> Ratios {
        let of = |a: &Figure, b: &Figure| match (a.median, b.median) {
            (Some(a), Some(b)) => ratio(a, b),
            _ => None,
        };
        Ratios {
            first_output: of(&numerator.first_output_ms, &denominator.first_output_ms),
            exit: of(&numerator.exit_ms, &denominator.exit_ms),
            peak_rss: of(&numerator.peak_rss_kib, &denominator.peak_rss_kib),
        }
    }
}

/// A run that did not pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunFailure {
    /// Which system.
    pub system: System,
    /// Whether it was a warm-up run.
    pub warmup: bool,
    /// 1-based number among that system's runs of its kind.
    pub run: usize,
    /// What went wrong.
    pub reason: String,
}

/// Everything `edgevisor-bench boot` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootReport {
    /// The probe image both systems booted.
    pub guest: Guest,
    /// Measured runs asked of each system.
    pub runs_per_system: usize,
    /// Unmeasured runs of each system before the measured ones.
    pub warmup_runs: usize,
    /// `qemu-system-x86_64 --version`, when QEMU took part.
    pub qemu_version: Option<String>,
    /// The bench's largest anonymous RSS when it forked a run, KiB: a forked child
    /// holds those pages until exec, so its `ru_maxrss` is never below this.
    pub rss_floor_kib: Option<u64>,
    /// One entry per system, in the order they ran.
    pub systems: Vec<SystemResult>,
    /// edgevisor / QEMU, when both ran.
    pub ratios_edgevisor_over_qemu: Option<Ratios>,
    /// Runs that failed; any makes the bench exit non-zero.
    pub failures: Vec<RunFailure>,
}

impl BootReport {
    /// The result of `system`, if it ran.
    pub fn system(&self, system: System) -> Option<&SystemResult> {
        self.systems.iter().find(|s| s.system == system)
    }

    /// Fills `ratios_edgevisor_over_qemu` from the systems' medians.
    pub fn compute_ratios(&mut self) {
        self.ratios_edgevisor_over_qemu =
            match (self.system(System::Edgevisor), self.system(System::Qemu)) {
                (Some(e), Some(q)) => Some(Ratios::between(e, q)),
                _ => None,
            };
    }
}

const KIB_PER_MIB: f64 = 1024.0;

fn cell(figure: &Figure, scale: f64, decimals: usize) -> String {
    match (figure.median, figure.min, figure.max) {
        (Some(median), Some(min), Some(max)) => format!(
            "{:.d$} ({:.d$}-{:.d$})",
            median / scale,
            min / scale,
            max / scale,
            d = decimals
        ),
        _ => "-".to_string(),
    }
}

fn ratio_cell(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"))
}

/// The report as a table: one row per figure, `median (min-max)` per system, then the
/// edgevisor/QEMU ratio of the medians when both ran; failures listed below.
pub fn render_table(report: &BootReport) -> String {
    let mut header = vec!["figure".to_string()];
    header.extend(
        report
            .systems
            .iter()
            .map(|s| format!("{} median (min-max)", s.system)),
    );
    let ratios = report.ratios_edgevisor_over_qemu;
    if ratios.is_some() {
        header.push("edgevisor/qemu".to_string());
    }

    type Pick = fn(&SystemResult) -> &Figure;
    type PickRatio = fn(&Ratios) -> Option<f64>;
    let rows: [(&str, Pick, f64, usize, PickRatio); 3] = [
        (
            "first output (ms)",
            |s| &s.first_output_ms,
            1.0,
            2,
            |r| r.first_output,
        ),
        ("exit (ms)", |s| &s.exit_ms, 1.0, 2, |r| r.exit),
        (
            "peak RSS (MiB)",
            |s| &s.peak_rss_kib,
            KIB_PER_MIB,
            1,
            |r| r.peak_rss,
        ),
    ];
    let mut table = vec![header];
    for (name, pick, scale, decimals, pick_ratio) in rows {
        let mut line = vec![name.to_string()];
        line.extend(
            report
                .systems
                .iter()
                .map(|s| cell(pick(s), scale, decimals)),
        );
        if let Some(r) = &ratios {
            line.push(ratio_cell(pick_ratio(r)));
        }
        table.push(line);
    }

    let columns = table.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| table.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();

    let mut out = String::new();
    let passed: Vec<String> = report
        .systems
        .iter()
        .map(|s| format!("{} {}/{}", s.system, s.runs_passed, report.runs_per_system))
        .collect();
    let _ = writeln!(
        out,
        "boot of the firmware probe ({}), interleaved, {} warm-up run(s) each; runs passed: {}",
        report.guest.protocol(),
        report.warmup_runs,
        passed.join(", ")
    );
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(text, width)| format!("{text:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    if let Some(floor) = report.rss_floor_kib {
        let _ = writeln!(
            out,
            "peak RSS floor: {:.1} MiB (the bench's anonymous memory, held by each forked child until exec)",
            floor as f64 / KIB_PER_MIB
        );
    }
    if let Some(version) = &report.qemu_version {
        let _ = writeln!(out, "qemu: {version}");
    }
    for failure in &report.failures {
        let kind = if failure.warmup { "warm-up run" } else { "run" };
        let _ = writeln!(
            out,
            "FAILED: {} {kind} {}: {}",
            failure.system, failure.run, failure.reason
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(system: System, first: &[f64], exit: &[f64], rss: &[f64]) -> SystemResult {
        SystemResult {
            system,
            command: vec![system.label().to_string()],
            runs_passed: first.len(),
            first_output_ms: Figure::from_samples(first.to_vec()),
            exit_ms: Figure::from_samples(exit.to_vec()),
            peak_rss_kib: Figure::from_samples(rss.to_vec()),
        }
    }

    fn report(systems: Vec<SystemResult>) -> BootReport {
        let mut report = BootReport {
            guest: Guest::Pvh,
            runs_per_system: 3,
            warmup_runs: 1,
            qemu_version: Some("QEMU emulator version 7.2.0".to_string()),
            rss_floor_kib: Some(512),
            systems,
            ratios_edgevisor_over_qemu: None,
            failures: Vec::new(),
        };
        report.compute_ratios();
        report
    }

    fn both() -> BootReport {
        report(vec![
            result(
                System::Edgevisor,
                &[6.0, 5.0, 7.0],
                &[9.0, 8.0, 10.0],
                &[4096.0, 4096.0, 5120.0],
            ),
            result(
                System::Qemu,
                &[40.0, 50.0, 45.0],
                &[100.0, 80.0, 90.0],
                &[36864.0, 35840.0, 40960.0],
            ),
        ])
    }

    #[test]
    fn ratios_divide_edgevisor_medians_by_qemu_medians() {
        let ratios = both().ratios_edgevisor_over_qemu.expect("both ran");
        assert_eq!(ratios.first_output, Some(6.0 / 45.0));
        assert_eq!(ratios.exit, Some(9.0 / 90.0));
        assert_eq!(ratios.peak_rss, Some(4096.0 / 36864.0));
    }

    #[test]
    fn no_ratios_with_one_system_or_no_passing_runs() {
        let one = report(vec![result(System::Qemu, &[1.0], &[2.0], &[3.0])]);
        assert_eq!(one.ratios_edgevisor_over_qemu, None);
        let empty = report(vec![
            result(System::Edgevisor, &[], &[], &[]),
            result(System::Qemu, &[1.0], &[2.0], &[3.0]),
        ]);
        let ratios = empty.ratios_edgevisor_over_qemu.expect("both listed");
        assert_eq!(
            (ratios.first_output, ratios.exit, ratios.peak_rss),
            (None, None, None)
        );
    }

    #[test]
    fn table_rows_show_median_min_max_and_ratio() {
        let table = render_table(&both());
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} row in\n{table}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            row("first output"),
            "first output (ms) 6.00 (5.00-7.00) 45.00 (40.00-50.00) 0.13"
        );
        assert_eq!(
            row("exit"),
            "exit (ms) 9.00 (8.00-10.00) 90.00 (80.00-100.00) 0.10"
        );
        assert_eq!(
            row("peak RSS"),
            "peak RSS (MiB) 4.0 (4.0-5.0) 36.0 (35.0-40.0) 0.11"
        );
        assert!(table.contains("edgevisor/qemu"));
        assert!(table.contains("edgevisor 3/3, qemu-microvm 3/3"));
        assert!(table.contains("peak RSS floor: 0.5 MiB"), "{table}");
    }

    #[test]
    fn table_columns_line_up() {
        let table = render_table(&both());
        let lines: Vec<&str> = table.lines().skip(1).take(4).collect();
        let header = lines[0];
        assert!(header.starts_with("figure"), "{table}");
        for title in ["edgevisor median", "qemu-microvm median", "edgevisor/qemu"] {
            let at = header
                .find(title)
                .unwrap_or_else(|| panic!("{title} missing in\n{table}"));
            for line in &lines[1..] {
                let bytes = line.as_bytes();
                assert!(
                    bytes[at - 1] == b' ' && bytes[at] != b' ',
                    "column {title} misaligned in\n{table}"
                );
            }
        }
    }

    #[test]
    fn single_system_table_has_no_ratio_column_and_lists_failures() {
        let mut one = report(vec![result(System::Qemu, &[1.0], &[2.0], &[1024.0])]);
        one.failures.push(RunFailure {
            system: System::Qemu,
            warmup: false,
            run: 2,
            reason: "exit code 3, expected 1".to_string(),
        });
        let table = render_table(&one);
        assert!(!table.contains("edgevisor/qemu"), "{table}");
        assert!(table.contains("FAILED: qemu-microvm run 2: exit code 3, expected 1"));
    }

    #[test]
    fn json_carries_summaries_samples_and_ratios() {
        let value = serde_json::to_value(both()).expect("serializes");
        assert_eq!(value["guest"], "pvh");
        assert_eq!(value["systems"][0]["system"], "edgevisor");
        assert_eq!(value["systems"][1]["system"], "qemu");
        assert_eq!(value["systems"][1]["first_output_ms"]["median"], 45.0);
        assert_eq!(value["systems"][1]["exit_ms"]["min"], 80.0);
        assert_eq!(
            value["systems"][0]["peak_rss_kib"]["samples"],
            serde_json::json!([4096.0, 4096.0, 5120.0])
        );
        assert_eq!(value["ratios_edgevisor_over_qemu"]["exit"], 0.1);
        assert_eq!(value["failures"], serde_json::json!([]));
    }
}
