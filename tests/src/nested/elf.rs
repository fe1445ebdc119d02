//! What a host executable needs to run in a guest: its ELF interpreter and shared libraries.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::command::stdout_of;
use super::{NestedError, Result};

const PT_INTERP: u32 = 3;
const PHDR_SIZE: usize = 56;

fn bad(path: &Path, reason: &str) -> NestedError {
    NestedError::BadExecutable {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    bytes
        .get(at..at + 2)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    if let Some(b) = bytes.get(at..at + 8) {
        word.copy_from_slice(b);
    }
    u64::from_le_bytes(word)
}

/// The program interpreter (`PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`) of a 64-bit
/// little-endian ELF executable, or `None` for a static one.
pub fn elf_interpreter(path: &Path) -> Result<Option<PathBuf>> {
    let io = |e| NestedError::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    let mut header = [0u8; 64];
    file.read_exact(&mut header)
        .map_err(|_| bad(path, "is too short to be an ELF executable"))?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err(bad(path, "is not a 64-bit little-endian ELF file"));
    }
    let phoff = u64_at(&header, 0x20);
    let phentsize = usize::from(u16_at(&header, 0x36));
    let phnum = usize::from(u16_at(&header, 0x38));
    if phnum == 0 {
        return Ok(None);
    }
    if phentsize < PHDR_SIZE {
        return Err(bad(path, "has ELF program headers of an unknown size"));
    }
    let mut table = vec![0u8; phentsize * phnum];
    file.seek(SeekFrom::Start(phoff)).map_err(io)?;
    file.read_exact(&mut table)
        .map_err(|_| bad(path, "ends inside its ELF program header table"))?;
    for entry in table.chunks_exact(phentsize) {
        if u32_at(entry, 0) != PT_INTERP {
            continue;
        }
        let offset = u64_at(entry, 8);
        let size = usize::try_from(u64_at(entry, 32))
            .ok()
            .filter(|s| *s > 1 && *s <= 4096)
            .ok_or_else(|| bad(path, "has an ELF interpreter path of a bad size"))?;
        let mut name = vec![0u8; size];
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        file.read_exact(&mut name)
            .map_err(|_| bad(path, "ends inside its ELF interpreter path"))?;
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        let text = String::from_utf8_lossy(&name[..end]).into_owned();
        return Ok(Some(PathBuf::from(text)));
    }
    Ok(None)
}

/// Parses `ldd` output into absolute library paths (the interpreter included, the vDSO left out).
pub(crate) fn parse_ldd(text: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("shared library {} is not found", name.trim()));
                }
                rest.split_whitespace().next().unwrap_or("")
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The shared libraries a dynamically linked executable loads, as host paths (from `ldd`), with
/// its interpreter first; empty for a static executable.
pub fn shared_libraries(path: &Path) -> Result<Vec<PathBuf>> {
    let Some(interpreter) = elf_interpreter(path)? else {
        return Ok(Vec::new());
    };
    let text = stdout_of(Command::new("ldd").arg(path))?;
    let found = parse_ldd(&text).map_err(|reason| bad(path, &reason))?;
    let mut libs = vec![interpreter];
    for lib in found {
        if !libs.contains(&lib) {
            libs.push(lib);
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_paths_without_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        let libs = parse_ldd(text).expect("parses");
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn ldd_output_with_a_missing_library_is_an_error() {
        let text = "\tlibnope.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n";
        let err = parse_ldd(text).expect_err("missing library");
        assert!(err.contains("libnope.so.1"), "{err}");
    }

    #[test]
    fn a_host_dynamic_executable_has_an_interpreter_and_libc() {
        let exe = std::env::current_exe().expect("test executable path");
        let interp = elf_interpreter(&exe).expect("reads ELF");
        let interp = interp.expect("the test binary is dynamically linked");
        assert!(interp.to_string_lossy().contains("ld-linux"), "{interp:?}");
        let libs = shared_libraries(&exe).expect("ldd works");
        assert_eq!(libs.first(), Some(&interp));
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
    }

    #[test]
    fn a_non_elf_file_is_rejected() {
        let err = elf_interpreter(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/Cargo.toml"
        )))
        .expect_err("not ELF");
        assert!(err.to_string().contains("not a 64-bit"), "{err}");
    }
}
