//! `edgevisor-jailer`: start `edgevisor` in a per-VM sandbox (see `vmm::jail`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ExitCode::from(vmm::jail::main_with(vmm::jail::JailerCli::parse()))
}
