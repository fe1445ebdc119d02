//! Puts an arm64 `Image`, its initrd and the FDT into guest memory.
//!
//! Placement (see [`super::layout`]): the kernel at `text_offset` above the first 2 MiB
//! aligned address of RAM (0x4000_0000), the FDT in the last 2 MiB of RAM, the initrd as high
//! as fits below the FDT on a host-page boundary.

use images::{Arm64Image, Arm64ImageError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::fdt::{create_fdt, FdtError, FdtParams, VirtioMmioNode};
use super::gic::GicVersion;
use super::layout::{fdt_addr, initrd_addr, LayoutError, RAM_BASE};

/// Errors while loading an aarch64 guest.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel does not fit.
    #[error(transparent)]
    Kernel(#[from] Arm64ImageError),
    /// The kernel runs into the FDT.
    #[error(
        "the kernel ends at {kernel_end:#x}, past the device tree at {fdt_addr:#x}: give the VM \
         more memory"
    )]
    KernelOverlapsFdt {
        /// End of the kernel.
        kernel_end: u64,
        /// Start of the FDT.
        fdt_addr: u64,
    },
    /// The initrd does not fit.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The FDT could not be built.
    #[error(transparent)]
    Fdt(#[from] FdtError),
    /// Writing guest memory failed.
    #[error("could not write the {what} into guest memory: {source}")]
    GuestMemory {
        /// What was being written.
        what: &'static str,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// What the loader needs besides the guest memory.
#[derive(Debug)]
pub struct Payload<'a> {
    /// The kernel.
    pub image: &'a Arm64Image,
    /// Bytes of RAM.
    pub mem_bytes: u64,
    /// Host page size (initrd alignment).
    pub page_size: u64,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Initrd contents.
    pub initrd: Option<&'a [u8]>,
    /// MPIDR of each vCPU.
    pub mpidrs: &'a [u64],
    /// The VM's GIC.
    pub gic: GicVersion,
    /// virtio-mmio devices.
    pub virtio: &'a [VirtioMmioNode],
}

/// Where things went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// PC of the boot vCPU (the kernel's first byte).
    pub entry: u64,
    /// X0: the FDT's address.
    pub fdt_addr: u64,
    /// End of the kernel (image_size from its load address).
    pub kernel_end: u64,
    /// Initrd start and length.
    pub initrd: Option<(u64, u64)>,
}

fn write(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), LoadError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| LoadError::GuestMemory { what, source })
}

/// Loads the kernel and initrd, builds the FDT and writes it.
pub fn load(mem: &GuestMemoryMmap, p: &Payload<'_>) -> Result<BootEntry, LoadError> {
    let header = p.image.header();
    let entry = header.load_addr(RAM_BASE, p.mem_bytes)?;
    let kernel_end = entry + header.image_size;
    let fdt_at = fdt_addr(p.mem_bytes);
    if kernel_end > fdt_at {
        return Err(LoadError::KernelOverlapsFdt {
            kernel_end,
            fdt_addr: fdt_at,
        });
    }
    write(mem, "kernel", entry, p.image.bytes())?;
    // The rest of image_size (bss) is fresh anonymous memory: already zero.

    let initrd = match p.initrd {
        Some(bytes) => {
            let len = bytes.len() as u64;
            let at = initrd_addr(p.mem_bytes, kernel_end, len, p.page_size)?;
            write(mem, "initrd", at, bytes)?;
            Some((at, len))
        }
        None => None,
    };
    let blob = create_fdt(&FdtParams {
        mpidrs: p.mpidrs,
        mem_bytes: p.mem_bytes,
        cmdline: p.cmdline,
        initrd,
        gic: p.gic,
        virtio: p.virtio,
    })?;
    write(mem, "device tree", fdt_at, &blob)?;
    Ok(BootEntry {
        entry,
        fdt_addr: fdt_at,
        kernel_end,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fdt_reader::Fdt;
    use super::*;

    fn image(text_offset: u64, image_size: u64) -> Arm64Image {
        let mut b = vec![0u8; 0x1000];
        b[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
        b[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        b[0x18..0x20].copy_from_slice(&0xau64.to_le_bytes());
        b[0x38..0x3c].copy_from_slice(b"ARM\x64");
        b[0x40..0x44].copy_from_slice(b"KERN");
        Arm64Image::from_bytes(b).expect("valid")
    }

    fn memory(mem_bytes: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), mem_bytes as usize)])
            .expect("guest memory")
    }

    #[test]
    fn kernel_initrd_and_fdt_land_where_the_fdt_says() {
        let mem_bytes = 64 << 20;
        let mem = memory(mem_bytes);
        let img = image(0x8_0000, 0x100_0000);
        let initrd = vec![0x5a; 0x3001];
        let at = load(
            &mem,
            &Payload {
                image: &img,
                mem_bytes,
                page_size: 16384,
                cmdline: "console=ttyAMA0",
                initrd: Some(&initrd),
                mpidrs: &[0, 1],
                gic: GicVersion::V2,
                virtio: &[],
            },
        )
        .expect("loads");
        assert_eq!(at.entry, RAM_BASE + 0x8_0000);
        assert_eq!(at.kernel_end, RAM_BASE + 0x108_0000);
        assert_eq!(at.fdt_addr, RAM_BASE + mem_bytes - (2 << 20));

        let mut magic = [0u8; 4];
        mem.read_slice(&mut magic, GuestAddress(at.entry + 0x40))
            .expect("read");
        assert_eq!(&magic, b"KERN");

        let (start, len) = at.initrd.expect("initrd placed");
        assert_eq!(len, 0x3001);
        assert_eq!(start % 16384, 0);
        assert!(start + len <= at.fdt_addr && start >= at.kernel_end);
        let mut back = vec![0u8; initrd.len()];
        mem.read_slice(&mut back, GuestAddress(start))
            .expect("read");
        assert_eq!(back, initrd);

        let mut blob = vec![0u8; 0x2000];
        mem.read_slice(&mut blob, GuestAddress(at.fdt_addr))
            .expect("read");
        let total = u32::from_be_bytes([blob[4], blob[5], blob[6], blob[7]]) as usize;
        let fdt = Fdt::parse(&blob[..total]).expect("FDT in guest memory parses");
        let chosen = fdt.node("/chosen").expect("chosen");
        assert_eq!(chosen.u64s("linux,initrd-start"), vec![start]);
        assert_eq!(chosen.u64s("linux,initrd-end"), vec![start + len]);
        assert_eq!(chosen.string("bootargs"), Some("console=ttyAMA0"));
        assert_eq!(
            fdt.node("/memory@40000000").expect("memory").u64s("reg"),
            vec![RAM_BASE, mem_bytes]
        );
    }

    #[test]
    fn a_kernel_that_reaches_the_fdt_is_refused() {
        let mem_bytes = 32 << 20;
        let mem = memory(mem_bytes);
        let img = image(0, 31 << 20);
        let err = load(
            &mem,
            &Payload {
                image: &img,
                mem_bytes,
                page_size: 4096,
                cmdline: "",
                initrd: None,
                mpidrs: &[0],
                gic: GicVersion::V3,
                virtio: &[],
            },
        )
        .unwrap_err();
        assert!(matches!(err, LoadError::KernelOverlapsFdt { .. }), "{err}");
    }
}
