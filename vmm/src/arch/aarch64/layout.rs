//! The guest-physical memory map of an aarch64 guest (the same shape as QEMU's `virt`
//! machine, so kernels built for it find nothing surprising):
//!
//! | address | what |
//! |---|---|
//! | 0x0800_0000 | GIC distributor (64 KiB) |
//! | 0x0801_0000 | GICv2 CPU interface (8 KiB) |
//! | 0x080a_0000 | GICv3 redistributors (128 KiB per vCPU, up to 123 vCPUs) |
//! | 0x0900_0000 | PL011 UART (4 KiB), SPI 1 (INTID 33) |
//! | 0x0a00_0000 | virtio-mmio windows (4 KiB each), SPI 16 + n |
//! | 0x4000_0000 | RAM (one range, as large as the VM's memory) |
//!
//! Inside RAM: the kernel at `text_offset` above 0x4000_0000 (a 2 MiB aligned base), the
//! FDT in the last 2 MiB of RAM, the initrd just below the FDT.

use thiserror::Error;

/// Base of the GIC distributor.
pub const GIC_DIST_BASE: u64 = 0x0800_0000;
/// Size of the GIC distributor (GICv2 uses the first 4 KiB of it).
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// Base of the GICv2 CPU interface.
pub const GIC_CPU_BASE: u64 = 0x0801_0000;
/// Size of the GICv2 CPU interface.
pub const GIC_CPU_SIZE: u64 = 0x2000;
/// Base of the GICv3 redistributor region.
pub const GIC_REDIST_BASE: u64 = 0x080a_0000;
/// Redistributor frames per vCPU (RD_base + SGI_base, 64 KiB each).
pub const GIC_REDIST_SIZE_PER_CPU: u64 = 0x2_0000;
/// End of the redistributor region (the UART starts here).
pub const GIC_REDIST_END: u64 = 0x0900_0000;
/// Most vCPUs whose redistributors fit below the UART.
pub const MAX_VCPUS: u32 = ((GIC_REDIST_END - GIC_REDIST_BASE) / GIC_REDIST_SIZE_PER_CPU) as u32;

/// Base of the PL011 UART.
pub const PL011_BASE: u64 = 0x0900_0000;
/// Size of the PL011 window.
pub const PL011_SIZE: u64 = 0x1000;
/// The UART's SPI number (the FDT's interrupt cell; INTID = 32 + SPI).
pub const PL011_SPI: u32 = 1;

/// Base of the first virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
/// Size of one virtio-mmio window (the transport's, `devices::virtio::mmio::MMIO_WINDOW_SIZE`).
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// SPI of the first virtio-mmio device; device n uses `VIRTIO_SPI_BASE + n`.
pub const VIRTIO_SPI_BASE: u32 = 16;
/// Most virtio-mmio devices.
pub const VIRTIO_MMIO_MAX: u32 = 32;

/// Start of RAM.
pub const RAM_BASE: u64 = 0x4000_0000;
/// The FDT lives in this many bytes at the top of RAM (Linux maps at most 2 MiB of it).
pub const FDT_MAX_SIZE: u64 = 2 << 20;
/// Most RAM: up to the end of the 40-bit IPA space every arm64 KVM host offers.
pub const RAM_MAX: u64 = (1 << 40) - RAM_BASE;
/// First SPI INTID (SGIs are 0-15, PPIs 16-31).
pub const SPI_INTID_BASE: u32 = 32;
/// Interrupt lines the GIC is given (a multiple of 32, SGIs and PPIs included).
pub const GIC_NR_IRQS: u32 = 128;

// The UART and virtio SPIs stay inside the GIC's lines and apart.
const _: () = assert!(SPI_INTID_BASE + VIRTIO_SPI_BASE + VIRTIO_MMIO_MAX <= GIC_NR_IRQS);
const _: () = assert!(PL011_SPI < VIRTIO_SPI_BASE);
const _: () = assert!(GIC_NR_IRQS.is_multiple_of(32));

/// Why the memory layout cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// Memory size not a multiple of the host page size.
    #[error(
        "guest memory of {mem_bytes:#x} bytes is not a multiple of this host's page size \
         ({page_size} bytes; 16 KiB on Raspberry Pi 5 kernels): give a multiple of it"
    )]
    NotPageMultiple {
        /// Requested size.
        mem_bytes: u64,
        /// Host page size.
        page_size: u64,
    },
    /// Too little or too much memory.
    #[error(
        "guest memory of {mem_bytes:#x} bytes is out of range: aarch64 guests need at least \
         {min:#x} bytes (kernel, FDT) and at most {max:#x}"
    )]
    BadSize {
        /// Requested size.
        mem_bytes: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// Too many vCPUs for the redistributor region.
    #[error("{vcpus} vCPUs asked for, but aarch64 guests can have 1 to {max}: give fewer")]
    TooManyVcpus {
        /// Requested count.
        vcpus: u32,
        /// Largest allowed.
        max: u32,
    },
    /// Too many virtio-mmio devices.
    #[error("virtio-mmio device {index} does not fit: aarch64 guests have {max} slots")]
    NoVirtioSlot {
        /// The index asked for.
        index: usize,
        /// How many there are.
        max: u32,
    },
    /// The initrd does not fit below the FDT.
    #[error(
        "the initrd of {len:#x} bytes does not fit between the kernel (ending at \
         {kernel_end:#x}) and the FDT at {fdt_addr:#x}: give the VM more memory"
    )]
    InitrdTooLarge {
        /// Initrd length.
        len: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// Start of the FDT.
        fdt_addr: u64,
    },
}

/// This host's page size (4 KiB, 16 KiB on Raspberry Pi 5 kernels, or 64 KiB).
pub fn host_page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value; no memory is passed.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

/// The RAM ranges (guest address, length) of a VM with `mem_bytes` of memory, checked
/// against the host page size: KVM memory slots must start and end on host pages.
pub fn ram_ranges(mem_bytes: u64, page_size: u64) -> Result<Vec<(u64, u64)>, LayoutError> {
    let min = FDT_MAX_SIZE * 2;
    if !(min..=RAM_MAX).contains(&mem_bytes) {
        return Err(LayoutError::BadSize {
            mem_bytes,
            min,
            max: RAM_MAX,
        });
    }
    if page_size == 0 || !mem_bytes.is_multiple_of(page_size) || !RAM_BASE.is_multiple_of(page_size)
    {
        return Err(LayoutError::NotPageMultiple {
            mem_bytes,
            page_size,
        });
    }
    Ok(vec![(RAM_BASE, mem_bytes)])
}

/// Where the FDT goes: the start of the last 2 MiB of RAM (2 MiB aligned, so it never
/// crosses a 2 MiB boundary, as Linux requires).
pub fn fdt_addr(mem_bytes: u64) -> u64 {
    (RAM_BASE + mem_bytes - FDT_MAX_SIZE) & !(FDT_MAX_SIZE - 1)
}

/// Where an initrd of `len` bytes goes: as high as possible below the FDT, host-page
/// aligned, and above `kernel_end`.
pub fn initrd_addr(
    mem_bytes: u64,
    kernel_end: u64,
    len: u64,
    page_size: u64,
) -> Result<u64, LayoutError> {
    let fdt = fdt_addr(mem_bytes);
    let too_large = LayoutError::InitrdTooLarge {
        len,
        kernel_end,
        fdt_addr: fdt,
    };
    let start = fdt.checked_sub(len).ok_or(too_large.clone())? & !(page_size.max(1) - 1);
    if start < kernel_end {
        return Err(too_large);
    }
    Ok(start)
}

/// The GICv3 redistributor region's size for `vcpus`.
pub fn gic_redist_size(vcpus: u32) -> u64 {
    u64::from(vcpus) * GIC_REDIST_SIZE_PER_CPU
}

/// Checks a vCPU count against [`MAX_VCPUS`].
pub fn check_vcpus(vcpus: u32) -> Result<(), LayoutError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(LayoutError::TooManyVcpus {
            vcpus,
            max: MAX_VCPUS,
        });
    }
    Ok(())
}

/// The MMIO window and SPI of virtio-mmio device `index`.
pub fn virtio_slot(index: usize) -> Result<(u64, u64, u32), LayoutError> {
    let i = u32::try_from(index)
        .ok()
        .filter(|i| *i < VIRTIO_MMIO_MAX)
        .ok_or(LayoutError::NoVirtioSlot {
            index,
            max: VIRTIO_MMIO_MAX,
        })?;
    Ok((
        VIRTIO_MMIO_BASE + u64::from(i) * VIRTIO_MMIO_SIZE,
        VIRTIO_MMIO_SIZE,
        VIRTIO_SPI_BASE + i,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 < b.0 + b.1 && b.0 < a.0 + a.1
    }

    #[test]
    fn mmio_regions_are_below_ram_and_do_not_overlap() {
        let regions = [
            (GIC_DIST_BASE, GIC_DIST_SIZE),
            (GIC_CPU_BASE, GIC_CPU_SIZE),
            (GIC_REDIST_BASE, gic_redist_size(MAX_VCPUS)),
            (PL011_BASE, PL011_SIZE),
            (
                VIRTIO_MMIO_BASE,
                u64::from(VIRTIO_MMIO_MAX) * VIRTIO_MMIO_SIZE,
            ),
        ];
        for (i, a) in regions.iter().enumerate() {
            assert!(a.0 + a.1 <= RAM_BASE, "region {i} reaches RAM");
            for b in &regions[i + 1..] {
                assert!(!overlaps(*a, *b), "{a:x?} overlaps {b:x?}");
            }
        }
        assert!(GIC_REDIST_BASE + gic_redist_size(MAX_VCPUS) <= GIC_REDIST_END);
        assert!(GIC_REDIST_BASE + gic_redist_size(MAX_VCPUS + 1) > GIC_REDIST_END);
    }

    #[test]
    fn ram_starts_at_1gib_and_respects_the_host_page_size() {
        assert_eq!(ram_ranges(256 << 20, 4096), Ok(vec![(RAM_BASE, 256 << 20)]));
        assert_eq!(
            ram_ranges(256 << 20, 16384),
            Ok(vec![(RAM_BASE, 256 << 20)])
        );
        let odd = (256 << 20) + 4096;
        assert_eq!(ram_ranges(odd, 4096), Ok(vec![(RAM_BASE, odd)]));
        assert_eq!(
            ram_ranges(odd, 16384),
            Err(LayoutError::NotPageMultiple {
                mem_bytes: odd,
                page_size: 16384
            })
        );
        assert!(ram_ranges(odd, 65536).is_err());
        assert!(matches!(
            ram_ranges(1 << 20, 4096),
            Err(LayoutError::BadSize { .. })
        ));
        assert!(matches!(
            ram_ranges(RAM_MAX + (1 << 30), 4096),
            Err(LayoutError::BadSize { .. })
        ));
    }

    #[test]
    fn host_page_size_is_a_power_of_two() {
        let p = host_page_size();
        assert!(p >= 4096 && p.is_power_of_two(), "{p}");
    }

    #[test]
    fn fdt_is_in_the_last_2mib_and_the_initrd_below_it() {
        let mem = 512 << 20;
        let fdt = fdt_addr(mem);
        assert_eq!(fdt, RAM_BASE + mem - FDT_MAX_SIZE);
        assert_eq!(fdt % FDT_MAX_SIZE, 0);
        let initrd = initrd_addr(mem, RAM_BASE + (32 << 20), 0x12345, 16384).expect("fits");
        assert_eq!(initrd % 16384, 0);
        assert!(initrd + 0x12345 <= fdt);
        assert!(fdt - (initrd + 0x12345) < 16384, "as high as possible");
        let err = initrd_addr(mem, RAM_BASE + (32 << 20), mem, 4096).unwrap_err();
        assert!(matches!(err, LayoutError::InitrdTooLarge { .. }));
        let err = initrd_addr(mem, fdt - 0x1000, 0x2000, 4096).unwrap_err();
        assert!(matches!(err, LayoutError::InitrdTooLarge { .. }));
    }

    #[test]
    fn virtio_window_is_the_transports() {
        assert_eq!(VIRTIO_MMIO_SIZE, devices::virtio::mmio::MMIO_WINDOW_SIZE);
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn virtio_slots_match_the_ones_devices_are_attached_at() {
        for i in 0..crate::virtio::MAX_DEVICES {
            let (base, _, spi) = virtio_slot(i).expect("slot");
            assert_eq!(crate::virtio::slot(i), Some((base, spi)), "device {i}");
        }
    }

    #[test]
    fn virtio_slots_are_consecutive_windows_with_their_own_spi() {
        assert_eq!(virtio_slot(0), Ok((VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE, 16)));
        assert_eq!(
            virtio_slot(3),
            Ok((
                VIRTIO_MMIO_BASE + 3 * VIRTIO_MMIO_SIZE,
                VIRTIO_MMIO_SIZE,
                19
            ))
        );
        assert!(virtio_slot(VIRTIO_MMIO_MAX as usize).is_err());
        assert!(check_vcpus(0).is_err());
        assert!(check_vcpus(4).is_ok());
        assert!(check_vcpus(MAX_VCPUS + 1).is_err());
    }
}
