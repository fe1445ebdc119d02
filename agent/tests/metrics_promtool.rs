//! `promtool check metrics` (Debian package prometheus) accepts the classic text output and
//! a strict OpenMetrics parser (python3-prometheus-client) accepts the OpenMetrics output;
//! both carry the same series.

mod metrics_common;

use std::io::Write;
use std::process::{Command, Stdio};

use agent::metrics::{render, render_classic, CounterStore, Sample};

fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: run scripts/install-test-deps.sh (package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), msg)
}

#[test]
fn promtool_accepts_a_full_sample() {
    let mut store = CounterStore::in_memory();
    let text = render_classic(&metrics_common::sample(&mut store));
    let (ok, msg) = promtool(&text);
    assert!(ok, "promtool rejected the output: {msg}\n{text}");
    assert!(
        msg.trim().is_empty(),
        "promtool lint findings: {msg}\n{text}"
    );
}

#[test]
fn promtool_accepts_an_empty_node() {
    let (ok, msg) = promtool(&render_classic(&Sample::default()));
    assert!(ok && msg.trim().is_empty(), "{msg}");
}

#[test]
fn promtool_catches_a_broken_exposition() {
    // The checker itself must fail on a bad name, or the tests above prove nothing.
    let mut store = CounterStore::in_memory();
    let text = render_classic(&metrics_common::sample(&mut store))
        .replace("edgevisor_vm_exits_total", "edgevisor_vm_exits_count");
    let (_, msg) = promtool(&text);
    assert!(
        !msg.trim().is_empty(),
        "promtool found nothing wrong in:\n{text}"
    );
}

/// Parses OpenMetrics text with prometheus_client's strict parser; prints
/// "name|labels|value" per sample.
const PARSE_OPENMETRICS: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{fam.type}|{fam.unit}|{s.name}|{labels}|{s.value}")
"#;

fn strict_openmetrics(text: &str) -> Result<String, String> {
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PARSE_OPENMETRICS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 not found: run scripts/install-test-deps.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn strict_openmetrics_parser_accepts_render() {
    let mut store = CounterStore::in_memory();
    let text = render(&metrics_common::sample(&mut store));
    let parsed = strict_openmetrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let lines: Vec<&str> = parsed.lines().collect();
    // Guest a: 40 io exits before its restart plus 2 after.
    assert!(
        lines.contains(&"counter||edgevisor_vm_exits_total|reason=io,vm=a|42"),
        "{parsed}"
    );
    assert!(
        lines.contains(&"counter|seconds|edgevisor_vm_cpu_seconds_total|vm=a|2.5"),
        "{parsed}"
    );
    assert!(
        lines.contains(&"gauge|bytes|edgevisor_vm_resident_memory_bytes|vm=b|33554432"),
        "{parsed}"
    );
    // Every sample of the OpenMetrics text is in the classic text too, same value.
    let classic = render_classic(&metrics_common::sample(&mut CounterStore::in_memory()));
    let samples = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(samples(&text), samples(&classic));
}

#[test]
fn strict_openmetrics_parser_rejects_a_missing_eof() {
    let good = render(&Sample::default());
    strict_openmetrics(&good).unwrap_or_else(|e| panic!("python3-prometheus-client missing? {e}"));
    let err = strict_openmetrics(&good.replace("# EOF\n", "")).unwrap_err();
    assert!(err.contains("EOF"), "{err}");
}
