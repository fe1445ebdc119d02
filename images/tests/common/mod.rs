//! Builders for small, valid kernel images made in memory, so each test can change one thing.
#![allow(dead_code)]

use std::path::PathBuf;

pub const EM_386: u16 = 3;
pub const EM_X86_64: u16 = 62;
pub const MB_MAGIC: u32 = 0x1BAD_B002;

/// One PT_LOAD segment.
#[derive(Clone, Debug)]
pub struct Load {
    pub paddr: u64,
    pub vaddr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
}

impl Load {
    /// A segment whose virtual and physical addresses agree, with no bss.
    pub fn at(paddr: u64, data: Vec<u8>) -> Load {
        let memsz = data.len() as u64;
        Load {
            paddr,
            vaddr: paddr,
            data,
            memsz,
        }
    }
}

/// Recognisable segment contents of `len` bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Where the note(s) go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotePlace {
    /// A PT_NOTE program header and a SHT_NOTE section over the same bytes.
    SegmentAndSection,
    /// Only a SHT_NOTE section.
    SectionOnly,
}

/// A description of an x86 ELF executable.
#[derive(Clone, Debug)]
pub struct ElfSpec {
    pub class64: bool,
    pub machine: u16,
    pub e_type: u16,
    pub entry: u64,
    pub loads: Vec<Load>,
    /// (name with NUL, type, desc).
    pub notes: Vec<(Vec<u8>, u32, Vec<u8>)>,
    pub note_place: NotePlace,
    /// Extra (empty) section names.
    pub sections: Vec<String>,
    /// Bytes placed right after the ELF header (e.g. a multiboot header at 0x34 in ELF32).
    pub early: Vec<u8>,
    /// Leave out the section header table (e_shoff = 0).
    pub no_sections: bool,
}

/// A built image and where its parts are.
#[derive(Clone, Debug)]
pub struct Built {
    pub bytes: Vec<u8>,
    pub phoff: usize,
    pub phentsize: usize,
    pub shoff: usize,
    pub early_offset: usize,
    pub load_offsets: Vec<usize>,
    pub notes_offset: usize,
}

impl ElfSpec {
    /// An ELF64 x86_64 executable with one 0x300-byte segment at 2 MiB, entered at its start.
    pub fn elf64() -> ElfSpec {
        ElfSpec {
            class64: true,
            machine: EM_X86_64,
            e_type: 2,
            entry: 0x20_0000,
            loads: vec![Load::at(0x20_0000, pattern(0x300, 1))],
            notes: Vec::new(),
            note_place: NotePlace::SegmentAndSection,
            sections: Vec::new(),
            early: Vec::new(),
            no_sections: false,
        }
    }

    /// An ELF32 i386 executable with a multiboot header (flags 0x3) at 0x34.
    pub fn elf32_multiboot() -> ElfSpec {
        ElfSpec {
            class64: false,
            machine: EM_386,
            early: multiboot_header(0x3, None),
            ..ElfSpec::elf64()
        }
    }

    pub fn pvh_note(mut self, entry: u32) -> ElfSpec {
        self.notes
            .push((b"Xen\0".to_vec(), 18, entry.to_le_bytes().to_vec()));
        self
    }

    pub fn section(mut self, name: &str) -> ElfSpec {
        self.sections.push(name.to_string());
        self
    }

    pub fn build(&self) -> Built {
        let w = if self.class64 { 8 } else { 4 };
        let ehsize = if self.class64 { 64 } else { 52 };
        let phentsize = if self.class64 { 56 } else { 32 };
        let shentsize = if self.class64 { 64 } else { 40 };
        let has_pt_note = !self.notes.is_empty() && self.note_place == NotePlace::SegmentAndSection;
        let phnum = self.loads.len() + usize::from(has_pt_note);

        let mut b = vec![0u8; ehsize];
        let early_offset = b.len();
        b.extend_from_slice(&self.early);
        pad(&mut b, 8);
        let phoff = b.len();
        b.resize(phoff + phnum * phentsize, 0);

        pad(&mut b, 4);
        let notes_offset = b.len();
        for (name, t, desc) in &self.notes {
            b.extend_from_slice(&note(name, *t, desc));
        }
        let notes_len = b.len() - notes_offset;

        let mut load_offsets = Vec::new();
        for l in &self.loads {
            pad(&mut b, 16);
            load_offsets.push(b.len());
            b.extend_from_slice(&l.data);
        }

        // Section names: null, user sections, .note (if any), .shstrtab.
        let mut names: Vec<String> = self.sections.clone();
        if !self.notes.is_empty() {
            names.push(".note.xen".into());
        }
        names.push(".shstrtab".into());
        let mut strtab = vec![0u8];
        let mut name_offs = Vec::new();
        for n in &names {
            name_offs.push(strtab.len() as u32);
            strtab.extend_from_slice(n.as_bytes());
            strtab.push(0);
        }
        let strtab_offset = b.len();
        b.extend_from_slice(&strtab);
        pad(&mut b, 8);
        let shoff = b.len();
        let shnum = names.len() + 1;
        b.resize(shoff + shnum * shentsize, 0);

        // ELF header.
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = if self.class64 { 2 } else { 1 };
        b[5] = 1;
        b[6] = 1;
        put16(&mut b, 16, self.e_type);
        put16(&mut b, 18, self.machine);
        put32(&mut b, 20, 1);
        let (phoff_at, shoff_at, rest) = if self.class64 {
            (32, 40, 52)
        } else {
            (28, 32, 40)
        };
        putw(&mut b, 24, self.entry, w);
        putw(&mut b, phoff_at, phoff as u64, w);
        putw(
            &mut b,
            shoff_at,
            if self.no_sections { 0 } else { shoff as u64 },
            w,
        );
        put16(&mut b, rest, ehsize as u16);
        put16(&mut b, rest + 2, phentsize as u16);
        put16(&mut b, rest + 4, phnum as u16);
        put16(
            &mut b,
            rest + 6,
            if self.no_sections {
                0
            } else {
                shentsize as u16
            },
        );
        put16(
            &mut b,
            rest + 8,
            if self.no_sections { 0 } else { shnum as u16 },
        );
        put16(
            &mut b,
            rest + 10,
            if self.no_sections {
                0
            } else {
                (shnum - 1) as u16
            },
        );

        // Program headers.
        for (i, l) in self.loads.iter().enumerate() {
            let ph = Phdr {
                p_type: 1,
                offset: load_offsets[i] as u64,
                vaddr: l.vaddr,
                paddr: l.paddr,
                filesz: l.data.len() as u64,
                memsz: l.memsz,
                align: 16,
            };
            ph.write(&mut b, phoff + i * phentsize, self.class64);
        }
        if has_pt_note {
            let ph = Phdr {
                p_type: 4,
                offset: notes_offset as u64,
                vaddr: 0,
                paddr: 0,
                filesz: notes_len as u64,
                memsz: notes_len as u64,
                align: 4,
            };
            ph.write(&mut b, phoff + self.loads.len() * phentsize, self.class64);
        }

        // Section headers (index 0 stays null).
        for (i, n) in names.iter().enumerate() {
            let (sh_type, offset, size, align) = match n.as_str() {
                ".shstrtab" => (3, strtab_offset, strtab.len(), 1),
                ".note.xen" => (7, notes_offset, notes_len, 4),
                _ => (1, strtab_offset, 0, 1),
            };
            let at = shoff + (i + 1) * shentsize;
            put32(&mut b, at, name_offs[i]);
            put32(&mut b, at + 4, sh_type);
            let (off_at, size_at, align_at) = if self.class64 {
                (24, 32, 48)
            } else {
                (16, 20, 32)
            };
            putw(&mut b, at + off_at, offset as u64, w);
            putw(&mut b, at + size_at, size as u64, w);
            putw(&mut b, at + align_at, align, w);
        }
        if self.no_sections {
            b.truncate(shoff);
        }
        Built {
            bytes: b,
            phoff,
            phentsize,
            shoff,
            early_offset,
            load_offsets,
            notes_offset,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.build().bytes
    }
}

struct Phdr {
    p_type: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

impl Phdr {
    fn write(&self, b: &mut [u8], at: usize, class64: bool) {
        put32(b, at, self.p_type);
        if class64 {
            put32(b, at + 4, 5);
            put64(b, at + 8, self.offset);
            put64(b, at + 16, self.vaddr);
            put64(b, at + 24, self.paddr);
            put64(b, at + 32, self.filesz);
            put64(b, at + 40, self.memsz);
            put64(b, at + 48, self.align);
        } else {
            put32(b, at + 4, self.offset as u32);
            put32(b, at + 8, self.vaddr as u32);
            put32(b, at + 12, self.paddr as u32);
            put32(b, at + 16, self.filesz as u32);
            put32(b, at + 20, self.memsz as u32);
            put32(b, at + 24, 5);
            put32(b, at + 28, self.align as u32);
        }
    }
}

fn pad(b: &mut Vec<u8>, align: usize) {
    while b.len() % align != 0 {
        b.push(0);
    }
}

pub fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn putw(b: &mut [u8], at: usize, v: u64, w: usize) {
    if w == 8 {
        put64(b, at, v);
    } else {
        put32(b, at, v as u32);
    }
}

/// One 4-byte aligned ELF note.
pub fn note(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_le_bytes());
    v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    v.extend_from_slice(&n_type.to_le_bytes());
    v.extend_from_slice(name);
    pad(&mut v, 4);
    v.extend_from_slice(desc);
    pad(&mut v, 4);
    v
}

/// A multiboot v1 header with a correct checksum; `addresses` = [header_addr, load_addr,
/// load_end_addr, bss_end_addr, entry_addr].
pub fn multiboot_header(flags: u32, addresses: Option<[u32; 5]>) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&MB_MAGIC.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    let checksum = 0u32.wrapping_sub(MB_MAGIC).wrapping_sub(flags);
    v.extend_from_slice(&checksum.to_le_bytes());
    for a in addresses.iter().flatten() {
        v.extend_from_slice(&a.to_le_bytes());
    }
    v
}

/// A description of a bzImage.
#[derive(Clone, Debug)]
pub struct BzSpec {
    pub setup_sects: u8,
    pub version: u16,
    pub jump: u8,
    pub loadflags: u8,
    pub xloadflags: u16,
    pub cmdline_size: u32,
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub init_size: u32,
    pub pref_address: u64,
    pub payload: Vec<u8>,
}

impl BzSpec {
    /// A protocol 2.15, 64-bit, LOADED_HIGH bzImage with 3 setup sectors and a 0x600-byte payload.
    pub fn modern() -> BzSpec {
        BzSpec {
            setup_sects: 3,
            version: 0x020F,
            jump: 0x6A,
            loadflags: 0x01,
            xloadflags: 0x01,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            init_size: 0x4000,
            pref_address: 0x100_0000,
            payload: pattern(0x600, 7),
        }
    }

    /// Where the payload starts in the file.
    pub fn payload_offset(&self) -> usize {
        let sects = if self.setup_sects == 0 {
            4
        } else {
            self.setup_sects as usize
        };
        (sects + 1) * 512
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.payload_offset()];
        b[0x1F1] = self.setup_sects;
        put16(&mut b, 0x1FE, 0xAA55);
        b[0x200] = 0xEB;
        b[0x201] = self.jump;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        put16(&mut b, 0x206, self.version);
        b[0x211] = self.loadflags;
        put32(&mut b, 0x22C, self.initrd_addr_max);
        put32(&mut b, 0x230, self.kernel_alignment);
        put16(&mut b, 0x236, self.xloadflags);
        put32(&mut b, 0x238, self.cmdline_size);
        put64(&mut b, 0x258, self.pref_address);
        put32(&mut b, 0x260, self.init_size);
        put32(&mut b, 0x1F4, (self.payload.len() as u32).div_ceil(16));
        b.extend_from_slice(&self.payload);
        b
    }
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "images-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
