//! The node-feature-discovery feature file: format and atomic replacement.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use agent::capabilities::collect_from;
use agent::nfd::{feature_lines, write_features, FILE_NAME, MAX_LEN, PREFIX};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agentobs-nfd-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// NFD label value rule: empty, or 1-63 of [A-Za-z0-9._-] starting and ending alphanumeric.
fn valid_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= MAX_LEN
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

#[test]
fn raspberry_pi_features() {
    let caps = collect_from(&data("rpi4"));
    let dir = temp_dir("rpi");
    let path = write_features(&dir, &caps).unwrap();
    assert_eq!(path, dir.join(FILE_NAME));
    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(lines.contains(&"edgevisor.io/board.model=Raspberry_Pi_4_Model_B_Rev_1.4"));
    assert!(lines.contains(&"edgevisor.io/board.raspberry-pi=true"));
    assert!(lines.contains(&"edgevisor.io/arch=aarch64"));
    assert!(lines.contains(&"edgevisor.io/cpu.model=Cortex-A72"));
    assert!(lines.contains(&"edgevisor.io/kvm=false"));
    assert!(lines.contains(&"edgevisor.io/hugepages-2M=true"));
    for line in &lines {
        let (name, value) = line.split_once('=').unwrap();
        let short = name.strip_prefix(PREFIX).unwrap();
        assert!(valid_value(short), "bad name {name:?}");
        assert!(valid_value(value), "bad value in {line:?}");
    }
    // The file holds exactly the feature lines.
    assert_eq!(lines, feature_lines(&caps));
    // Nothing but the feature file is left in the directory.
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [FILE_NAME]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sriov_and_long_values() {
    let mut caps = collect_from(&data("x86-sriov"));
    caps.cpu.model = format!(
        "{} with a very long marketing suffix (tm) {}",
        caps.cpu.model,
        "x".repeat(80)
    );
    let lines = feature_lines(&caps);
    assert!(lines.contains(&"edgevisor.io/sriov=true".to_string()));
    assert!(lines.contains(&"edgevisor.io/sriov.total-vfs=64".to_string()));
    assert!(lines.contains(&"edgevisor.io/board.model=Supermicro_SYS-E300-9D-8CN8TP".to_string()));
    let cpu = lines
        .iter()
        .find(|l| l.starts_with("edgevisor.io/cpu.model="))
        .unwrap();
    let value = cpu.split_once('=').unwrap().1;
    // Cut to 63 characters, then trimmed back to end on a letter or digit.
    assert!(
        value.len() <= MAX_LEN && value.len() > MAX_LEN - 4,
        "{value}"
    );
    assert!(value.starts_with("Intel_R_Xeon_R_D-2146NT"), "{value}");
    assert!(valid_value(value));
}

#[test]
fn readers_never_see_a_partial_file() {
    let dir = temp_dir("atomic");
    let a = collect_from(&data("rpi4"));
    let b = collect_from(&data("x86-sriov"));
    let text_of = |caps| {
        let mut s = String::from("# written by edgevisor-agent; do not edit\n");
        for l in feature_lines(caps) {
            s.push_str(&l);
            s.push('\n');
        }
        s
    };
    let (ta, tb) = (text_of(&a), text_of(&b));
    write_features(&dir, &a).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, path, ta, tb) = (stop.clone(), dir.join(FILE_NAME), ta.clone(), tb.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let got = fs::read_to_string(&path).unwrap();
                assert!(got == ta || got == tb, "partial file seen: {got:?}");
                reads += 1;
            }
            reads
        })
    };
    for i in 0..300 {
        write_features(&dir, if i % 2 == 0 { &b } else { &a }).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    assert_eq!(fs::read_to_string(dir.join(FILE_NAME)).unwrap(), ta);
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        1,
        "temp files left behind"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_directory_is_an_error() {
    let caps = collect_from(&data("rpi4"));
    let err = write_features(Path::new("/nonexistent/agentobs"), &caps).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}
