//! Guest memory as docs/GUEST_INTERFACE.md lays it out, built by the test itself:
//! image loading (ELF32/ELF64 with PVH note, bzImage), GDT, page tables, command line,
//! initrd, and the boot data of each protocol (zero page, hvm_start_info, multiboot info).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MEMMAP_ADDR: u64 = 0x6040;
pub const PVH_MODLIST_ADDR: u64 = 0x6400;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const MB_INFO_ADDR: u64 = 0x8000;
pub const MB_MMAP_ADDR: u64 = 0x8100;
pub const MB_MODS_ADDR: u64 = 0x8400;
pub const MB_LOADER_NAME_ADDR: u64 = 0x8800;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const EBDA_START: u64 = 0x9fc00;
pub const HIGH_MEMORY: u64 = 0x10_0000;

pub const PVH_MAGIC: u32 = 0x336e_c578;
pub const MULTIBOOT_BOOT_MAGIC: u32 = 0x2bad_b002;

/// GDT entries: null, 0x08 code32, 0x10 code64, 0x18 data.
pub const GDT: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
];

/// The four ways into the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Linux64,
    Pvh,
    Multiboot,
    BzImage,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Linux64,
        Protocol::Pvh,
        Protocol::Multiboot,
        Protocol::BzImage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Linux64 => "linux64",
            Protocol::Pvh => "pvh",
            Protocol::Multiboot => "multiboot",
            Protocol::BzImage => "bzimage",
        }
    }

    pub fn image(self) -> &'static [u8] {
        match self {
            Protocol::Linux64 => firmware::PROBE_LINUX64,
            Protocol::Pvh => firmware::PROBE_PVH,
            Protocol::Multiboot => firmware::PROBE_MULTIBOOT,
            Protocol::BzImage => firmware::PROBE_BZIMAGE,
        }
    }

    /// Linux entries start in long mode, the others in 32-bit protected mode.
    pub fn is_linux(self) -> bool {
        matches!(self, Protocol::Linux64 | Protocol::BzImage)
    }
}

/// How the vCPU enters the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// Long mode, paging on, CS=0x10.
    Long,
    /// 32-bit protected mode, paging off, CS=0x08.
    Protected32,
}

/// Which entry point of the image to use (normally the protocol's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryChoice {
    /// The protocol's entry: ELF e_entry, PVH note, bzImage payload + 0x200.
    Protocol,
    /// The ELF e_entry even for the PVH image (what a loader ignoring the note does).
    ElfEntry,
    /// The bzImage 32-bit entry at payload offset 0.
    BzImage32,
}

/// Everything a boot of the probe depends on; tests change fields of `BootSpec::new`.
#[derive(Clone, Debug)]
pub struct BootSpec {
    pub protocol: Protocol,
    /// The boot data handed over (may differ from `protocol` to test fallbacks).
    pub boot_data: Protocol,
    pub entry: EntryChoice,
    pub image: &'static [u8],
    pub mem_size: u64,
    /// None: no command line (Linux: cmd_line_ptr = 0).
    pub cmdline: Option<Vec<u8>>,
    pub initrd: Option<Vec<u8>>,
    /// (base, length, type) entries of the memory map.
    pub memory_map: Vec<(u64, u64, u32)>,
    pub hv_max_leaf: u32,
    pub tsc_khz: u32,
    /// CPUID.1:ECX.RDRAND[30] and CPUID.7.0:EBX.RDSEED[18] as the VMM sets them.
    /// (On the PVM development host the guest reads both as 1 even when cleared, so
    /// the tests only use the contract's values: set.)
    pub rdrand: bool,
    pub rdseed: bool,
    pub rtc_status_a: u8,
    pub rtc_uip_stuck: bool,
    /// BCD hours, minutes, seconds.
    pub rtc_time: (u8, u8, u8),
    pub pvh_magic: u32,
    pub multiboot_magic: u32,
    pub linux_boot_flag: u16,
    /// Zero page high halves: ext_ramdisk_image (+0xC0), ext_cmd_line_ptr (+0xC8).
    pub linux_ext_ramdisk_image: u32,
    pub linux_ext_cmd_line_ptr: u32,
    /// Extra multiboot info flags to clear (e.g. 1 << 6 to drop MEM_MAP).
    pub multiboot_clear_flags: u32,
    /// Load ELF and bzImage images with linux-loader instead of the test's own loader.
    pub use_linux_loader: bool,
}

impl BootSpec {
    pub fn new(protocol: Protocol) -> Self {
        let mem_size = 64 << 20;
        BootSpec {
            protocol,
            boot_data: protocol,
            entry: EntryChoice::Protocol,
            image: protocol.image(),
            mem_size,
            cmdline: Some(b"console=ttyS0 quiet".to_vec()),
            initrd: None,
            memory_map: standard_memory_map(mem_size),
            hv_max_leaf: 0x4000_0010,
            tsc_khz: 1_234_567,
            rdrand: true,
            rdseed: true,
            rtc_status_a: 0x26,
            rtc_uip_stuck: false,
            rtc_time: (0x12, 0x34, 0x56),
            pvh_magic: PVH_MAGIC,
            multiboot_magic: MULTIBOOT_BOOT_MAGIC,
            linux_boot_flag: 0xaa55,
            linux_ext_ramdisk_image: 0,
            linux_ext_cmd_line_ptr: 0,
            multiboot_clear_flags: 0,
            use_linux_loader: false,
        }
    }

    pub fn with_cmdline(mut self, cmdline: &str) -> Self {
        self.cmdline = Some(cmdline.as_bytes().to_vec());
        self
    }

    pub fn entry_mode(&self) -> EntryMode {
        match (self.protocol, self.entry) {
            (Protocol::Pvh, EntryChoice::ElfEntry) => EntryMode::Long,
            (_, EntryChoice::BzImage32) => EntryMode::Protected32,
            (p, _) if p.is_linux() => EntryMode::Long,
            _ => EntryMode::Protected32,
        }
    }

    /// Where the initrd goes: page aligned, as high as possible in RAM below 3 GiB.
    pub fn initrd_addr(&self) -> Option<u64> {
        let len = self.initrd.as_ref()?.len() as u64;
        Some((self.mem_size - len) & !0xfff)
    }
}

/// RAM [0, 0x9fc00) and [1 MiB, mem) available, the gap reserved.
pub fn standard_memory_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    vec![
        (0, EBDA_START, 1),
        (EBDA_START, HIGH_MEMORY - EBDA_START, 2),
        (HIGH_MEMORY, mem_size - HIGH_MEMORY, 1),
    ]
}

/// Registers the guest starts with, besides the mode.
#[derive(Clone, Copy, Debug, Default)]
pub struct EntryRegs {
    pub rip: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rsi: u64,
}

type Result<T> = std::result::Result<T, String>;

fn write(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) -> Result<()> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|e| format!("cannot write {} bytes at {addr:#x}: {e}", bytes.len()))
}

fn u16_at(b: &[u8], off: usize) -> Result<u16> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("image too short for a u16 at {off:#x}"))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("image too short for a u32 at {off:#x}"))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64> {
    Ok(u64::from(u32_at(b, off)?) | (u64::from(u32_at(b, off + 4)?) << 32))
}

/// A parsed ELF image: its loadable segments, entry and PVH note entry.
pub struct ElfInfo {
    pub is_64: bool,
    pub entry: u64,
    /// (file offset, file size, physical address, memory size) per PT_LOAD.
    pub loads: Vec<(u64, u64, u64, u64)>,
    pub pvh_entry: Option<u32>,
}

pub fn parse_elf(image: &[u8]) -> Result<ElfInfo> {
    if image.get(0..4) != Some(b"\x7fELF") {
        return Err("not an ELF image".into());
    }
    let is_64 = match image[4] {
        1 => false,
        2 => true,
        c => return Err(format!("unknown ELF class {c}")),
    };
    let (entry, phoff, phentsize, phnum) = if is_64 {
        (
            u64_at(image, 0x18)?,
            u64_at(image, 0x20)?,
            u16_at(image, 0x36)?,
            u16_at(image, 0x38)?,
        )
    } else {
        (
            u64::from(u32_at(image, 0x18)?),
            u64::from(u32_at(image, 0x1c)?),
            u16_at(image, 0x2a)?,
            u16_at(image, 0x2c)?,
        )
    };
    let mut info = ElfInfo {
        is_64,
        entry,
        loads: Vec::new(),
        pvh_entry: None,
    };
    for i in 0..usize::from(phnum) {
        let ph = phoff as usize + i * usize::from(phentsize);
        let p_type = u32_at(image, ph)?;
        let (offset, paddr, filesz, memsz) = if is_64 {
            (
                u64_at(image, ph + 8)?,
                u64_at(image, ph + 0x18)?,
                u64_at(image, ph + 0x20)?,
                u64_at(image, ph + 0x28)?,
            )
        } else {
            (
                u64::from(u32_at(image, ph + 4)?),
                u64::from(u32_at(image, ph + 0xc)?),
                u64::from(u32_at(image, ph + 0x10)?),
                u64::from(u32_at(image, ph + 0x14)?),
            )
        };
        match p_type {
            1 => info.loads.push((offset, filesz, paddr, memsz)),
            4 => {
                if let Some(entry) = find_pvh_note(image, offset as usize, filesz as usize)? {
                    info.pvh_entry = Some(entry);
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// Walk the notes in `image[offset..offset+size]` for Xen's PHYS32_ENTRY (type 18).
fn find_pvh_note(image: &[u8], offset: usize, size: usize) -> Result<Option<u32>> {
    let align4 = |n: usize| (n + 3) & !3;
    let mut pos = offset;
    while pos + 12 <= offset + size {
        let namesz = u32_at(image, pos)? as usize;
        let descsz = u32_at(image, pos + 4)? as usize;
        let n_type = u32_at(image, pos + 8)?;
        let name = image
            .get(pos + 12..pos + 12 + namesz)
            .ok_or("note name runs past the image")?;
        let desc = pos + 12 + align4(namesz);
        if n_type == 18 && name == b"Xen\0" && descsz >= 4 {
            return Ok(Some(u32_at(image, desc)?));
        }
        pos = desc + align4(descsz);
    }
    Ok(None)
}

/// Load the image and the boot data; returns the registers to start with.
pub fn prepare(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<EntryRegs> {
    write_gdt_and_page_tables(mem)?;
    if let Some(cmdline) = &spec.cmdline {
        let mut bytes = cmdline.clone();
        bytes.push(0);
        write(mem, CMDLINE_ADDR, &bytes)?;
    }
    if let (Some(initrd), Some(addr)) = (&spec.initrd, spec.initrd_addr()) {
        write(mem, addr, initrd)?;
    }
    let rip = load_image(mem, spec)?;
    let mut regs = EntryRegs {
        rip,
        ..EntryRegs::default()
    };
    match spec.boot_data {
        Protocol::Linux64 | Protocol::BzImage => {
            write_zero_page(mem, spec)?;
            regs.rsi = ZERO_PAGE_ADDR;
        }
        Protocol::Pvh => {
            write_pvh_start_info(mem, spec)?;
            regs.rbx = PVH_INFO_ADDR;
        }
        Protocol::Multiboot => {
            write_multiboot_info(mem, spec)?;
            regs.rax = u64::from(spec.multiboot_magic);
            regs.rbx = MB_INFO_ADDR;
        }
    }
    Ok(regs)
}

fn write_gdt_and_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let gdt: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    write(mem, GDT_ADDR, &gdt)?;
    write(mem, PML4_ADDR, &(PDPT_ADDR | 3).to_le_bytes())?;
    for i in 0..4u64 {
        write(
            mem,
            PDPT_ADDR + i * 8,
            &((PD_ADDR + i * 0x1000) | 3).to_le_bytes(),
        )?;
    }
    let pds: Vec<u8> = (0..2048u64)
        .flat_map(|j| ((j << 21) | 0x83).to_le_bytes())
        .collect();
    write(mem, PD_ADDR, &pds)
}

/// Copy the image in; returns the entry address for `spec.entry`.
fn load_image(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<u64> {
    if spec.image.get(0..4) == Some(b"\x7fELF") {
        let elf = parse_elf(spec.image)?;
        if spec.use_linux_loader {
            load_elf_with_linux_loader(mem, spec.image)?;
        } else {
            for &(offset, filesz, paddr, memsz) in &elf.loads {
                let data = spec
                    .image
                    .get(offset as usize..(offset + filesz) as usize)
                    .ok_or("PT_LOAD runs past the image")?;
                write(mem, paddr, data)?;
                write(mem, paddr + filesz, &vec![0u8; (memsz - filesz) as usize])?;
            }
        }
        return match (spec.protocol, spec.entry) {
            (Protocol::Pvh, EntryChoice::Protocol) => elf
                .pvh_entry
                .map(u64::from)
                .ok_or_else(|| "the PVH image has no PHYS32_ENTRY note".to_string()),
            _ => Ok(elf.entry),
        };
    }
    let payload_start = load_bzimage(mem, spec)?;
    Ok(match spec.entry {
        EntryChoice::BzImage32 => payload_start,
        _ => payload_start + firmware::BZIMAGE_ENTRY64_OFFSET,
    })
}

fn load_elf_with_linux_loader(mem: &GuestMemoryMmap, image: &[u8]) -> Result<()> {
    use linux_loader::loader::{Elf, KernelLoader};
    let mut cursor = std::io::Cursor::new(image);
    Elf::load(mem, None, &mut cursor, Some(GuestAddress(HIGH_MEMORY)))
        .map(|_| ())
        .map_err(|e| format!("linux-loader refused the ELF image: {e}"))
}

/// Copy the protected-mode payload to code32_start; returns where it went.
fn load_bzimage(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<u64> {
    if spec.use_linux_loader {
        use linux_loader::loader::{BzImage, KernelLoader};
        let mut cursor = std::io::Cursor::new(spec.image);
        let result = BzImage::load(mem, None, &mut cursor, Some(GuestAddress(HIGH_MEMORY)))
            .map_err(|e| format!("linux-loader refused the bzImage: {e}"))?;
        return Ok(result.kernel_load.0);
    }
    let setup_sects = match spec.image.get(0x1f1) {
        Some(0) => 4,
        Some(&n) => usize::from(n),
        None => return Err("bzImage too short for a setup header".into()),
    };
    let payload = spec
        .image
        .get((setup_sects + 1) * 512..)
        .ok_or("bzImage shorter than its setup sectors")?;
    let load = u64::from(u32_at(spec.image, 0x214)?);
    write(mem, load, payload)?;
    Ok(load)
}

fn write_zero_page(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<()> {
    let mut zp = vec![0u8; 4096];
    if spec.image.get(0x202..0x206) == Some(b"HdrS") {
        // bzImage: the setup header ends at 0x202 + the jump's offset byte.
        let end = 0x202 + usize::from(spec.image[0x201]);
        let header = spec.image.get(0x1f1..end).ok_or("setup header cut short")?;
        zp[0x1f1..end].copy_from_slice(header);
    } else {
        zp[0x202..0x206].copy_from_slice(b"HdrS");
        zp[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    }
    zp[0x1fe..0x200].copy_from_slice(&spec.linux_boot_flag.to_le_bytes());
    zp[0x210] = 0xff; // type_of_loader: undefined
    let cmdline_ptr = if spec.cmdline.is_some() {
        CMDLINE_ADDR as u32
    } else {
        0
    };
    zp[0x228..0x22c].copy_from_slice(&cmdline_ptr.to_le_bytes());
    zp[0xc0..0xc4].copy_from_slice(&spec.linux_ext_ramdisk_image.to_le_bytes());
    zp[0xc8..0xcc].copy_from_slice(&spec.linux_ext_cmd_line_ptr.to_le_bytes());
    if let (Some(initrd), Some(addr)) = (&spec.initrd, spec.initrd_addr()) {
        zp[0x218..0x21c].copy_from_slice(&(addr as u32).to_le_bytes());
        zp[0x21c..0x220].copy_from_slice(&(initrd.len() as u32).to_le_bytes());
    }
    zp[0x1e8] = spec.memory_map.len() as u8;
    for (i, &(base, len, kind)) in spec.memory_map.iter().enumerate() {
        let at = 0x2d0 + i * 20;
        zp[at..at + 8].copy_from_slice(&base.to_le_bytes());
        zp[at + 8..at + 16].copy_from_slice(&len.to_le_bytes());
        zp[at + 16..at + 20].copy_from_slice(&kind.to_le_bytes());
    }
    write(mem, ZERO_PAGE_ADDR, &zp)
}

fn write_pvh_start_info(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<()> {
    let mut info = [0u8; 56];
    let nr_modules = u32::from(spec.initrd.is_some());
    let modlist = if nr_modules > 0 { PVH_MODLIST_ADDR } else { 0 };
    let cmdline = if spec.cmdline.is_some() {
        CMDLINE_ADDR
    } else {
        0
    };
    info[0..4].copy_from_slice(&spec.pvh_magic.to_le_bytes());
    info[4..8].copy_from_slice(&1u32.to_le_bytes());
    info[12..16].copy_from_slice(&nr_modules.to_le_bytes());
    info[16..24].copy_from_slice(&modlist.to_le_bytes());
    info[24..32].copy_from_slice(&cmdline.to_le_bytes());
    info[40..48].copy_from_slice(&PVH_MEMMAP_ADDR.to_le_bytes());
    info[48..52].copy_from_slice(&(spec.memory_map.len() as u32).to_le_bytes());
    write(mem, PVH_INFO_ADDR, &info)?;
    let map: Vec<u8> = spec
        .memory_map
        .iter()
        .flat_map(|&(base, len, kind)| {
            let mut e = [0u8; 24];
            e[0..8].copy_from_slice(&base.to_le_bytes());
            e[8..16].copy_from_slice(&len.to_le_bytes());
            e[16..20].copy_from_slice(&kind.to_le_bytes());
            e
        })
        .collect();
    write(mem, PVH_MEMMAP_ADDR, &map)?;
    if let (Some(initrd), Some(addr)) = (&spec.initrd, spec.initrd_addr()) {
        let mut entry = [0u8; 32];
        entry[0..8].copy_from_slice(&addr.to_le_bytes());
        entry[8..16].copy_from_slice(&(initrd.len() as u64).to_le_bytes());
        write(mem, PVH_MODLIST_ADDR, &entry)?;
    }
    Ok(())
}

fn write_multiboot_info(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<()> {
    const MEM: u32 = 1 << 0;
    const CMDLINE: u32 = 1 << 2;
    const MODS: u32 = 1 << 3;
    const MEM_MAP: u32 = 1 << 6;
    const LOADER_NAME: u32 = 1 << 9;
    let mut flags = MEM | MEM_MAP | LOADER_NAME;
    let mut info = [0u8; 0x58];
    info[4..8].copy_from_slice(&639u32.to_le_bytes());
    info[8..12].copy_from_slice(&(((spec.mem_size - HIGH_MEMORY) >> 10) as u32).to_le_bytes());
    if spec.cmdline.is_some() {
        flags |= CMDLINE;
        info[16..20].copy_from_slice(&(CMDLINE_ADDR as u32).to_le_bytes());
    }
    if let (Some(initrd), Some(addr)) = (&spec.initrd, spec.initrd_addr()) {
        flags |= MODS;
        info[20..24].copy_from_slice(&1u32.to_le_bytes());
        info[24..28].copy_from_slice(&(MB_MODS_ADDR as u32).to_le_bytes());
        let mut module = [0u8; 16];
        module[0..4].copy_from_slice(&(addr as u32).to_le_bytes());
        module[4..8].copy_from_slice(&((addr + initrd.len() as u64) as u32).to_le_bytes());
        write(mem, MB_MODS_ADDR, &module)?;
    }
    let map: Vec<u8> = spec
        .memory_map
        .iter()
        .flat_map(|&(base, len, kind)| {
            let mut e = [0u8; 24];
            e[0..4].copy_from_slice(&20u32.to_le_bytes());
            e[4..12].copy_from_slice(&base.to_le_bytes());
            e[12..20].copy_from_slice(&len.to_le_bytes());
            e[20..24].copy_from_slice(&kind.to_le_bytes());
            e
        })
        .collect();
    write(mem, MB_MMAP_ADDR, &map)?;
    info[44..48].copy_from_slice(&(map.len() as u32).to_le_bytes());
    info[48..52].copy_from_slice(&(MB_MMAP_ADDR as u32).to_le_bytes());
    write(mem, MB_LOADER_NAME_ADDR, b"edgevisor firmware test\0")?;
    info[64..68].copy_from_slice(&(MB_LOADER_NAME_ADDR as u32).to_le_bytes());
    flags &= !spec.multiboot_clear_flags;
    info[0..4].copy_from_slice(&flags.to_le_bytes());
    write(mem, MB_INFO_ADDR, &info)
}
