//! The ELF `vmlinux` inside a bzImage, so the same real Linux can be booted through its PVH
//! entry and its 64-bit ELF entry as well as as a bzImage.
//!
//! Where the compressed kernel is comes from the setup header (boot protocol 2.08+):
//! `payload_offset` (0x248) and `payload_length` (0x24C), counted from the start of the
//! protected-mode code at `(setup_sects + 1) * 512`. The stream's magic bytes say which tool
//! unpacks it. Linux appends the uncompressed size as a little-endian u32 to every stream
//! (gzip's own trailer already ends with it), which checks the result.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::command::describe;
use super::{tail, DebianKernel, NestedError, Result};

const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: usize = 0x202;
const VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
/// The first boot protocol version with `payload_offset` and `payload_length`.
const MIN_VERSION: u16 = 0x0208;
/// `XEN_ELFNOTE_PHYS32_ENTRY`, the note type of the PVH entry point.
const PHYS32_ENTRY: &str = "0x00000012";

/// How a bzImage's kernel is compressed (Linux's `CONFIG_KERNEL_*` choices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `CONFIG_KERNEL_GZIP`.
    Gzip,
    /// `CONFIG_KERNEL_BZIP2`.
    Bzip2,
    /// `CONFIG_KERNEL_LZMA`.
    Lzma,
    /// `CONFIG_KERNEL_XZ`.
    Xz,
    /// `CONFIG_KERNEL_LZO`.
    Lzo,
    /// `CONFIG_KERNEL_LZ4` (Debian 12's kernels): the legacy lz4 frame format.
    Lz4,
    /// `CONFIG_KERNEL_ZSTD`.
    Zstd,
}

impl Compression {
    /// The compression whose stream starts with `bytes`, if any.
    pub fn detect(bytes: &[u8]) -> Option<Compression> {
        const MAGICS: [(&[u8], Compression); 7] = [
            (b"\x1f\x8b", Compression::Gzip),
            (b"BZh", Compression::Bzip2),
            (b"\x5d\x00\x00", Compression::Lzma),
            (b"\xfd7zXZ\x00", Compression::Xz),
            (b"\x89LZO", Compression::Lzo),
            (b"\x02\x21\x4c\x18", Compression::Lz4),
            (b"\x28\xb5\x2f\xfd", Compression::Zstd),
        ];
        MAGICS
            .iter()
            .find(|(magic, _)| bytes.starts_with(magic))
            .map(|(_, kind)| *kind)
    }

    /// The command that decompresses this format from stdin to stdout, and its Debian package.
    fn tool(self) -> (&'static str, &'static [&'static str], &'static str) {
        match self {
            Compression::Gzip => ("gzip", &["-dc"], "gzip"),
            Compression::Bzip2 => ("bzip2", &["-dc"], "bzip2"),
            Compression::Lzma => ("xz", &["--format=lzma", "-dc"], "xz-utils"),
            Compression::Xz => ("xz", &["-dc"], "xz-utils"),
            Compression::Lzo => ("lzop", &["-dc"], "lzop"),
            Compression::Lz4 => ("lz4", &["-dc"], "lz4"),
            Compression::Zstd => ("zstd", &["-dc"], "zstd"),
        }
    }
}

/// The compressed kernel of a bzImage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload<'a> {
    /// The format, from the stream's magic bytes.
    pub compression: Compression,
    /// The stream to feed the decompressor (without Linux's appended size).
    pub stream: &'a [u8],
    /// The uncompressed size Linux recorded after the stream.
    pub size: u32,
}

fn bad(path: &Path, reason: String) -> NestedError {
    NestedError::BadKernelImage {
        path: path.to_path_buf(),
        reason,
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The compressed kernel inside `image`, found through its setup header; `path` names the
/// image in errors.
pub fn bzimage_payload<'a>(path: &Path, image: &'a [u8]) -> Result<Payload<'a>> {
    if image.len() < PAYLOAD_LENGTH + 4 || &image[HEADER_MAGIC..HEADER_MAGIC + 4] != b"HdrS" {
        return Err(bad(path, "no \"HdrS\" setup header at 0x202".into()));
    }
    let version = u16::from_le_bytes([image[VERSION], image[VERSION + 1]]);
    if version < MIN_VERSION {
        return Err(bad(
            path,
            format!("boot protocol {version:#06x} predates payload_offset (2.08)"),
        ));
    }
    let sects = match image[SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    };
    let offset = u32_at(image, PAYLOAD_OFFSET).unwrap_or(0) as usize;
    let length = u32_at(image, PAYLOAD_LENGTH).unwrap_or(0) as usize;
    let start = (sects + 1) * 512 + offset;
    let stream = start
        .checked_add(length)
        .and_then(|end| image.get(start..end))
        .filter(|s| s.len() > 8)
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "payload at {start:#x}+{length:#x} is not inside the {} byte file",
                    image.len()
                ),
            )
        })?;
    let compression = Compression::detect(stream).ok_or_else(|| {
        let head: Vec<String> = stream[..8].iter().map(|b| format!("{b:02x}")).collect();
        bad(
            path,
            format!(
                "payload starts with unknown magic {} (not gzip, bzip2, lzma, xz, lzo, lz4 or zstd)",
                head.join(" ")
            ),
        )
    })?;
    let (body, trailer) = stream.split_at(stream.len() - 4);
    let size = u32_at(trailer, 0).unwrap_or(0);
    // gzip's trailer ends with the size itself; the other streams have it appended by kbuild.
    let stream = if compression == Compression::Gzip {
        stream
    } else {
        body
    };
    Ok(Payload {
        compression,
        stream,
        size,
    })
}

/// Runs `cmd` with `input` on its stdin and returns its stdout when it exits 0.
fn filter(cmd: &mut Command, input: &[u8], package: &str) -> Result<Vec<u8>> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NestedError::ToolMissing {
            program: format!("{} (Debian package {package})", describe(cmd)),
            source,
        })?;
    let stdin = child.stdin.take();
    let output = std::thread::scope(|scope| {
        scope.spawn(move || {
            use std::io::Write;
            // A tool that fails early closes the pipe; its exit status reports that.
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(input);
            }
        });
        child.wait_with_output()
    })
    .map_err(|e| NestedError::Other(format!("waiting for `{}`: {e}", describe(cmd))))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(NestedError::CommandFailed {
        command: describe(cmd),
        status: output.status.to_string(),
        output: tail(&String::from_utf8_lossy(&output.stderr), 20),
    })
}

/// Unpacks the kernel of the bzImage at `bzimage` and writes it to `out` (through a temporary
/// file beside it, so `out` is either complete or absent). The result must be a 64-bit ELF of
/// the size Linux recorded.
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    let image = std::fs::read(bzimage).map_err(|e| NestedError::io(bzimage, e))?;
    let payload = bzimage_payload(bzimage, &image)?;
    let (program, args, package) = payload.compression.tool();
    let vmlinux = filter(Command::new(program).args(args), payload.stream, package)?;
    if vmlinux.len() != payload.size as usize {
        return Err(bad(
            bzimage,
            format!(
                "{program} gave {} bytes but the image records {} uncompressed bytes",
                vmlinux.len(),
                payload.size
            ),
        ));
    }
    if !vmlinux.starts_with(b"\x7fELF\x02") {
        return Err(bad(
            bzimage,
            format!("the {program} payload is not a 64-bit ELF file"),
        ));
    }
    // Unique per process and call: tests in several threads may unpack the same kernel at once.
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let temp = out.with_extension(format!("partial-{}-{call}", std::process::id()));
    std::fs::write(&temp, &vmlinux).map_err(|e| NestedError::io(&temp, e))?;
    std::fs::rename(&temp, out).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        NestedError::io(out, e)
    })
}

/// The PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`) that `readelf -n` finds in the ELF file at
/// `path`, or `None` when it has no such note.
pub fn pvh_entry(path: &Path) -> Result<Option<u64>> {
    let output = super::command::run(Command::new("readelf").arg("-n").arg(path))?;
    Ok(parse_pvh_entry(&String::from_utf8_lossy(&output.stdout)))
}

/// The PVH entry in `readelf -n` output: the description bytes (little-endian) under a note
/// owned by `Xen` of type 0x12.
pub(crate) fn parse_pvh_entry(readelf: &str) -> Option<u64> {
    let mut lines = readelf.lines();
    while let Some(line) = lines.next() {
        let mut words = line.split_whitespace();
        if words.next() != Some("Xen") || !line.contains(PHYS32_ENTRY) {
            continue;
        }
        let data = lines.next()?.trim().strip_prefix("description data:")?;
        let bytes: Vec<u8> = data
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).ok())
            .collect::<Option<_>>()?;
        if bytes.is_empty() || bytes.len() > 8 {
            return None;
        }
        return Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        );
    }
    None
}

/// Whether the file at `path` exists and begins with `magic`.
fn starts_with(path: &Path, magic: &[u8]) -> bool {
    use std::io::Read;
    let mut head = vec![0u8; magic.len()];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == magic)
}

impl DebianKernel {
    /// The ELF `vmlinux` of this kernel, extracted from its bzImage once and cached beside it.
    pub fn vmlinux(&self) -> Result<PathBuf> {
        let dir = self.vmlinuz.parent().unwrap_or(Path::new("."));
        let path = dir.join("vmlinux");
        if starts_with(&path, b"\x7fELF\x02") {
            return Ok(path);
        }
        extract_vmlinux(&self.vmlinuz, &path)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nested::ScratchDir;

    /// A minimal bzImage: `setup_sects` sectors of setup after the boot sector, a few bytes of
    /// "decompressor", then `stream` followed by `trailer`.
    fn bzimage(setup_sects: u8, version: u16, stream: &[u8], trailer: &[u8]) -> Vec<u8> {
        let sects = if setup_sects == 0 {
            4
        } else {
            usize::from(setup_sects)
        };
        let pm_start = (sects + 1) * 512;
        let offset = 0x40usize;
        let mut image = vec![0u8; pm_start + offset];
        image[SETUP_SECTS] = setup_sects;
        image[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        image[VERSION..VERSION + 2].copy_from_slice(&version.to_le_bytes());
        let length = (stream.len() + trailer.len()) as u32;
        image[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&(offset as u32).to_le_bytes());
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&length.to_le_bytes());
        image.extend_from_slice(stream);
        image.extend_from_slice(trailer);
        // Whatever follows the payload (the decompressor's data) must not be fed to the tool.
        image.extend_from_slice(&[0xAA; 300]);
        image
    }

    /// Something that looks like a 64-bit ELF, big enough to compress.
    fn fake_elf() -> Vec<u8> {
        let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
        bytes.extend((0..20_000u32).map(|i| (i * 7 % 251) as u8));
        bytes
    }

    fn compress(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
        filter(Command::new(program).args(args), input, program).expect("compress")
    }

    #[test]
    fn every_kernel_compression_is_told_by_its_magic() {
        assert_eq!(
            Compression::detect(b"\x1f\x8b\x08\x00"),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::detect(b"BZh9"), Some(Compression::Bzip2));
        assert_eq!(
            Compression::detect(b"\x5d\x00\x00\x80"),
            Some(Compression::Lzma)
        );
        assert_eq!(
            Compression::detect(b"\xfd7zXZ\x00\x00"),
            Some(Compression::Xz)
        );
        assert_eq!(Compression::detect(b"\x89LZO\x00"), Some(Compression::Lzo));
        assert_eq!(
            Compression::detect(b"\x02\x21\x4c\x18\x10"),
            Some(Compression::Lz4)
        );
        assert_eq!(
            Compression::detect(b"\x28\xb5\x2f\xfd\x00"),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::detect(b"\x7fELF"), None);
    }

    #[test]
    fn an_lz4_kernel_is_found_through_the_header_and_unpacked() {
        let elf = fake_elf();
        let stream = compress("lz4", &["-l", "-9", "-c"], &elf);
        let size = (elf.len() as u32).to_le_bytes();
        let image = bzimage(0, 0x020f, &stream, &size);
        let path = Path::new("fake-bzImage");
        let payload = bzimage_payload(path, &image).expect("payload");
        assert_eq!(payload.compression, Compression::Lz4);
        assert_eq!(payload.stream, &stream[..]);
        assert_eq!(payload.size as usize, elf.len());

        let scratch = ScratchDir::new_in(&std::env::temp_dir(), "vmlinux-unit").expect("dir");
        let bz = scratch.path().join("bzImage");
        std::fs::write(&bz, &image).expect("write");
        let out = scratch.path().join("vmlinux");
        extract_vmlinux(&bz, &out).expect("extract");
        assert_eq!(std::fs::read(&out).expect("read"), elf);
    }

    #[test]
    fn a_gzip_kernel_keeps_its_own_size_trailer() {
        let elf = fake_elf();
        let stream = compress("gzip", &["-9", "-c"], &elf);
        let image = bzimage(27, 0x020c, &stream, &[]);
        let payload = bzimage_payload(Path::new("gz"), &image).expect("payload");
        assert_eq!(payload.compression, Compression::Gzip);
        assert_eq!(payload.stream, &stream[..]);
        assert_eq!(payload.size as usize, elf.len());

        let scratch = ScratchDir::new_in(&std::env::temp_dir(), "vmlinux-unit").expect("dir");
        let bz = scratch.path().join("bzImage");
        std::fs::write(&bz, &image).expect("write");
        let out = scratch.path().join("vmlinux");
        extract_vmlinux(&bz, &out).expect("extract");
        assert_eq!(std::fs::read(&out).expect("read"), elf);
    }

    #[test]
    fn a_wrong_recorded_size_or_a_non_elf_payload_is_refused() {
        let scratch = ScratchDir::new_in(&std::env::temp_dir(), "vmlinux-unit").expect("dir");
        let bz = scratch.path().join("bzImage");
        let out = scratch.path().join("vmlinux");
        let elf = fake_elf();
        let stream = compress("xz", &["-c"], &elf);
        let wrong = (elf.len() as u32 + 1).to_le_bytes();
        std::fs::write(&bz, bzimage(31, 0x020f, &stream, &wrong)).expect("write");
        let err = extract_vmlinux(&bz, &out).expect_err("size mismatch");
        assert!(err.to_string().contains("uncompressed bytes"), "{err}");
        assert!(!out.exists());

        let text = vec![b'x'; 5000];
        let stream = compress("xz", &["-c"], &text);
        let size = (text.len() as u32).to_le_bytes();
        std::fs::write(&bz, bzimage(31, 0x020f, &stream, &size)).expect("write");
        let err = extract_vmlinux(&bz, &out).expect_err("not ELF");
        assert!(err.to_string().contains("not a 64-bit ELF"), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn bad_headers_are_refused_with_the_reason() {
        let path = Path::new("img");
        let stream = b"\x02\x21\x4c\x18 and more bytes";
        let good = bzimage(4, 0x020f, stream, &[0; 4]);
        assert!(bzimage_payload(path, &good).is_ok());

        let mut no_magic = good.clone();
        no_magic[HEADER_MAGIC] = b'X';
        let err = bzimage_payload(path, &no_magic).expect_err("no HdrS");
        assert!(err.to_string().contains("HdrS"), "{err}");

        let old = bzimage(4, 0x0207, stream, &[0; 4]);
        let err = bzimage_payload(path, &old).expect_err("2.07");
        assert!(err.to_string().contains("0x0207"), "{err}");

        let mut long = good.clone();
        long[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = bzimage_payload(path, &long).expect_err("too long");
        assert!(err.to_string().contains("not inside"), "{err}");

        let unknown = bzimage(4, 0x020f, b"PK\x03\x04 zip is no kernel format", &[0; 4]);
        let err = bzimage_payload(path, &unknown).expect_err("unknown magic");
        assert!(err.to_string().contains("50 4b 03 04"), "{err}");

        assert!(bzimage_payload(path, &good[..0x100]).is_err());
    }

    #[test]
    fn the_pvh_entry_is_read_from_readelf_notes() {
        let text = "Displaying notes found in: .notes
  Owner                Data size \tDescription
  Xen                  0x00000008\tUnknown note type: (0x00000003)
   description data: 00 00 00 80 ff ff ff ff 
  GNU                  0x00000014\tNT_GNU_BUILD_ID (unique build ID bitstring)
    Build ID: 3b43fad5034874490492495d552c0af6a5fab235
  Xen                  0x00000008\tUnknown note type: (0x00000012)
   description data: 50 08 00 01 00 00 00 00 
";
        assert_eq!(parse_pvh_entry(text), Some(0x0100_0850));
        let four = "  Xen    0x00000004\tUnknown note type: (0x00000012)\n   description data: 00 10 00 01 \n";
        assert_eq!(parse_pvh_entry(four), Some(0x0100_1000));
        let without = text.replace("0x00000012", "0x00000011");
        assert_eq!(parse_pvh_entry(&without), None);
    }
}
