//! Initial CPU state for each boot protocol: GDT, identity page tables, segment and
//! control registers, MSRs, FPU and local APIC.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;
use images::BootProtocol;

/// Errors while setting up a vCPU's initial state.
#[derive(Debug, thiserror::Error)]
pub enum CpuSetupError {
    /// Writing boot tables into guest memory failed.
    #[error("could not write the {what} into guest memory: {source}")]
    GuestMemory {
        /// Which table.
        what: &'static str,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A KVM vCPU ioctl failed.
    #[error("KVM refused to set the vCPU's {what}: {source}")]
    Kvm {
        /// Which state.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT selectors (docs/GUEST_INTERFACE.md).
pub const CODE32_SELECTOR: u16 = 0x08;
/// 64-bit code segment.
pub const CODE64_SELECTOR: u16 = 0x10;
/// Flat data segment.
pub const DATA_SELECTOR: u16 = 0x18;
/// Task state segment.
pub const TSS_SELECTOR: u16 = 0x20;

/// Encodes a GDT descriptor from its access/flags word, base and limit.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The GDT: null, 32-bit code, 64-bit code, data, TSS.
pub fn gdt() -> [u64; 5] {
    [
        0,
        gdt_entry(0xc09b, 0, 0xfffff),
        gdt_entry(0xa09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Turns a GDT descriptor back into KVM's segment form.
fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and the identity page tables (0-4 GiB, 2 MiB pages).
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), CpuSetupError> {
    let wrap = |what| move |source| CpuSetupError::GuestMemory { what, source };
    for (i, entry) in gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + i as u64 * 8))
            .map_err(wrap("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(wrap("IDT"))?;
    mem.write_obj(PDPT_START | 0x3, GuestAddress(PML4_START))
        .map_err(wrap("page tables"))?;
    for pd in 0..4u64 {
        let pd_addr = PD_START + pd * 0x1000;
        mem.write_obj(pd_addr | 0x3, GuestAddress(PDPT_START + pd * 8))
            .map_err(wrap("page tables"))?;
        let mut table = [0u8; 4096];
        for (i, slot) in table.chunks_exact_mut(8).enumerate() {
            let phys = ((pd << 9) + i as u64) << 21;
            // Present, writable, 2 MiB page.
            slot.copy_from_slice(&(phys | 0x83).to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(pd_addr))
            .map_err(wrap("page tables"))?;
    }
    Ok(())
}

/// Special registers for `protocol`'s entry state.
pub fn boot_sregs(mut sregs: kvm_sregs, protocol: BootProtocol) -> kvm_sregs {
    let table = gdt();
    let data = segment_from_gdt(table[3], DATA_SELECTOR);
    let tss = segment_from_gdt(table[4], TSS_SELECTOR);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match protocol {
        BootProtocol::Linux64 => {
            sregs.cs = segment_from_gdt(table[2], CODE64_SELECTOR);
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh | BootProtocol::Multiboot => {
            sregs.cs = segment_from_gdt(table[1], CODE32_SELECTOR);
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// General registers: entry point and the protocol's handoff registers.
pub fn boot_regs(protocol: BootProtocol, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        ..Default::default()
    };
    match protocol {
        BootProtocol::Linux64 => regs.rsi = ZERO_PAGE_START,
        BootProtocol::Pvh => regs.rbx = super::layout::PVH_INFO_START,
        BootProtocol::Multiboot => {
            regs.rax = super::boot_info::MULTIBOOT_BOOTLOADER_MAGIC as u64;
            regs.rbx = MB_INFO_START;
        }
    }
    regs
}

/// Sets the boot MSRs, FPU and LAPIC of one vCPU, then its registers for `protocol`.
/// Application processors (id > 0) get only the MSR/FPU/LAPIC part: they wait for INIT/SIPI.
pub fn setup_vcpu(
    vcpu: &VcpuFd,
    id: u8,
    protocol: BootProtocol,
    entry: u64,
) -> Result<(), CpuSetupError> {
    let kvm = |what| move |source| CpuSetupError::Kvm { what, source };
    set_boot_msrs(vcpu)?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU state"))?;
    set_lint(vcpu)?;
    if id == 0 {
        let sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
        vcpu.set_sregs(&boot_sregs(sregs, protocol))
            .map_err(kvm("special registers"))?;
        vcpu.set_regs(&boot_regs(protocol, entry))
            .map_err(kvm("registers"))?;
    }
    Ok(())
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;

fn set_boot_msrs(vcpu: &VcpuFd) -> Result<(), CpuSetupError> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuSetupError::Kvm {
        what: "MSRs",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    // KVM stops at the first MSR it does not accept; the guest reprograms these anyway, so a
    // short count only costs the defaults it could not take.
    vcpu.set_msrs(&msrs).map_err(|source| CpuSetupError::Kvm {
        what: "MSRs",
        source,
    })?;
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_lint(vcpu: &VcpuFd) -> Result<(), CpuSetupError> {
    let kvm = |what| move |source| CpuSetupError::Kvm { what, source };
    let mut lapic: kvm_lapic_state = vcpu.get_lapic().map_err(kvm("local APIC"))?;
    let mut patch = |reg: usize, mode: u32| {
        let bytes: Vec<u8> = lapic.regs[reg..reg + 4].iter().map(|b| *b as u8).collect();
        let v = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let v = (v & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    };
    patch(APIC_LVT0, APIC_MODE_EXTINT);
    patch(APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm("local APIC"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let t = gdt();
        let cs64 = segment_from_gdt(t[2], CODE64_SELECTOR);
        assert_eq!((cs64.l, cs64.db, cs64.g, cs64.type_), (1, 0, 1, 0xb));
        assert_eq!(cs64.limit, 0xffff_ffff);
        assert_eq!(cs64.base, 0);
        let cs32 = segment_from_gdt(t[1], CODE32_SELECTOR);
        assert_eq!((cs32.l, cs32.db, cs32.present), (0, 1, 1));
        let ds = segment_from_gdt(t[3], DATA_SELECTOR);
        assert_eq!((ds.type_, ds.s, ds.unusable), (3, 1, 0));
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn protocols_get_their_modes() {
        let long = boot_sregs(kvm_sregs::default(), BootProtocol::Linux64);
        assert_eq!(long.efer & EFER_LMA, EFER_LMA);
        assert_eq!(long.cr0 & CR0_PG, CR0_PG);
        assert_eq!(long.cr3, PML4_START);
        let prot = boot_sregs(kvm_sregs::default(), BootProtocol::Multiboot);
        assert_eq!(prot.cr0 & CR0_PG, 0);
        assert_eq!(prot.cr0 & CR0_PE, CR0_PE);
        assert_eq!(prot.cs.selector, CODE32_SELECTOR);
        let regs = boot_regs(BootProtocol::Multiboot, 0x100000);
        assert_eq!(regs.rax, 0x2bad_b002);
        assert_eq!(regs.rbx, MB_INFO_START);
        assert_eq!(
            boot_regs(BootProtocol::Linux64, 0x100200).rsi,
            ZERO_PAGE_START
        );
        assert_eq!(boot_regs(BootProtocol::Pvh, 0x100000).rbx, PVH_INFO_START);
    }
}
