//! `edgevisor-bench boot`: whole-process boot of the firmware probe, edgevisor and
//! QEMU microvm interleaved run by run.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::BenchError;
use crate::locate;
use crate::measure::{measure, own_anon_rss_kib, RunOutcome};
use crate::report::{BootReport, Figure, RunFailure, SystemResult};
use crate::systems::{edgevisor_argv, qemu_argv, Guest, GuestFile, System, EXPECTED_EXIT_CODE};

/// What `boot` was asked to do.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Measured runs per system.
    pub runs: usize,
    /// Unmeasured runs per system first (page cache, lazy binding).
    pub warmup: usize,
    /// Which probe image to boot.
    pub guest: Guest,
    /// Run only this system (no ratios then).
    pub only: Option<System>,
    /// The edgevisor binary; `None` builds it with cargo.
    pub edgevisor: Option<PathBuf>,
    /// The QEMU binary (a bare name is looked up in PATH).
    pub qemu: PathBuf,
    /// A run still going after this long is killed and fails.
    pub timeout: Duration,
}

/// The systems in the order each round runs them.
pub fn systems(only: Option<System>) -> Vec<System> {
    match only {
        Some(system) => vec![system],
        None => vec![System::Edgevisor, System::Qemu],
    }
}

/// Interleaved order: `rounds` rounds, each running every system once (A B A B ...).
/// Each entry is the 1-based round and the system.
pub fn schedule<T: Copy>(systems: &[T], rounds: usize) -> Vec<(usize, T)> {
    (1..=rounds)
        .flat_map(|round| systems.iter().map(move |&system| (round, system)))
        .collect()
}

/// Whether a run passed: it exited by itself with [`EXPECTED_EXIT_CODE`] and its output
/// has the probe's `PROBE PASS` line for `guest`. The error says why not.
pub fn check_run(outcome: &RunOutcome, guest: Guest) -> Result<(), String> {
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let pass_line = guest.pass_line();
    let passed = stdout.lines().any(|line| line.trim_end() == pass_line);
    let problem = if outcome.timed_out {
        Some("did not exit before the time limit and was killed".to_string())
    } else if outcome.status.code() != Some(EXPECTED_EXIT_CODE) {
        Some(format!(
            "ended with {}, expected exit code {EXPECTED_EXIT_CODE}",
            outcome.status
        ))
    } else if !passed {
        Some(format!("its output lacks the line `{pass_line}`"))
    } else {
        None
    };
    let Some(problem) = problem else {
        return Ok(());
    };
    let mut reason = problem;
    let last_stdout = stdout.lines().rev().find(|l| !l.trim().is_empty());
    if let Some(line) = last_stdout {
        reason.push_str(&format!("; last output line: {:?}", line.trim_end()));
    }
    let stderr = String::from_utf8_lossy(&outcome.stderr);
    let tail: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(3)
        .collect();
    if !tail.is_empty() {
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        reason.push_str(&format!("; stderr: {:?}", tail.join(" | ")));
    }
    Err(reason)
}

/// Passing runs' values of one system, and whether it has failed (then it runs no more).
#[derive(Debug, Default)]
struct Samples {
    first_output_ms: Vec<f64>,
    exit_ms: Vec<f64>,
    peak_rss_kib: Vec<f64>,
    failed: bool,
}

impl Samples {
    fn record(&mut self, outcome: &RunOutcome) {
        // Microsecond resolution: finer digits are noise and clutter the JSON.
        let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
        if let Some(first) = outcome.first_output {
            self.first_output_ms.push(ms(first));
        }
        self.exit_ms.push(ms(outcome.exit));
        self.peak_rss_kib.push(outcome.peak_rss_kib as f64);
    }
}

/// One system taking part: its command line and what it did.
struct Contender {
    system: System,
    argv: Vec<OsString>,
    samples: Samples,
}

/// Which run this is, as progress lines and failures name it.
struct RunLabel {
    system: System,
    warmup: bool,
    round: usize,
    rounds: usize,
}

impl fmt::Display for RunLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.warmup { "warm-up run" } else { "run" };
        write!(f, "{} {kind} {}/{}", self.system, self.round, self.rounds)
    }
}

impl Contender {
    /// Runs the system once and checks the run; a failure marks it failed for good.
    fn run_once(
        &mut self,
        label: &RunLabel,
        options: &BootOptions,
        progress: &mut dyn Write,
    ) -> Result<(), RunFailure> {
        let checked = measure(&self.argv, options.timeout)
            .map_err(|e| e.to_string())
            .and_then(|outcome| check_run(&outcome, options.guest).map(|()| outcome));
        match checked {
            Ok(outcome) => {
                let _ = writeln!(progress, "{label}: {}", describe(&outcome));
                if !label.warmup {
                    self.samples.record(&outcome);
                }
                Ok(())
            }
            Err(reason) => {
                let _ = writeln!(progress, "{label} FAILED: {reason}; no more runs of it");
                self.samples.failed = true;
                Err(RunFailure {
                    system: self.system,
                    warmup: label.warmup,
                    run: label.round,
                    reason,
                })
            }
        }
    }
}

/// One run's figures for a progress line.
fn describe(outcome: &RunOutcome) -> String {
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    format!(
        "first output {}, exit {}, peak RSS {:.1} MiB",
        outcome.first_output.map_or_else(|| "-".to_string(), ms),
        ms(outcome.exit),
        outcome.peak_rss_kib as f64 / 1024.0
    )
}

/// Runs the benchmark; progress lines go to `progress`. Run failures are in the
/// report's `failures`; errors are setup problems that stopped it before any run.
pub fn run_boot(options: &BootOptions, progress: &mut dyn Write) -> Result<BootReport, BenchError> {
    let order = systems(options.only);
    let guest_file = GuestFile::write(options.guest)?;
    let mut qemu_version = None;
    let mut contenders = Vec::new();
    for &system in &order {
        let argv = match system {
            System::Edgevisor => edgevisor_argv(&edgevisor_binary(options)?, guest_file.kernel()),
            System::Qemu => {
                qemu_version = Some(locate::qemu_version(&options.qemu)?);
                qemu_argv(&options.qemu, guest_file.kernel())
            }
        };
        contenders.push(Contender {
            system,
            argv,
            samples: Samples::default(),
        });
    }

    let mut failures = Vec::new();
    let mut rss_floor_kib = None;
    let phases = [(true, options.warmup), (false, options.runs)];
    for (warmup, rounds) in phases {
        let indices: Vec<usize> = (0..contenders.len()).collect();
        for (round, index) in schedule(&indices, rounds) {
            let contender = &mut contenders[index];
            if contender.samples.failed {
                continue;
            }
            let label = RunLabel {
                system: contender.system,
                warmup,
                round,
                rounds,
            };
            rss_floor_kib = rss_floor_kib.max(own_anon_rss_kib());
            if let Err(failure) = contender.run_once(&label, options, progress) {
                failures.push(failure);
            }
        }
    }

    let mut report = BootReport {
        guest: options.guest,
        runs_per_system: options.runs,
        warmup_runs: options.warmup,
        qemu_version,
        rss_floor_kib,
        systems: contenders.into_iter().map(result_of).collect(),
        ratios_edgevisor_over_qemu: None,
        failures,
    };
    report.compute_ratios();
    Ok(report)
}

fn result_of(contender: Contender) -> SystemResult {
    let samples = contender.samples;
    SystemResult {
        system: contender.system,
        command: contender
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        runs_passed: samples.exit_ms.len(),
        first_output_ms: Figure::from_samples(samples.first_output_ms),
        exit_ms: Figure::from_samples(samples.exit_ms),
        peak_rss_kib: Figure::from_samples(samples.peak_rss_kib),
    }
}

fn edgevisor_binary(options: &BootOptions) -> Result<PathBuf, BenchError> {
    let path = match &options.edgevisor {
        Some(path) => path.clone(),
        None => locate::build_edgevisor(&locate::workspace_root())?,
    };
    if !path.is_file() {
        return Err(BenchError::MissingEdgevisor { path });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn outcome(code: i32, stdout: &str, stderr: &str) -> RunOutcome {
        RunOutcome {
            first_output: Some(Duration::from_millis(5)),
            exit: Duration::from_millis(9),
            peak_rss_kib: 4096,
            status: ExitStatus::from_raw(code << 8),
            timed_out: false,
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    const PASS: &str = "probe: protocol=pvh\r\nPROBE PASS protocol=pvh\r\n";

    #[test]
    fn interleaves_systems_round_by_round() {
        use System::{Edgevisor as E, Qemu as Q};
        assert_eq!(
            schedule(&[E, Q], 3),
            [(1, E), (1, Q), (2, E), (2, Q), (3, E), (3, Q)]
        );
        assert_eq!(schedule(&[Q], 2), [(1, Q), (2, Q)]);
        assert!(schedule(&[E, Q], 0).is_empty());
    }

    #[test]
    fn only_restricts_the_systems() {
        assert_eq!(systems(None), [System::Edgevisor, System::Qemu]);
        assert_eq!(systems(Some(System::Qemu)), [System::Qemu]);
    }

    #[test]
    fn pass_line_and_expected_code_pass() {
        assert_eq!(check_run(&outcome(1, PASS, ""), Guest::Pvh), Ok(()));
    }

    #[test]
    fn wrong_exit_code_fails_and_shows_the_output_tail() {
        let out = "probe: x\nPROBE FAIL protocol=pvh check=rtc uip stuck\n";
        let reason =
            check_run(&outcome(3, out, "warn: a\nwarn: b\n"), Guest::Pvh).expect_err("exit code 3");
        assert!(reason.contains("expected exit code 1"), "{reason}");
        assert!(
            reason.contains("PROBE FAIL protocol=pvh check=rtc"),
            "{reason}"
        );
        assert!(reason.contains("warn: a | warn: b"), "{reason}");
    }

    #[test]
    fn missing_pass_line_fails_even_with_the_right_code() {
        let reason =
            check_run(&outcome(1, "probe: protocol=pvh\n", ""), Guest::Pvh).expect_err("no PASS");
        assert!(
            reason.contains("lacks the line `PROBE PASS protocol=pvh`"),
            "{reason}"
        );
    }

    #[test]
    fn pass_for_another_protocol_does_not_count() {
        let reason =
            check_run(&outcome(1, PASS, ""), Guest::Multiboot).expect_err("pvh != multiboot");
        assert!(reason.contains("PROBE PASS protocol=multiboot"), "{reason}");
    }

    #[test]
    fn timed_out_and_signalled_runs_fail() {
        let mut hung = outcome(0, PASS, "");
        hung.timed_out = true;
        hung.status = ExitStatus::from_raw(libc::SIGKILL);
        let reason = check_run(&hung, Guest::Pvh).expect_err("killed");
        assert!(reason.contains("time limit"), "{reason}");
    }

    #[test]
    fn samples_convert_to_milliseconds_and_kib() {
        let mut samples = Samples::default();
        samples.record(&outcome(1, PASS, ""));
        assert_eq!(samples.first_output_ms, [5.0]);
        assert_eq!(samples.exit_ms, [9.0]);
        assert_eq!(samples.peak_rss_kib, [4096.0]);
    }

    #[test]
    fn a_failing_system_stops_and_the_other_keeps_running() {
        // `/bin/false` stands in for a VMM whose guest fails (exit code 1, no PASS line);
        // a script stands in for a QEMU whose guest passes.
        let dir = std::env::temp_dir().join(format!("edgevisor-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let fake_qemu = dir.join("fake-qemu");
        std::fs::write(
            &fake_qemu,
            "#!/bin/sh\necho 'PROBE PASS protocol=pvh'\nexit 1\n",
        )
        .expect("write script");
        std::fs::set_permissions(
            &fake_qemu,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let options = BootOptions {
            runs: 3,
            warmup: 1,
            guest: Guest::Pvh,
            only: None,
            edgevisor: Some(PathBuf::from("/bin/false")),
            qemu: fake_qemu,
            timeout: Duration::from_secs(10),
        };
        let mut progress = Vec::new();
        let report = run_boot(&options, &mut progress);
        let _ = std::fs::remove_dir_all(&dir);
        let report = report.expect("setup works");

        assert_eq!(
            report.failures.len(),
            1,
            "edgevisor stops after its first failure"
        );
        let failure = &report.failures[0];
        assert_eq!(
            (failure.system, failure.warmup, failure.run),
            (System::Edgevisor, true, 1)
        );
        assert!(
            failure.reason.contains("lacks the line"),
            "{}",
            failure.reason
        );
        let edgevisor = report.system(System::Edgevisor).expect("listed");
        assert_eq!(edgevisor.runs_passed, 0);
        assert_eq!(edgevisor.exit_ms.median, None);
        let qemu = report.system(System::Qemu).expect("listed");
        assert_eq!(qemu.runs_passed, 3);
        assert_eq!(qemu.first_output_ms.samples.len(), 3);
        assert!(qemu.command.iter().any(|a| a.ends_with("probe-pvh.elf")));
        let ratios = report.ratios_edgevisor_over_qemu.expect("both took part");
        assert_eq!(ratios.exit, None);
        let progress = String::from_utf8_lossy(&progress);
        assert!(
            progress.contains("edgevisor warm-up run 1/1 FAILED"),
            "{progress}"
        );
        assert!(progress.contains("qemu-microvm run 3/3:"), "{progress}");
    }

    #[test]
    #[ignore = "boots the probe in QEMU on /dev/kvm: cargo test -p benches -- --ignored"]
    fn qemu_boots_the_probe_for_real() {
        for guest in [Guest::Pvh, Guest::Multiboot] {
            let options = BootOptions {
                runs: 2,
                warmup: 0,
                guest,
                only: Some(System::Qemu),
                edgevisor: None,
                qemu: PathBuf::from("qemu-system-x86_64"),
                timeout: Duration::from_secs(20),
            };
            let report = run_boot(&options, &mut std::io::sink()).expect("QEMU is installed");
            assert_eq!(report.failures, [], "{guest:?}");
            let qemu = report.system(System::Qemu).expect("ran");
            assert_eq!(qemu.runs_passed, 2);
            let first = qemu.first_output_ms.median.expect("output");
            let exit = qemu.exit_ms.median.expect("exited");
            assert!(
                first > 0.0 && first < exit,
                "first {first} ms, exit {exit} ms"
            );
            assert!(qemu.peak_rss_kib.median.is_some_and(|kib| kib > 1024.0));
            assert!(report.qemu_version.is_some_and(|v| v.contains("QEMU")));
        }
    }
}
