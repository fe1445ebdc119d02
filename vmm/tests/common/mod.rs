//! Helpers shared by the VMM's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "edgevisor-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The probe image for a protocol name.
pub fn probe(name: &str) -> &'static [u8] {
    firmware::all()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
        .unwrap_or_else(|| panic!("no firmware probe named {name}"))
}

/// Runs `edgevisor` with `args`.
pub fn edgevisor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgevisor"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn edgevisor")
}

/// `edgevisor run --kernel <path> ...rest`.
pub fn run_kernel(path: &Path, rest: &[&str]) -> Output {
    let mut args = vec!["run", "--kernel", path.to_str().unwrap()];
    args.extend_from_slice(rest);
    edgevisor(&args)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Describes an output for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// FNV-1a 32-bit, as the probe computes it over the initrd.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ *b as u32).wrapping_mul(0x0100_0193)
    })
}
