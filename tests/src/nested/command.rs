//! Running host tools with errors that say what to do.

use std::process::{Command, Output, Stdio};

use super::{tail, NestedError, Result};

/// How a command line reads in an error message.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `cmd` to completion with stdin closed; returns its output when it exits 0.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NestedError::ToolMissing {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    if output.status.success() {
        return Ok(output);
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Err(NestedError::CommandFailed {
        command: describe(cmd),
        status: output.status.to_string(),
        output: tail(&text, 30),
    })
}

/// Runs `cmd` and returns its stdout as text when it exits 0.
pub(crate) fn stdout_of(cmd: &mut Command) -> Result<String> {
    let output = run(cmd)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
