//! Finding the programs to run: building `edgevisor` with cargo, asking QEMU its version.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::BenchError;

/// The workspace root this crate was built in (where `cargo build -p vmm` works).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Builds the release `edgevisor` binary in `workspace` and returns its path, as
/// cargo's JSON messages name it. Cargo's progress goes to our stderr.
pub fn build_edgevisor(workspace: &Path) -> Result<PathBuf, BenchError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "vmm",
            "--bin",
            "edgevisor",
            "--message-format=json",
        ])
        .current_dir(workspace)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| BenchError::Spawn {
            program: cargo.to_string_lossy().into_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(BenchError::BuildFailed {
            workspace: workspace.to_path_buf(),
            status: output.status.to_string(),
        });
    }
    let messages = String::from_utf8_lossy(&output.stdout);
    executable_from_cargo_json(&messages).ok_or_else(|| BenchError::NoExecutable {
        workspace: workspace.to_path_buf(),
    })
}

/// The `executable` of the last `compiler-artifact` message for the `edgevisor` bin
/// target in cargo's `--message-format=json` output (one JSON object per line).
pub fn executable_from_cargo_json(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["target"]["name"] == "edgevisor")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"))
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// First line of `qemu --version`; fails when QEMU cannot be started.
pub fn qemu_version(qemu: &Path) -> Result<String, BenchError> {
    let output = Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BenchError::Spawn {
            program: qemu.to_string_lossy().into_owned(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_edgevisor_bin_executable_among_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"vmm","kind":["lib"]},"executable":null}
not json at all
{"reason":"compiler-artifact","target":{"name":"edgevisor","kind":["bin"]},"executable":"/t/release/edgevisor"}
{"reason":"compiler-artifact","target":{"name":"edgevisor-agent","kind":["bin"]},"executable":"/t/release/edgevisor-agent"}
{"reason":"compiler-artifact","target":{"name":"edgevisor","kind":["bin"]},"executable":"/t/release/deps/../edgevisor"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable_from_cargo_json(messages),
            Some(PathBuf::from("/t/release/deps/../edgevisor")),
            "the last message for the bin wins"
        );
    }

    #[test]
    fn no_executable_when_cargo_names_none() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"edgevisor","kind":["lib"]},"executable":"/x"}
{"reason":"compiler-artifact","target":{"name":"edgevisor","kind":["bin"]},"executable":null}"#;
        assert_eq!(executable_from_cargo_json(messages), None);
        assert_eq!(executable_from_cargo_json(""), None);
    }

    #[test]
    fn workspace_root_holds_the_vmm_crate() {
        assert!(workspace_root().join("vmm").join("Cargo.toml").is_file());
    }
}
