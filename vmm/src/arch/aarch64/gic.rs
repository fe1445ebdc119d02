//! The in-kernel interrupt controller: a GICv3 when the host has one, else a GICv2 (the
//! Raspberry Pi 4's GIC-400, which has no ITS and no GICv3 support).
//!
//! The pure part (which regions, what the FDT says) builds on every architecture so its
//! unit tests run anywhere; creating the KVM device is aarch64 only.

use super::layout::{
    gic_redist_size, GIC_CPU_BASE, GIC_CPU_SIZE, GIC_DIST_BASE, GIC_DIST_SIZE, GIC_REDIST_BASE,
};

/// Which GIC the guest gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicVersion {
    /// GICv2: distributor and memory-mapped CPU interface; at most 8 vCPUs.
    V2,
    /// GICv3: distributor and one redistributor per vCPU; system-register CPU interface.
    V3,
}

/// Most vCPUs a GICv2 can address (its target lists are 8 bits).
pub const GICV2_MAX_VCPUS: u32 = 8;

/// FDT interrupt cell 0: the interrupt is an SPI.
pub const GIC_FDT_IRQ_TYPE_SPI: u32 = 0;
/// FDT interrupt cell 0: the interrupt is a PPI.
pub const GIC_FDT_IRQ_TYPE_PPI: u32 = 1;
/// FDT interrupt flags: rising edge.
pub const IRQ_TYPE_EDGE_RISING: u32 = 1;
/// FDT interrupt flags: level, active high.
pub const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
/// FDT interrupt flags: level, active low.
pub const IRQ_TYPE_LEVEL_LOW: u32 = 8;

impl GicVersion {
    /// The `compatible` string of the FDT's interrupt controller node.
    pub fn compatible(self) -> &'static str {
        match self {
            GicVersion::V2 => "arm,gic-400",
            GicVersion::V3 => "arm,gic-v3",
        }
    }

    /// The `reg` of the interrupt controller node as (base, size) pairs: distributor, then
    /// the CPU interface (v2) or the redistributor region (v3).
    pub fn regions(self, vcpus: u32) -> [(u64, u64); 2] {
        match self {
            GicVersion::V2 => [(GIC_DIST_BASE, 0x1000), (GIC_CPU_BASE, GIC_CPU_SIZE)],
            GicVersion::V3 => [
                (GIC_DIST_BASE, GIC_DIST_SIZE),
                (GIC_REDIST_BASE, gic_redist_size(vcpus)),
            ],
        }
    }

    /// The flags cell of a PPI: level-high, plus on GICv2 the mask of CPUs it goes to.
    pub fn ppi_flags(self, vcpus: u32) -> u32 {
        match self {
            GicVersion::V2 => {
                let cpus = vcpus.min(GICV2_MAX_VCPUS);
                (((1u32 << cpus) - 1) << 8) | IRQ_TYPE_LEVEL_HIGH
            }
            GicVersion::V3 => IRQ_TYPE_LEVEL_HIGH,
        }
    }
}

impl std::fmt::Display for GicVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GicVersion::V2 => "GICv2",
            GicVersion::V3 => "GICv3",
        })
    }
}

#[cfg(target_arch = "aarch64")]
pub use kvm::{create_gic, finalize_gic, Gic, GicError};

#[cfg(target_arch = "aarch64")]
mod kvm {
    use kvm_bindings::{
        kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V2,
        kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, KVM_DEV_ARM_VGIC_CTRL_INIT,
        KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
        KVM_VGIC_V2_ADDR_TYPE_CPU, KVM_VGIC_V2_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_DIST,
        KVM_VGIC_V3_ADDR_TYPE_REDIST,
    };
    use kvm_ioctls::{DeviceFd, VmFd};

    use super::GicVersion;
    use crate::arch::aarch64::layout::{GIC_CPU_BASE, GIC_DIST_BASE, GIC_NR_IRQS, GIC_REDIST_BASE};

    /// Why the interrupt controller could not be set up.
    #[derive(Debug, thiserror::Error)]
    pub enum GicError {
        /// Neither a GICv3 nor a GICv2 could be created.
        #[error(
            "KVM could create neither a GICv3 ({v3}) nor a GICv2 ({v2}): this host's KVM has \
             no in-kernel GIC emulation; check that the host kernel runs at EL2 with KVM"
        )]
        Create {
            /// The GICv3 error.
            v3: kvm_ioctls::Error,
            /// The GICv2 error.
            v2: kvm_ioctls::Error,
        },
        /// Asked for a GICv2 with more than 8 vCPUs.
        #[error("a GICv2 serves at most 8 vCPUs but {vcpus} were asked for: give fewer vCPUs")]
        TooManyVcpus {
            /// Requested count.
            vcpus: u32,
        },
        /// An attribute could not be set.
        #[error(
            "setting the {what} of the {version} failed ({source}): this host's KVM refused it"
        )]
        Attr {
            /// Which attribute.
            what: &'static str,
            /// Which GIC.
            version: GicVersion,
            /// The ioctl error.
            #[source]
            source: kvm_ioctls::Error,
        },
    }

    /// The KVM GIC device.
    #[derive(Debug)]
    pub struct Gic {
        /// The device file descriptor.
        pub fd: DeviceFd,
        /// Which GIC it is.
        pub version: GicVersion,
    }

    fn attr(group: u32, attr: u64, addr: u64, flags: u32) -> kvm_device_attr {
        kvm_device_attr {
            group,
            attr,
            addr,
            flags,
        }
    }

    fn create(vm: &VmFd, version: GicVersion) -> Result<DeviceFd, kvm_ioctls::Error> {
        let type_ = match version {
            GicVersion::V2 => kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V2,
            GicVersion::V3 => kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        };
        let mut dev = kvm_create_device {
            type_,
            fd: 0,
            flags: 0,
        };
        vm.create_device(&mut dev)
    }

    fn set_addr(gic: &Gic, kind: u32, addr: u64, what: &'static str) -> Result<(), GicError> {
        let value = addr;
        let a = attr(
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            u64::from(kind),
            std::ptr::addr_of!(value) as u64,
            0,
        );
        gic.fd.set_device_attr(&a).map_err(|source| GicError::Attr {
            what,
            version: gic.version,
            source,
        })
    }

    /// Creates the GIC (v3, else v2, or only `only` if given) and sets its addresses and
    /// line count. Call after creating the vCPUs and before [`finalize_gic`].
    pub fn create_gic(vm: &VmFd, vcpus: u32, only: Option<GicVersion>) -> Result<Gic, GicError> {
        let gic = match only {
            Some(version) => {
                let fd = create(vm, version).map_err(|e| GicError::Attr {
                    what: "device itself",
                    version,
                    source: e,
                })?;
                Gic { fd, version }
            }
            None => match create(vm, GicVersion::V3) {
                Ok(fd) => Gic {
                    fd,
                    version: GicVersion::V3,
                },
                Err(v3) => match create(vm, GicVersion::V2) {
                    Ok(fd) => Gic {
                        fd,
                        version: GicVersion::V2,
                    },
                    Err(v2) => return Err(GicError::Create { v3, v2 }),
                },
            },
        };
        match gic.version {
            GicVersion::V2 => {
                if vcpus > super::GICV2_MAX_VCPUS {
                    return Err(GicError::TooManyVcpus { vcpus });
                }
                set_addr(
                    &gic,
                    KVM_VGIC_V2_ADDR_TYPE_DIST,
                    GIC_DIST_BASE,
                    "distributor address",
                )?;
                set_addr(
                    &gic,
                    KVM_VGIC_V2_ADDR_TYPE_CPU,
                    GIC_CPU_BASE,
                    "CPU interface address",
                )?;
            }
            GicVersion::V3 => {
                set_addr(
                    &gic,
                    KVM_VGIC_V3_ADDR_TYPE_DIST,
                    GIC_DIST_BASE,
                    "distributor address",
                )?;
                set_addr(
                    &gic,
                    KVM_VGIC_V3_ADDR_TYPE_REDIST,
                    GIC_REDIST_BASE,
                    "redistributor address",
                )?;
            }
        }
        let nr_irqs = GIC_NR_IRQS;
        let a = attr(
            KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            0,
            std::ptr::addr_of!(nr_irqs) as u64,
            0,
        );
        gic.fd
            .set_device_attr(&a)
            .map_err(|source| GicError::Attr {
                what: "number of interrupt lines",
                version: gic.version,
                source,
            })?;
        Ok(gic)
    }

    /// Initializes the GIC once every vCPU exists.
    pub fn finalize_gic(gic: &Gic) -> Result<(), GicError> {
        let a = attr(
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
            0,
            0,
        );
        gic.fd.set_device_attr(&a).map_err(|source| GicError::Attr {
            what: "initialization",
            version: gic.version,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_regions_are_the_gic400_distributor_and_cpu_interface() {
        assert_eq!(
            GicVersion::V2.regions(4),
            [(GIC_DIST_BASE, 0x1000), (GIC_CPU_BASE, GIC_CPU_SIZE)]
        );
        assert_eq!(GicVersion::V2.compatible(), "arm,gic-400");
    }

    #[test]
    fn v3_redistributors_grow_with_the_vcpus() {
        let [dist, redist] = GicVersion::V3.regions(3);
        assert_eq!(dist, (GIC_DIST_BASE, GIC_DIST_SIZE));
        assert_eq!(redist, (GIC_REDIST_BASE, 3 * 0x2_0000));
        assert_eq!(GicVersion::V3.regions(1)[1].1, 0x2_0000);
        assert_eq!(GicVersion::V3.compatible(), "arm,gic-v3");
    }

    #[test]
    fn ppi_flags_carry_the_cpu_mask_on_v2_only() {
        assert_eq!(GicVersion::V2.ppi_flags(1), 0x104);
        assert_eq!(GicVersion::V2.ppi_flags(4), 0xf04);
        assert_eq!(GicVersion::V2.ppi_flags(8), 0xff04);
        assert_eq!(GicVersion::V2.ppi_flags(64), 0xff04, "capped at 8 CPUs");
        assert_eq!(GicVersion::V3.ppi_flags(4), IRQ_TYPE_LEVEL_HIGH);
    }
}
