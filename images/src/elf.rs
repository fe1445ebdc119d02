//! A small, bounds-checked reader for little-endian x86 ELF32 and ELF64 executables: the
//! header, program headers, section names and notes. Nothing here trusts a field of the file.

use crate::bytes::{slice, to_usize, u16_at, u32_at, u64_at, u8_at};
use crate::ImageError;

/// The four bytes every ELF file starts with.
pub(crate) const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

const ET_EXEC: u16 = 2;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
pub(crate) const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const SHT_NOTE: u32 = 7;
/// `e_phnum` value meaning "the real count is in section 0's sh_info".
const PN_XNUM: u16 = 0xffff;
/// `e_shstrndx` value meaning "the real index is in section 0's sh_link".
const SHN_XINDEX: u16 = 0xffff;

/// Longest section name kept (longer ones are cut).
const MAX_NAME_LEN: usize = 64;
/// Most notes looked at in one image (a vmlinux has a few dozen): bounds the work a hostile
/// file with many overlapping note segments or sections can cause.
const MAX_NOTES: usize = 1 << 16;

/// Xen's note type for the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// 32- or 64-bit ELF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElfClass {
    Elf32,
    Elf64,
}

/// Where the fields sit for one ELF class.
struct Layout {
    word: usize,
    ehsize: usize,
    e_entry: usize,
    e_phoff: usize,
    e_shoff: usize,
    e_phentsize: usize,
    e_phnum: usize,
    e_shentsize: usize,
    e_shnum: usize,
    e_shstrndx: usize,
    phsize: usize,
    p_offset: usize,
    p_vaddr: usize,
    p_paddr: usize,
    p_filesz: usize,
    p_memsz: usize,
    p_align: usize,
    shsize: usize,
    sh_offset: usize,
    sh_size: usize,
    sh_link: usize,
    sh_info: usize,
    sh_addralign: usize,
}

const LAYOUT64: Layout = Layout {
    word: 8,
    ehsize: 64,
    e_entry: 24,
    e_phoff: 32,
    e_shoff: 40,
    e_phentsize: 54,
    e_phnum: 56,
    e_shentsize: 58,
    e_shnum: 60,
    e_shstrndx: 62,
    phsize: 56,
    p_offset: 8,
    p_vaddr: 16,
    p_paddr: 24,
    p_filesz: 32,
    p_memsz: 40,
    p_align: 48,
    shsize: 64,
    sh_offset: 24,
    sh_size: 32,
    sh_link: 40,
    sh_info: 44,
    sh_addralign: 48,
};

const LAYOUT32: Layout = Layout {
    word: 4,
    ehsize: 52,
    e_entry: 24,
    e_phoff: 28,
    e_shoff: 32,
    e_phentsize: 42,
    e_phnum: 44,
    e_shentsize: 46,
    e_shnum: 48,
    e_shstrndx: 50,
    phsize: 32,
    p_offset: 4,
    p_vaddr: 8,
    p_paddr: 12,
    p_filesz: 16,
    p_memsz: 20,
    p_align: 28,
    shsize: 40,
    sh_offset: 16,
    sh_size: 20,
    sh_link: 24,
    sh_info: 28,
    sh_addralign: 32,
};

impl Layout {
    /// A class-sized word (address, offset or size) at `off`.
    fn word(&self, b: &[u8], off: usize) -> Option<u64> {
        if self.word == 8 {
            u64_at(b, off)
        } else {
            u32_at(b, off).map(u64::from)
        }
    }
}

/// One program header, widened to 64 bits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProgramHeader {
    pub index: usize,
    pub p_type: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

/// One section header with its name resolved.
#[derive(Debug, Clone)]
pub(crate) struct SectionHeader {
    pub name: Vec<u8>,
    pub sh_type: u32,
    pub offset: u64,
    pub size: u64,
    pub addralign: u64,
}

/// The parts of an ELF executable the loader needs.
#[derive(Debug, Clone)]
pub(crate) struct Elf {
    pub class: ElfClass,
    pub entry: u64,
    pub phdrs: Vec<ProgramHeader>,
    pub sections: Vec<SectionHeader>,
}

/// One ELF note.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Note<'a> {
    pub name: &'a [u8],
    pub n_type: u32,
    pub desc: &'a [u8],
}

fn machine_name(m: u16) -> &'static str {
    match m {
        0 => "no machine",
        2 => "SPARC",
        3 => "i386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        22 => "s390",
        40 => "32-bit ARM",
        50 => "IA-64",
        62 => "x86_64",
        183 => "AArch64",
        243 => "RISC-V",
        258 => "LoongArch",
        _ => "another architecture",
    }
}

/// Parses and checks the ELF header, program headers and section names of `b`, which starts
/// with [`ELF_MAGIC`].
pub(crate) fn parse(b: &[u8]) -> Result<Elf, ImageError> {
    let len = b.len();
    let (class, ly) = match u8_at(b, 4) {
        Some(1) => (ElfClass::Elf32, &LAYOUT32),
        Some(2) => (ElfClass::Elf64, &LAYOUT64),
        Some(c) => {
            return Err(ImageError::UnsupportedElf {
                what: "class",
                value: format!("EI_CLASS {c}"),
            })
        }
        None => return Err(ImageError::truncated("ELF identification bytes", len)),
    };
    match u8_at(b, 5) {
        Some(1) => {}
        Some(2) => {
            return Err(ImageError::UnsupportedElf {
                what: "byte order",
                value: "big-endian".into(),
            })
        }
        Some(d) => {
            return Err(ImageError::UnsupportedElf {
                what: "byte order",
                value: format!("EI_DATA {d}"),
            })
        }
        None => return Err(ImageError::truncated("ELF identification bytes", len)),
    }
    if len < ly.ehsize {
        return Err(ImageError::truncated("ELF header", len));
    }
    let header_u16 = |off| u16_at(b, off).ok_or_else(|| ImageError::truncated("ELF header", len));
    let header_word = |off| {
        ly.word(b, off)
            .ok_or_else(|| ImageError::truncated("ELF header", len))
    };
    check_machine(class, header_u16(18)?)?;
    let e_type = header_u16(16)?;
    if e_type != ET_EXEC {
        let found = match e_type {
            0 => "of no type",
            1 => "a relocatable object file",
            3 => "a shared object or position-independent executable",
            4 => "a core dump",
            _ => "of an unknown type",
        };
        return Err(ImageError::NotExecutable { e_type, found });
    }
    let entry = header_word(ly.e_entry)?;
    let sections = read_sections(b, ly, header_word(ly.e_shoff)?)?;
    let phdrs = read_program_headers(b, ly, &sections)?;
    Ok(Elf {
        class,
        entry,
        phdrs,
        sections: sections.headers,
    })
}

fn check_machine(class: ElfClass, e_machine: u16) -> Result<(), ImageError> {
    let (bits, expected, want) = match class {
        ElfClass::Elf64 => (64, "x86_64", EM_X86_64),
        ElfClass::Elf32 => (32, "i386", EM_386),
    };
    if e_machine == want {
        return Ok(());
    }
    Err(ImageError::WrongMachine {
        bits,
        e_machine,
        machine: machine_name(e_machine),
        expected,
    })
}

/// Section headers plus what section 0 says about extended numbering.
struct Sections {
    headers: Vec<SectionHeader>,
    /// sh_info of section 0: the program header count when e_phnum is PN_XNUM.
    ext_phnum: Option<u64>,
}

/// Reads the section header table at `shoff` (0: none) and resolves section names.
fn read_sections(b: &[u8], ly: &Layout, shoff: u64) -> Result<Sections, ImageError> {
    let len = b.len();
    let none = Sections {
        headers: Vec::new(),
        ext_phnum: None,
    };
    if shoff == 0 {
        return Ok(none);
    }
    let trunc = || ImageError::truncated("section header table", len);
    let entsize = usize::from(u16_at(b, ly.e_shentsize).ok_or_else(trunc)?);
    let mut shnum = u64::from(u16_at(b, ly.e_shnum).ok_or_else(trunc)?);
    let mut shstrndx = u64::from(u16_at(b, ly.e_shstrndx).ok_or_else(trunc)?);
    if entsize == 0 && shnum == 0 {
        return Ok(none);
    }
    if entsize < ly.shsize {
        return Err(ImageError::UnsupportedElf {
            what: "section header entry size",
            value: format!("{entsize} bytes, expected at least {}", ly.shsize),
        });
    }
    let shoff = to_usize(shoff).ok_or_else(trunc)?;
    let first = slice(b, shoff, entsize).ok_or_else(trunc)?;
    let ext_phnum = u32_at(first, ly.sh_info).map(u64::from);
    if shnum == 0 {
        shnum = ly.word(first, ly.sh_size).ok_or_else(trunc)?;
    }
    if shstrndx == u64::from(SHN_XINDEX) {
        shstrndx = u64::from(u32_at(first, ly.sh_link).ok_or_else(trunc)?);
    }
    let count = to_usize(shnum).ok_or_else(trunc)?;
    let table_len = count.checked_mul(entsize).ok_or_else(trunc)?;
    let table = slice(b, shoff, table_len).ok_or_else(trunc)?;

    let mut raw = Vec::with_capacity(count);
    for (i, e) in table.chunks_exact(entsize).enumerate() {
        // Entries are at least `ly.shsize` bytes, so these reads only fail on a bad layout.
        let missing = || ImageError::truncated(format!("section header {i}"), len);
        raw.push((
            u32_at(e, 0).ok_or_else(missing)?,
            SectionHeader {
                name: Vec::new(),
                sh_type: u32_at(e, 4).ok_or_else(missing)?,
                offset: ly.word(e, ly.sh_offset).ok_or_else(missing)?,
                size: ly.word(e, ly.sh_size).ok_or_else(missing)?,
                addralign: ly.word(e, ly.sh_addralign).ok_or_else(missing)?,
            },
        ));
    }
    let strtab = match to_usize(shstrndx).and_then(|i| raw.get(i)) {
        Some((_, s)) if shstrndx != 0 => Some(
            section_bytes(b, s)
                .ok_or_else(|| ImageError::truncated("section name string table", len))?,
        ),
        _ => None,
    };
    let headers = raw
        .into_iter()
        .map(|(name_off, mut s)| {
            if let Some(strtab) = strtab {
                s.name = c_string(strtab, u64::from(name_off)).to_vec();
            }
            s
        })
        .collect();
    Ok(Sections { headers, ext_phnum })
}

/// The file bytes of a section, if they are inside the file.
fn section_bytes<'a>(b: &'a [u8], s: &SectionHeader) -> Option<&'a [u8]> {
    slice(b, to_usize(s.offset)?, to_usize(s.size)?)
}

/// The NUL-terminated string at `off` in `table` (empty if `off` is outside it).
/// Cut at [`MAX_NAME_LEN`] bytes: the names that matter are short, and a hostile file could
/// otherwise make every section name the same huge unterminated string.
fn c_string(table: &[u8], off: u64) -> &[u8] {
    let rest = to_usize(off).and_then(|o| table.get(o..)).unwrap_or(&[]);
    let rest = rest.get(..MAX_NAME_LEN).unwrap_or(rest);
    let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
    rest.get(..end).unwrap_or(rest)
}

fn read_program_headers(
    b: &[u8],
    ly: &Layout,
    sections: &Sections,
) -> Result<Vec<ProgramHeader>, ImageError> {
    let len = b.len();
    let trunc = || ImageError::truncated("program header table", len);
    let phoff = ly.word(b, ly.e_phoff).ok_or_else(trunc)?;
    let entsize = usize::from(u16_at(b, ly.e_phentsize).ok_or_else(trunc)?);
    let mut phnum = u64::from(u16_at(b, ly.e_phnum).ok_or_else(trunc)?);
    if phnum == u64::from(PN_XNUM) {
        if let Some(n) = sections.ext_phnum {
            phnum = n;
        }
    }
    if phnum == 0 || phoff == 0 {
        return Err(ImageError::BadProgramHeaders {
            problem: "no program headers".into(),
        });
    }
    if entsize < ly.phsize {
        return Err(ImageError::BadProgramHeaders {
            problem: format!(
                "program header entries of {entsize} bytes (at least {} expected)",
                ly.phsize
            ),
        });
    }
    let count = to_usize(phnum).ok_or_else(trunc)?;
    let table_len = count.checked_mul(entsize).ok_or_else(trunc)?;
    let table = slice(b, to_usize(phoff).ok_or_else(trunc)?, table_len).ok_or_else(trunc)?;
    let mut phdrs = Vec::with_capacity(count);
    for (index, e) in table.chunks_exact(entsize).enumerate() {
        let missing = || ImageError::truncated(format!("program header {index}"), len);
        phdrs.push(ProgramHeader {
            index,
            p_type: u32_at(e, 0).ok_or_else(missing)?,
            offset: ly.word(e, ly.p_offset).ok_or_else(missing)?,
            vaddr: ly.word(e, ly.p_vaddr).ok_or_else(missing)?,
            paddr: ly.word(e, ly.p_paddr).ok_or_else(missing)?,
            filesz: ly.word(e, ly.p_filesz).ok_or_else(missing)?,
            memsz: ly.word(e, ly.p_memsz).ok_or_else(missing)?,
            align: ly.word(e, ly.p_align).ok_or_else(missing)?,
        });
    }
    Ok(phdrs)
}

/// Walks the notes in `data`, padded to `align` bytes. Stops quietly at the first note that
/// does not fit (trailing padding is common).
pub(crate) struct Notes<'a> {
    data: &'a [u8],
    pos: usize,
    align: usize,
}

impl<'a> Notes<'a> {
    pub(crate) fn new(data: &'a [u8], align: u64) -> Notes<'a> {
        Notes {
            data,
            pos: 0,
            align: if align == 8 { 8 } else { 4 },
        }
    }

    fn next_note(&mut self) -> Option<Note<'a>> {
        use crate::bytes::align_up;
        let d = self.data;
        let namesz = to_usize(u64::from(u32_at(d, self.pos)?))?;
        let descsz = to_usize(u64::from(u32_at(d, self.pos.checked_add(4)?)?))?;
        let n_type = u32_at(d, self.pos.checked_add(8)?)?;
        let name_off = self.pos.checked_add(12)?;
        let name = slice(d, name_off, namesz)?;
        let desc_off = align_up(name_off.checked_add(namesz)?, self.align)?;
        let desc = slice(d, desc_off, descsz)?;
        self.pos = align_up(desc_off.checked_add(descsz)?, self.align)?;
        Some(Note { name, n_type, desc })
    }
}

impl<'a> Iterator for Notes<'a> {
    type Item = Note<'a>;

    fn next(&mut self) -> Option<Note<'a>> {
        let note = self.next_note();
        if note.is_none() {
            self.pos = self.data.len();
        }
        note
    }
}

impl Elf {
    /// The PT_LOAD program headers, in file order.
    pub(crate) fn loads(&self) -> impl Iterator<Item = &ProgramHeader> {
        self.phdrs.iter().filter(|p| p.p_type == PT_LOAD)
    }

    /// Whether a section's name satisfies `pred`.
    pub(crate) fn has_section(&self, pred: impl Fn(&[u8]) -> bool) -> bool {
        self.sections.iter().any(|s| pred(&s.name))
    }

    /// The entry point of the Xen `XEN_ELFNOTE_PHYS32_ENTRY` note, looked for in PT_NOTE
    /// segments and then in SHT_NOTE sections; `None` if there is no such note.
    pub(crate) fn pvh_entry(&self, b: &[u8]) -> Result<Option<u64>, ImageError> {
        let len = b.len();
        let mut budget = MAX_NOTES;
        for p in self.phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
            let data = to_usize(p.offset)
                .zip(to_usize(p.filesz))
                .and_then(|(o, s)| slice(b, o, s))
                .ok_or_else(|| {
                    ImageError::truncated(format!("PT_NOTE program header {} data", p.index), len)
                })?;
            if let Some(entry) = find_pvh_note(Notes::new(data, p.align), &mut budget)? {
                return Ok(Some(entry));
            }
        }
        for s in self.sections.iter().filter(|s| s.sh_type == SHT_NOTE) {
            let data = section_bytes(b, s).ok_or_else(|| {
                ImageError::truncated(
                    format!("note section {:?}", String::from_utf8_lossy(&s.name)),
                    len,
                )
            })?;
            if let Some(entry) = find_pvh_note(Notes::new(data, s.addralign), &mut budget)? {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }
}

/// The PHYS32_ENTRY value among `notes`, checked to be a 32-bit address. Each note looked at
/// uses up one unit of `budget`.
fn find_pvh_note(notes: Notes<'_>, budget: &mut usize) -> Result<Option<u64>, ImageError> {
    let mut found = None;
    for n in notes {
        let Some(left) = budget.checked_sub(1) else {
            break;
        };
        *budget = left;
        if n.n_type == XEN_ELFNOTE_PHYS32_ENTRY
            && n.name.strip_suffix(b"\0").unwrap_or(n.name) == b"Xen"
        {
            found = Some(n);
            break;
        }
    }
    let Some(note) = found else {
        return Ok(None);
    };
    let entry = match note.desc.len() {
        4 => u32_at(note.desc, 0).map(u64::from),
        8 => u64_at(note.desc, 0),
        n => {
            return Err(ImageError::BadPvhNote {
                problem: format!("its value is {n} bytes long, expected 4 or 8"),
            })
        }
    };
    match entry {
        Some(e) if e <= u64::from(u32::MAX) && e != 0 => Ok(Some(e)),
        Some(e) => Err(ImageError::BadPvhNote {
            problem: format!("entry {e:#x} is not a non-zero 32-bit physical address"),
        }),
        None => Err(ImageError::BadPvhNote {
            problem: "its value could not be read".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], n_type: u32, desc: &[u8], align: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&n_type.to_le_bytes());
        v.extend_from_slice(name);
        while v.len() % align != 0 {
            v.push(0);
        }
        v.extend_from_slice(desc);
        while v.len() % align != 0 {
            v.push(0);
        }
        v
    }

    fn find(notes: Notes<'_>) -> Result<Option<u64>, ImageError> {
        let mut budget = usize::MAX;
        find_pvh_note(notes, &mut budget)
    }

    #[test]
    fn note_budget_limits_the_walk() {
        let mut data = note(b"GNU\0", 3, &[0; 4], 4);
        data.extend(note(b"Xen\0", 18, &0x10_2000u32.to_le_bytes(), 4));
        let mut budget = 1;
        assert_eq!(
            find_pvh_note(Notes::new(&data, 4), &mut budget).unwrap(),
            None
        );
        assert_eq!(budget, 0);
        let mut budget = 2;
        assert_eq!(
            find_pvh_note(Notes::new(&data, 4), &mut budget).unwrap(),
            Some(0x10_2000)
        );
    }

    #[test]
    fn notes_walks_past_other_notes_with_either_alignment() {
        for align in [4usize, 8] {
            let mut data = note(b"GNU\0", 3, &[1, 2, 3, 4, 5], align);
            data.extend(note(b"Xen\0", 18, &0x10_2000u32.to_le_bytes(), align));
            let got = find(Notes::new(&data, align as u64)).unwrap();
            assert_eq!(got, Some(0x10_2000), "align {align}");
        }
    }

    #[test]
    fn notes_stops_at_a_note_running_past_the_end() {
        let mut data = note(b"Xen\0", 18, &0x10_2000u32.to_le_bytes(), 4);
        data.truncate(data.len() - 1);
        assert_eq!(Notes::new(&data, 4).count(), 0);
        let mut huge = note(b"Xen\0", 18, &[0; 4], 4);
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Notes::new(&huge, 4).count(), 0);
    }

    #[test]
    fn pvh_note_value_must_be_4_or_8_bytes_and_32_bit() {
        let bad_size = note(b"Xen\0", 18, &[0; 6], 4);
        assert!(matches!(
            find(Notes::new(&bad_size, 4)),
            Err(ImageError::BadPvhNote { .. })
        ));
        let high = note(b"Xen\0", 18, &0x1_0000_0000u64.to_le_bytes(), 4);
        assert!(matches!(
            find(Notes::new(&high, 4)),
            Err(ImageError::BadPvhNote { .. })
        ));
        let wide = note(b"Xen\0", 18, &0x20_0000u64.to_le_bytes(), 4);
        assert_eq!(find(Notes::new(&wide, 4)).unwrap(), Some(0x20_0000));
        let other_type = note(b"Xen\0", 17, &0x20_0000u32.to_le_bytes(), 4);
        assert_eq!(find(Notes::new(&other_type, 4)).unwrap(), None);
    }

    #[test]
    fn c_string_is_bounded() {
        assert_eq!(c_string(b"\0.text\0.uk_x", 1), b".text");
        assert_eq!(c_string(b"\0.text\0.uk_x", 7), b".uk_x");
        assert_eq!(c_string(b"abc", 99), b"");
        let long = [b'x'; 100];
        assert_eq!(c_string(&long, 0).len(), MAX_NAME_LEN);
    }
}
