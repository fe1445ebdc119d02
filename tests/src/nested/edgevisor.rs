//! Building the `edgevisor` binary that runs inside the L1 guest.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::command::describe;
use super::{tail, workspace_root, NestedError, Result};

/// The executable path of the `edgevisor` binary in cargo's JSON messages, if any.
fn artifact_path(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "edgevisor")
        .filter(|msg| {
            msg["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"))
        })
        .filter_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .next_back()
}

/// The compiler's rendered diagnostics in cargo's JSON messages.
fn rendered_errors(messages: &str) -> String {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-message" && msg["message"]["level"] == "error")
        .filter_map(|msg| msg["message"]["rendered"].as_str().map(str::to_string))
        .collect()
}

/// The `edgevisor` executable: `EDGEVISOR_BIN` if set, else built with
/// `cargo build --release -p vmm --bin edgevisor` from the workspace root (a no-op when it is up
/// to date) and located through cargo's JSON messages.
pub fn edgevisor_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("EDGEVISOR_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            let missing = std::io::Error::other("EDGEVISOR_BIN names no file");
            return Err(NestedError::io(&path, missing));
        }
        return Ok(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "-p", "vmm", "--bin", "edgevisor"])
        .arg("--message-format=json")
        .current_dir(workspace_root())
        .stdin(Stdio::null());
    let output = cmd.output().map_err(|source| NestedError::ToolMissing {
        program: "cargo".to_string(),
        source,
    })?;
    let messages = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let mut text = rendered_errors(&messages);
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(NestedError::CommandFailed {
            command: describe(&cmd),
            status: output.status.to_string(),
            output: tail(&text, 40),
        });
    }
    artifact_path(&messages).ok_or(NestedError::NoEdgevisorArtifact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bin_artifact_named_edgevisor_is_picked() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"vmm","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","target":{"name":"edgevisor","kind":["bin"]},"executable":"/t/release/edgevisor"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            artifact_path(messages),
            Some(PathBuf::from("/t/release/edgevisor"))
        );
        let no_bin = r#"{"reason":"compiler-artifact","target":{"name":"edgevisor","kind":["lib"]},"executable":null}"#;
        assert_eq!(artifact_path(no_bin), None);
    }

    #[test]
    fn compiler_errors_are_quoted_from_json() {
        let messages = r#"{"reason":"compiler-message","message":{"level":"error","rendered":"error[E0425]: oops\n"}}
{"reason":"compiler-message","message":{"level":"warning","rendered":"warning: meh\n"}}"#;
        assert_eq!(rendered_errors(messages), "error[E0425]: oops\n");
    }
}
