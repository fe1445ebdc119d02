//! Why a VM stopped, and the process exit code that stands for it
//! (table in docs/GUEST_INTERFACE.md).

use serde::Serialize;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum ExitReason {
    /// ACPI PM1a S5 write.
    Poweroff,
    /// i8042 reset command.
    Reset,
    /// pvpanic write.
    Panic,
    /// isa-debug-exit write of `value`.
    DebugExit {
        /// The byte the guest wrote.
        value: u8,
    },
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault,
    /// KVM could not run the guest's instruction.
    InternalError {
        /// KVM's suberror (1: emulation failure).
        suberror: u32,
        /// Guest RIP.
        rip: u64,
        /// Bytes at RIP, hex, when readable.
        bytes: String,
        /// Whether the host has VMX/SVM.
        hardware_virtualization: bool,
    },
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry {
        /// Hardware entry failure reason.
        hardware_reason: u64,
    },
    /// A vCPU ioctl failed or KVM reported an exit we do not handle.
    VcpuError {
        /// What happened.
        detail: String,
    },
    /// Stopped from outside: API call or signal.
    Stopped,
}

impl ExitReason {
    /// The process exit code for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Poweroff | ExitReason::Reset => 0,
            ExitReason::DebugExit { value } => ((*value as i32) << 1) | 1,
            ExitReason::Panic => 4,
            ExitReason::TripleFault
            | ExitReason::InternalError { .. }
            | ExitReason::FailEntry { .. }
            | ExitReason::VcpuError { .. } => 6,
            ExitReason::Stopped => 8,
        }
    }

    /// Short machine-readable name.
    pub fn name(&self) -> &'static str {
        match self {
            ExitReason::Poweroff => "poweroff",
            ExitReason::Reset => "reset",
            ExitReason::Panic => "panic",
            ExitReason::DebugExit { .. } => "debug-exit",
            ExitReason::TripleFault => "triple-fault",
            ExitReason::InternalError { .. } => "internal-error",
            ExitReason::FailEntry { .. } => "fail-entry",
            ExitReason::VcpuError { .. } => "vcpu-error",
            ExitReason::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Poweroff => write!(f, "guest powered off (ACPI S5)"),
            ExitReason::Reset => write!(f, "guest asked for a reset (i8042)"),
            ExitReason::Panic => write!(f, "guest panicked (pvpanic)"),
            ExitReason::DebugExit { value } => {
                write!(f, "guest wrote {value:#x} to isa-debug-exit")
            }
            ExitReason::TripleFault => write!(f, "guest triple-faulted (KVM shutdown)"),
            ExitReason::InternalError {
                suberror,
                rip,
                bytes,
                hardware_virtualization,
            } => {
                write!(
                    f,
                    "KVM internal error (suberror {suberror}) at RIP {rip:#x}, instruction bytes [{bytes}]"
                )?;
                if *suberror == 1 {
                    write!(f, ": KVM could not emulate this instruction")?;
                    if !hardware_virtualization {
                        write!(
                            f,
                            "; this host has no VMX/SVM, so its KVM runs guest code through an instruction emulator that lacks SSE, xsave and similar instructions: run this guest on a host with hardware virtualization"
                        )?;
                    }
                }
                Ok(())
            }
            ExitReason::FailEntry { hardware_reason } => {
                write!(
                    f,
                    "KVM failed to enter the guest (hardware reason {hardware_reason:#x})"
                )
            }
            ExitReason::VcpuError { detail } => write!(f, "vCPU error: {detail}"),
            ExitReason::Stopped => write!(f, "stopped from outside"),
        }
    }
}

/// Whether this host's CPU advertises VMX or SVM.
pub fn host_has_hardware_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|w| w == "vmx" || w == "svm"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_documented_table() {
        assert_eq!(ExitReason::Poweroff.exit_code(), 0);
        assert_eq!(ExitReason::Reset.exit_code(), 0);
        assert_eq!(ExitReason::DebugExit { value: 0 }.exit_code(), 1);
        assert_eq!(ExitReason::DebugExit { value: 1 }.exit_code(), 3);
        assert_eq!(ExitReason::DebugExit { value: 0x7f }.exit_code(), 255);
        assert_eq!(ExitReason::Panic.exit_code(), 4);
        assert_eq!(ExitReason::TripleFault.exit_code(), 6);
        assert_eq!(ExitReason::Stopped.exit_code(), 8);
    }

    #[test]
    fn internal_error_explains_missing_hardware_virtualization() {
        let e = ExitReason::InternalError {
            suberror: 1,
            rip: 0x1000,
            bytes: "0f ae 10".into(),
            hardware_virtualization: false,
        };
        let s = e.to_string();
        assert!(
            s.contains("0x1000") && s.contains("0f ae 10") && s.contains("VMX/SVM"),
            "{s}"
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["reason"], "internal-error");
    }
}
