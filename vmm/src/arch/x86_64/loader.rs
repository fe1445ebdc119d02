//! Puts a kernel, its command line and initrd into guest memory and writes the structures
//! its boot protocol expects.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot_info::{self, BootInputs};
use super::layout::*;
use images::{BootProtocol, KernelImage, LoadPlan};

/// Errors while loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The image has no usable plan for the protocol.
    #[error(transparent)]
    Image(#[from] images::ImageError),
    /// A kernel segment lies outside guest RAM.
    #[error("the kernel needs guest memory up to {end:#x} but the guest has {mem_mib} MiB of RAM below 3 GiB: give it more with --mem")]
    KernelDoesNotFit {
        /// End of the highest segment.
        end: u64,
        /// Guest RAM in MiB.
        mem_mib: u64,
    },
    /// The command line is too long for the protocol or our layout.
    #[error("the kernel command line is {len} bytes long but this kernel accepts at most {max}: shorten --cmdline")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The command line has a NUL byte.
    #[error("the kernel command line contains a NUL byte: remove it")]
    CmdlineNul,
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error("the initrd ({size} bytes) does not fit in guest memory above the kernel (free: {free} bytes below {limit:#x}): give the guest more memory with --mem")]
    InitrdDoesNotFit {
        /// Initrd size.
        size: u64,
        /// Room available.
        free: u64,
        /// Highest address the initrd may end at.
        limit: u64,
    },
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

/// Where the kernel starts and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// The protocol in use.
    pub protocol: BootProtocol,
    /// Guest-physical entry point.
    pub entry: u64,
    /// Initrd placement, if any.
    pub initrd: Option<(u64, u64)>,
}

/// What to load.
pub struct GuestPayload<'a> {
    /// The kernel.
    pub image: &'a KernelImage,
    /// Protocol to boot it with.
    pub protocol: BootProtocol,
    /// Command line as given by the user (multiboot gets the image name prepended).
    pub cmdline: &'a str,
    /// Initrd contents.
    pub initrd: Option<&'a [u8]>,
    /// Name the guest sees as argv[0] under multiboot.
    pub image_name: &'a str,
}

const PAGE_SIZE: u64 = 4096;
/// Linux's historical initrd ceiling for 64-bit kernels without a setup header.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

fn mem_err(what: &'static str) -> impl Fn(vm_memory::GuestMemoryError) -> LoadError {
    move |source| LoadError::GuestMemory { what, source }
}

/// Loads `payload` into `mem` (of `mem_bytes` RAM) and writes its protocol's boot structures.
pub fn load(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    payload: &GuestPayload<'_>,
) -> Result<BootEntry, LoadError> {
    let plan = payload.image.plan(payload.protocol)?;
    load_segments(mem, mem_bytes, payload.image, &plan)?;

    let cmdline = match payload.protocol {
        BootProtocol::Multiboot if payload.cmdline.is_empty() => payload.image_name.to_string(),
        BootProtocol::Multiboot => format!("{} {}", payload.image_name, payload.cmdline),
        _ => payload.cmdline.to_string(),
    };
    write_cmdline(mem, &cmdline, cmdline_limit(&plan))?;

    let initrd = match payload.initrd {
        Some(bytes) => Some(place_initrd(mem, mem_bytes, &plan, bytes)?),
        None => None,
    };
    let inputs = BootInputs {
        mem_bytes,
        cmdline_len: cmdline.len(),
        initrd,
    };
    let blocks = match payload.protocol {
        BootProtocol::Linux64 => vec![(
            ZERO_PAGE_START,
            boot_info::zero_page(&inputs, plan.setup_header.as_deref()),
        )],
        BootProtocol::Pvh => boot_info::pvh_start_info(&inputs),
        BootProtocol::Multiboot => boot_info::multiboot_info(&inputs),
    };
    for (addr, block) in blocks {
        mem.write_slice(&block.0, GuestAddress(addr))
            .map_err(mem_err("boot information"))?;
    }
    Ok(BootEntry {
        protocol: payload.protocol,
        entry: plan.entry,
        initrd,
    })
}

fn load_segments(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    image: &KernelImage,
    plan: &LoadPlan,
) -> Result<(), LoadError> {
    let low_end = low_ram_end(mem_bytes);
    if plan.kernel_end > low_end {
        return Err(LoadError::KernelDoesNotFit {
            end: plan.kernel_end,
            mem_mib: low_end >> 20,
        });
    }
    for seg in &plan.segments {
        let data = image.segment_data(seg);
        mem.write_slice(data, GuestAddress(seg.guest_addr))
            .map_err(mem_err("kernel"))?;
        // The bss (mem_size beyond file_size) needs no clearing: guest memory is freshly
        // mapped, and nothing else is placed inside a segment (boot structures live below
        // 1 MiB, the initrd above kernel_end), so it reads as zero. Writing zeroes would
        // only populate pages and raise the VMM's RSS.
    }
    Ok(())
}

fn cmdline_limit(plan: &LoadPlan) -> usize {
    let ours = CMDLINE_MAX_SIZE - 1;
    match &plan.setup {
        Some(setup) if setup.version >= 0x0206 && setup.cmdline_size > 0 => {
            ours.min(setup.cmdline_size as usize)
        }
        // Kernels before 2.06 took 255 bytes.
        Some(_) => ours.min(255),
        None => ours,
    }
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, max: usize) -> Result<(), LoadError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(LoadError::CmdlineNul);
    }
    if cmdline.len() > max {
        return Err(LoadError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(mem_err("command line"))
}

/// Places the initrd page-aligned as high as the protocol allows, above the kernel.
fn place_initrd(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    plan: &LoadPlan,
    initrd: &[u8],
) -> Result<(u64, u64), LoadError> {
    let size = initrd.len() as u64;
    let addr_max = match &plan.setup {
        Some(s) if s.initrd_addr_max != 0 => s.initrd_addr_max as u64,
        _ => DEFAULT_INITRD_ADDR_MAX,
    };
    // The multiboot and PVH module fields are 32- and 64-bit; stay below 4 GiB for all.
    let limit = low_ram_end(mem_bytes).min(addr_max.saturating_add(1));
    let floor = plan
        .kernel_end
        .max(HIGH_MEMORY_START)
        .next_multiple_of(PAGE_SIZE);
    let free = limit.saturating_sub(floor);
    if size > free {
        return Err(LoadError::InitrdDoesNotFit { size, free, limit });
    }
    let addr = (limit - size) & !(PAGE_SIZE - 1);
    mem.write_slice(initrd, GuestAddress(addr))
        .map_err(mem_err("initrd"))?;
    Ok((addr, size))
}
