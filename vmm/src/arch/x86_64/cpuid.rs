//! The CPUID table each vCPU gets: what KVM supports, the vCPU's APIC id, and the hypervisor
//! leaves that let a guest skip TSC calibration (Unikraft's PIT calibration costs ~100 ms).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Highest hypervisor leaf we answer.
pub const HV_MAX_LEAF: u32 = 0x4000_0010;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
/// Local APIC timer frequency KVM emulates, in kHz (1 GHz).
const APIC_BUS_KHZ: u32 = 1_000_000;

/// Errors while building the CPUID table.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// The table has no room for the leaves we add.
    #[error("the CPUID table is full: KVM reported too many leaves to add the hypervisor ones")]
    Full,
}

fn entry(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    }
}

/// Patches KVM's supported CPUID for vCPU `id` of `vcpu_count`, with TSC frequency `tsc_khz`.
pub fn patch(supported: &CpuId, id: u8, vcpu_count: u8, tsc_khz: u32) -> Result<CpuId, CpuidError> {
    let mut out = CpuId::new(0).map_err(|_| CpuidError::Full)?;
    for e in supported.as_slice() {
        let mut e = *e;
        match e.function {
            1 => {
                // APIC id and logical processor count; hypervisor-present bit.
                e.ebx = (e.ebx & 0x0000_ffff) | ((id as u32) << 24) | ((vcpu_count as u32) << 16);
                e.ecx |= 1 << 31;
                e.edx |= 1 << 28; // HTT: the logical count above is meaningful
            }
            0xb | 0x1f => {
                e.edx = id as u32;
            }
            // Replaced below.
            0x4000_0000 | 0x4000_0010 => continue,
            _ => {}
        }
        out.push(e).map_err(|_| CpuidError::Full)?;
    }
    out.push(entry(
        0x4000_0000,
        HV_MAX_LEAF,
        KVM_SIGNATURE[0],
        KVM_SIGNATURE[1],
        KVM_SIGNATURE[2],
    ))
    .map_err(|_| CpuidError::Full)?;
    out.push(entry(HV_MAX_LEAF, tsc_khz, APIC_BUS_KHZ, 0, 0))
        .map_err(|_| CpuidError::Full)?;
    Ok(out)
}

/// Finds a leaf (subleaf 0 where the leaf is indexed).
pub fn find(cpuid: &CpuId, function: u32) -> Option<kvm_cpuid_entry2> {
    cpuid.as_slice().iter().copied().find(|e| {
        e.function == function && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supported() -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0xd, 0, 0, 0),
            entry(1, 0x806f8, 0x0010_0800, 0x7ffa_3203, 0x178b_fbff),
            entry(0x4000_0000, 0x4000_0001, 0, 0, 0),
            entry(0x4000_0001, 0x0100_07fb, 0, 0, 0),
        ])
        .unwrap()
    }

    #[test]
    fn hypervisor_leaves_announce_tsc_frequency() {
        let c = patch(&supported(), 0, 1, 2_345_678).unwrap();
        let hv = find(&c, 0x4000_0000).unwrap();
        assert!(hv.eax >= 0x4000_0010);
        assert_eq!(hv.ebx, KVM_SIGNATURE[0]);
        let tsc = find(&c, 0x4000_0010).unwrap();
        assert_eq!(tsc.eax, 2_345_678);
        // KVM's own feature leaf survives.
        assert!(find(&c, 0x4000_0001).is_some());
        assert_eq!(
            c.as_slice()
                .iter()
                .filter(|e| e.function == 0x4000_0000)
                .count(),
            1
        );
    }

    #[test]
    fn leaf_one_carries_apic_id_and_hypervisor_bit() {
        let c = patch(&supported(), 3, 4, 1).unwrap();
        let l1 = find(&c, 1).unwrap();
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & (1 << 31), 0);
        // RDRAND (ECX bit 30) passes through untouched.
        assert_ne!(l1.ecx & (1 << 30), 0);
    }
}
