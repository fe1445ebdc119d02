//! vCPU state at entry, as the arm64 boot protocol wants it: PC = the kernel's first byte,
//! X0 = the FDT's address, X1-X3 = 0, PSTATE = EL1h with D, A, I and F masked. The boot vCPU
//! starts running; the others start powered off and come up through PSCI CPU_ON.
//!
//! Register ids follow the KVM API (Documentation/virt/kvm/api.rst, "ARM64 registers"):
//! core registers are `0x6030 0000 0010 <offset in u32 units into struct kvm_regs>`.

/// KVM_REG_ARM64.
pub const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
/// KVM_REG_SIZE_U64.
pub const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
/// KVM_REG_ARM_CORE.
pub const KVM_REG_ARM_CORE: u64 = 0x0010_0000;
/// KVM_REG_ARM64_SYSREG.
pub const KVM_REG_ARM64_SYSREG: u64 = 0x0013 << 16;

/// Byte offset of `regs.pc` in `struct kvm_regs` (31 X registers, then SP, then PC).
const PC_OFFSET: u64 = 32 * 8;
/// Byte offset of `regs.pstate`.
const PSTATE_OFFSET: u64 = 33 * 8;

/// PSTATE mode EL1 with SP_EL1.
pub const PSR_MODE_EL1H: u64 = 0x5;
/// PSTATE F (FIQ masked).
pub const PSR_F_BIT: u64 = 1 << 6;
/// PSTATE I (IRQ masked).
pub const PSR_I_BIT: u64 = 1 << 7;
/// PSTATE A (SError masked).
pub const PSR_A_BIT: u64 = 1 << 8;
/// PSTATE D (debug masked).
pub const PSR_D_BIT: u64 = 1 << 9;
/// PSTATE at entry: EL1h, DAIF all masked.
pub const BOOT_PSTATE: u64 = PSR_MODE_EL1H | PSR_F_BIT | PSR_I_BIT | PSR_A_BIT | PSR_D_BIT;

/// The id of a 64-bit core register at byte `offset` into `struct kvm_regs`.
pub const fn core_reg(offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offset / 4)
}

/// The id of X`n` (n <= 30).
pub const fn x_reg(n: u64) -> u64 {
    core_reg(n * 8)
}

/// The id of PC.
pub const PC: u64 = core_reg(PC_OFFSET);
/// The id of PSTATE.
pub const PSTATE: u64 = core_reg(PSTATE_OFFSET);

/// The id of a system register from its encoding (op0, op1, CRn, CRm, op2).
pub const fn sys_reg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

/// MPIDR_EL1 (S3_0_C0_C0_5).
pub const MPIDR_EL1: u64 = sys_reg(3, 0, 0, 0, 5);

/// The (register id, value) pairs the boot vCPU starts with.
pub fn boot_regs(entry: u64, fdt_addr: u64) -> [(u64, u64); 6] {
    [
        (PSTATE, BOOT_PSTATE),
        (PC, entry),
        (x_reg(0), fdt_addr),
        (x_reg(1), 0),
        (x_reg(2), 0),
        (x_reg(3), 0),
    ]
}

#[cfg(target_arch = "aarch64")]
pub use kvm::{init_vcpu, read_mpidr, set_boot_regs, RegsError};

#[cfg(target_arch = "aarch64")]
mod kvm {
    use kvm_bindings::{kvm_vcpu_init, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2};
    use kvm_ioctls::{VcpuFd, VmFd};

    /// Why a vCPU could not be set up.
    #[derive(Debug, thiserror::Error)]
    pub enum RegsError {
        /// KVM_ARM_PREFERRED_TARGET failed.
        #[error("KVM did not name a preferred vCPU target ({0}): this host's KVM cannot run arm64 guests")]
        PreferredTarget(#[source] kvm_ioctls::Error),
        /// KVM_ARM_VCPU_INIT failed.
        #[error("KVM_ARM_VCPU_INIT of vCPU {index} with PSCI 0.2 failed ({source}): this host's KVM refused the vCPU features")]
        Init {
            /// vCPU index.
            index: u32,
            /// The ioctl error.
            #[source]
            source: kvm_ioctls::Error,
        },
        /// A register could not be read or written.
        #[error("KVM could not access register {id:#x} of vCPU {index} ({source})")]
        Reg {
            /// vCPU index.
            index: u32,
            /// Register id.
            id: u64,
            /// The ioctl error.
            #[source]
            source: kvm_ioctls::Error,
        },
    }

    /// KVM_ARM_VCPU_INIT with PSCI 0.2; every vCPU but the first starts powered off.
    pub fn init_vcpu(vm: &VmFd, vcpu: &VcpuFd, index: u32) -> Result<(), RegsError> {
        let mut kvi = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut kvi)
            .map_err(RegsError::PreferredTarget)?;
        kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        if index > 0 {
            kvi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
        }
        vcpu.vcpu_init(&kvi)
            .map_err(|source| RegsError::Init { index, source })
    }

    /// Sets PC, X0-X3 and PSTATE of the boot vCPU.
    pub fn set_boot_regs(vcpu: &VcpuFd, entry: u64, fdt_addr: u64) -> Result<(), RegsError> {
        for (id, value) in super::boot_regs(entry, fdt_addr) {
            vcpu.set_one_reg(id, &value.to_le_bytes())
                .map_err(|source| RegsError::Reg {
                    index: 0,
                    id,
                    source,
                })?;
        }
        Ok(())
    }

    /// The vCPU's MPIDR_EL1, for the FDT's cpu nodes.
    pub fn read_mpidr(vcpu: &VcpuFd, index: u32) -> Result<u64, RegsError> {
        let mut bytes = [0u8; 8];
        vcpu.get_one_reg(super::MPIDR_EL1, &mut bytes)
            .map_err(|source| RegsError::Reg {
                index,
                id: super::MPIDR_EL1,
                source,
            })?;
        Ok(u64::from_le_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ids_match_the_kvm_api_document() {
        // Values listed in Documentation/virt/kvm/api.rst.
        assert_eq!(x_reg(0), 0x6030_0000_0010_0000);
        assert_eq!(x_reg(1), 0x6030_0000_0010_0002);
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
        // MPIDR_EL1 = op0 3, op1 0, CRn 0, CRm 0, op2 5.
        assert_eq!(MPIDR_EL1, 0x6030_0000_0013_c005);
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn register_ids_match_kvm_bindings_layout() {
        use std::mem::offset_of;
        let pc = offset_of!(kvm_bindings::kvm_regs, regs.pc) as u64;
        let pstate = offset_of!(kvm_bindings::kvm_regs, regs.pstate) as u64;
        assert_eq!(core_reg(pc), PC);
        assert_eq!(core_reg(pstate), PSTATE);
        assert_eq!(KVM_REG_ARM64, kvm_bindings::KVM_REG_ARM64);
        assert_eq!(KVM_REG_SIZE_U64, kvm_bindings::KVM_REG_SIZE_U64);
        assert_eq!(KVM_REG_ARM_CORE, u64::from(kvm_bindings::KVM_REG_ARM_CORE));
    }

    #[test]
    fn boot_state_is_el1h_with_daif_masked_and_x0_the_fdt() {
        assert_eq!(BOOT_PSTATE, 0x3c5);
        let regs = boot_regs(0x4020_0000, 0x5fe0_0000);
        let get = |id| regs.iter().find(|(r, _)| *r == id).map(|(_, v)| *v);
        assert_eq!(get(PC), Some(0x4020_0000));
        assert_eq!(get(x_reg(0)), Some(0x5fe0_0000));
        assert_eq!(get(x_reg(1)), Some(0));
        assert_eq!(get(x_reg(3)), Some(0));
        assert_eq!(get(PSTATE), Some(BOOT_PSTATE));
    }
}
