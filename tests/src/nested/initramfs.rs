//! An initramfs as a newc ("070701") cpio archive, written by our own code: no root rights or
//! host tools needed, and device nodes such as `/dev/console` can be included.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::command::stdout_of;
use super::elf::{elf_interpreter, shared_libraries};
use super::{NestedError, Result};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const MAX_PATH: usize = 1024;

/// Where the contents of a regular file come from.
#[derive(Debug, Clone)]
enum Source {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Node {
    Dir,
    File { source: Source, mode: u32 },
    Symlink(String),
    CharDevice { major: u32, minor: u32, mode: u32 },
}

/// The files of an initramfs, keyed by guest path; parents are created as needed.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    /// Guest paths without the leading `/`; sorted, so a directory precedes what it holds.
    entries: BTreeMap<String, Node>,
}

fn invalid(path: &str, reason: &'static str) -> NestedError {
    NestedError::InvalidGuestPath {
        path: path.to_string(),
        reason,
    }
}

/// `/a/b` -> `a/b`, refusing anything that is not a clean absolute path.
fn guest_key(path: &str) -> Result<String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(invalid(path, "it does not start with /"));
    };
    if rest.is_empty() {
        return Err(invalid(path, "it names the root directory"));
    }
    if rest.len() >= MAX_PATH || rest.contains('\0') {
        return Err(invalid(path, "it is too long or holds a NUL byte"));
    }
    if rest
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(invalid(path, "it has an empty, . or .. component"));
    }
    Ok(rest.to_string())
}

impl Initramfs {
    /// An archive with `/dev/console`, `/dev/null` and empty `/proc`, `/sys`, `/tmp`, `/root`.
    pub fn new() -> Initramfs {
        let mut fs = Initramfs::default();
        for dir in ["dev", "proc", "sys", "tmp", "root"] {
            fs.entries.insert(dir.to_string(), Node::Dir);
        }
        let console = Node::CharDevice {
            major: 5,
            minor: 1,
            mode: 0o600,
        };
        let null = Node::CharDevice {
            major: 1,
            minor: 3,
            mode: 0o666,
        };
        fs.entries.insert("dev/console".to_string(), console);
        fs.entries.insert("dev/null".to_string(), null);
        fs
    }

    /// [`Initramfs::new`] plus a static busybox at `/bin/busybox` and a symlink for each of its
    /// applets (`/bin/sh`, `/sbin/insmod`, ...), as `busybox --list-full` names them.
    pub fn with_busybox(busybox: &Path) -> Result<Initramfs> {
        if elf_interpreter(busybox)?.is_some() {
            return Err(NestedError::BadExecutable {
                path: busybox.to_path_buf(),
                reason: "is dynamically linked; install busybox-static (scripts/install-test-deps.sh) or point EDGEVISOR_BUSYBOX at a static busybox".to_string(),
            });
        }
        let mut fs = Initramfs::new();
        fs.add_file("/bin/busybox", busybox)?;
        let list = stdout_of(Command::new(busybox).arg("--list-full"))?;
        for applet in list.lines().map(str::trim) {
            if !applet.contains('/') || applet == "bin/busybox" {
                continue;
            }
            fs.add_symlink(&format!("/{applet}"), "/bin/busybox")?;
        }
        Ok(fs)
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<&mut Self> {
        let key = guest_key(path)?;
        for (end, _) in key.match_indices('/') {
            let parent = &key[..end];
            match self.entries.get(parent) {
                None => {
                    self.entries.insert(parent.to_string(), Node::Dir);
                }
                Some(Node::Dir) => {}
                Some(_) => return Err(invalid(path, "one of its parents is not a directory")),
            }
        }
        match (self.entries.get(&key), &node) {
            (Some(Node::Dir), Node::Dir) => {}
            (Some(Node::Dir), _) => return Err(invalid(path, "it is already a directory")),
            _ => {
                self.entries.insert(key, node);
            }
        }
        Ok(self)
    }

    /// An empty directory (and its parents).
    pub fn add_dir(&mut self, path: &str) -> Result<&mut Self> {
        self.insert(path, Node::Dir)
    }

    /// A copy of the host file `host` (symlinks followed) with the host file's permissions; the
    /// contents are read when the archive is written.
    pub fn add_file(&mut self, path: &str, host: &Path) -> Result<&mut Self> {
        let meta = std::fs::metadata(host).map_err(|e| NestedError::io(host, e))?;
        if !meta.is_file() {
            return Err(NestedError::io(
                host,
                std::io::Error::other("not a regular file"),
            ));
        }
        let mode = meta.permissions().mode() & 0o7777;
        let source = Source::Host(host.to_path_buf());
        self.insert(path, Node::File { source, mode })
    }

    /// A file with the given contents and permission bits (e.g. `0o755`).
    pub fn add_bytes(
        &mut self,
        path: &str,
        bytes: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<&mut Self> {
        let source = Source::Bytes(bytes.into());
        let mode = mode & 0o7777;
        self.insert(path, Node::File { source, mode })
    }

    /// A symbolic link at `path` pointing to `target`.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        if target.is_empty() || target.contains('\0') {
            return Err(invalid(
                path,
                "its link target is empty or holds a NUL byte",
            ));
        }
        self.insert(path, Node::Symlink(target.to_string()))
    }

    /// A character device node.
    pub fn add_char_device(
        &mut self,
        path: &str,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> Result<&mut Self> {
        let mode = mode & 0o7777;
        self.insert(path, Node::CharDevice { major, minor, mode })
    }

    /// The host executable `host` at `path`, plus its ELF interpreter and shared libraries at
    /// the same paths as on the host, so a dynamically linked program runs in the guest.
    pub fn add_executable(&mut self, path: &str, host: &Path) -> Result<&mut Self> {
        self.add_file(path, host)?;
        for lib in shared_libraries(host)? {
            let guest = lib.to_string_lossy().into_owned();
            self.add_file(&guest, &lib)?;
        }
        Ok(self)
    }

    /// `/init`, the first program the kernel runs (a shell script here), mode 0755.
    pub fn set_init(&mut self, script: &str) -> Result<&mut Self> {
        self.add_bytes("/init", script.as_bytes(), 0o755)
    }

    /// Every guest path in the archive, in archive order, with a leading `/`.
    pub fn paths(&self) -> Vec<String> {
        self.entries.keys().map(|k| format!("/{k}")).collect()
    }

    /// Writes the archive (uncompressed newc cpio, which the kernel accepts as an initramfs).
    pub fn write(&self, out: &Path) -> Result<()> {
        let io = |e| NestedError::io(out, e);
        let mut w = BufWriter::new(File::create(out).map_err(io)?);
        for (index, (name, node)) in self.entries.iter().enumerate() {
            let ino = u32::try_from(index + 1).unwrap_or(u32::MAX);
            write_node(&mut w, ino, name, node, out)?;
        }
        let trailer = Header::new(0, 0, 1);
        trailer.write(&mut w, "TRAILER!!!", 0).map_err(io)?;
        w.flush().map_err(io)
    }
}

/// The fields of a newc header that vary between our entries.
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
}

impl Header {
    fn new(ino: u32, mode: u32, nlink: u32) -> Header {
        Header {
            ino,
            mode,
            nlink,
            rdev: (0, 0),
        }
    }

    /// Writes the header and the name, padded so that the data starts 4-byte aligned.
    fn write(&self, w: &mut impl Write, name: &str, size: u64) -> std::io::Result<()> {
        let size = u32::try_from(size)
            .map_err(|_| std::io::Error::other(format!("{name} is 4 GiB or larger")))?;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            self.mode,
            0,
            0,
            self.nlink,
            0,
            size,
            0,
            0,
            self.rdev.0,
            self.rdev.1,
        ];
        let mut text = String::from("070701");
        for field in fields {
            text.push_str(&format!("{field:08X}"));
        }
        text.push_str(&format!("{namesize:08X}{:08X}", 0));
        w.write_all(text.as_bytes())?;
        w.write_all(name.as_bytes())?;
        w.write_all(&[0])?;
        pad(w, 110 + namesize as u64)
    }
}

fn pad(w: &mut impl Write, written: u64) -> std::io::Result<()> {
    let fill = (4 - written % 4) % 4;
    w.write_all(&[0u8; 3][..fill as usize])
}

fn write_node(w: &mut impl Write, ino: u32, name: &str, node: &Node, out: &Path) -> Result<()> {
    let io = |e| NestedError::io(out, e);
    match node {
        Node::Dir => Header::new(ino, S_IFDIR | 0o755, 2)
            .write(w, name, 0)
            .map_err(io),
        Node::Symlink(target) => {
            let len = target.len() as u64;
            Header::new(ino, S_IFLNK | 0o777, 1)
                .write(w, name, len)
                .map_err(io)?;
            w.write_all(target.as_bytes()).map_err(io)?;
            pad(w, len).map_err(io)
        }
        Node::CharDevice { major, minor, mode } => {
            let mut header = Header::new(ino, S_IFCHR | mode, 1);
            header.rdev = (*major, *minor);
            header.write(w, name, 0).map_err(io)
        }
        Node::File {
            source: Source::Bytes(bytes),
            mode,
        } => {
            let len = bytes.len() as u64;
            Header::new(ino, S_IFREG | mode, 1)
                .write(w, name, len)
                .map_err(io)?;
            w.write_all(bytes).map_err(io)?;
            pad(w, len).map_err(io)
        }
        Node::File {
            source: Source::Host(host),
            mode,
        } => {
            let hio = |e| NestedError::io(host, e);
            let file = File::open(host).map_err(hio)?;
            let len = file.metadata().map_err(hio)?.len();
            Header::new(ino, S_IFREG | mode, 1)
                .write(w, name, len)
                .map_err(io)?;
            let copied = std::io::copy(&mut file.take(len), w).map_err(hio)?;
            if copied != len {
                let shrunk = std::io::Error::other("the file shrank while it was archived");
                return Err(NestedError::io(host, shrunk));
            }
            pad(w, len).map_err(io)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nested::ScratchDir;

    fn cpio(dir: &Path, args: &[&str], archive: &Path) -> String {
        let input = File::open(archive).expect("archive written");
        let out = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(input)
            .output()
            .expect("cpio runs (scripts/install-test-deps.sh installs it)");
        assert!(out.status.success(), "cpio {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn cpio_lists_and_extracts_exactly_what_was_put_in() {
        let scratch = ScratchDir::new_in(&std::env::temp_dir(), "cpio-unit").expect("scratch");
        let host = scratch.path().join("host.bin");
        // Odd sizes exercise the 4-byte padding of names and data.
        let host_bytes: Vec<u8> = (0..4099u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&host, &host_bytes).expect("write host file");
        let mut fs = Initramfs::new();
        fs.add_bytes("/etc/hello.txt", "hello\n", 0o644)
            .expect("bytes");
        fs.add_file("/opt/deep/dir/host.bin", &host).expect("file");
        fs.add_symlink("/bin/hi", "/etc/hello.txt").expect("link");
        fs.add_dir("/empty").expect("dir");
        fs.set_init("#!/bin/sh\necho init\n").expect("init");
        let archive = scratch.path().join("out.cpio");
        fs.write(&archive).expect("write archive");

        let listed: Vec<String> = cpio(scratch.path(), &["-it", "--quiet"], &archive)
            .lines()
            .map(|l| format!("/{l}"))
            .collect();
        assert_eq!(listed, fs.paths());
        for expected in ["/etc", "/opt/deep", "/dev/console", "/init", "/bin/hi"] {
            assert!(
                listed.iter().any(|l| l == expected),
                "{expected} in {listed:?}"
            );
        }

        let extract = scratch.path().join("x");
        std::fs::create_dir(&extract).expect("mkdir");
        let hello = cpio(
            &extract,
            &["-i", "--quiet", "--to-stdout", "etc/hello.txt"],
            &archive,
        );
        assert_eq!(hello, "hello\n");
        let out = Command::new("cpio")
            .args(["-i", "--quiet", "--to-stdout", "opt/deep/dir/host.bin"])
            .stdin(File::open(&archive).expect("archive"))
            .output()
            .expect("cpio");
        assert_eq!(out.stdout, host_bytes);

        let long = cpio(scratch.path(), &["-itv", "--quiet"], &archive);
        let line = |name: &str| {
            long.lines()
                .find(|l| l.ends_with(name) || l.contains(&format!("{name} ->")))
                .unwrap_or_else(|| panic!("{name} in {long}"))
                .to_string()
        };
        assert!(line("init").starts_with("-rwxr-xr-x"), "{long}");
        assert!(line("bin/hi").starts_with('l'), "{long}");
        assert!(line("bin/hi").ends_with("/etc/hello.txt"), "{long}");
        assert!(line("dev/console").starts_with("crw-------"), "{long}");
        assert!(line("empty").starts_with('d'), "{long}");
    }

    #[test]
    fn unclean_guest_paths_are_refused() {
        let mut fs = Initramfs::new();
        for bad in ["relative", "/", "/a/../b", "/a//b", "/a/./b", "/trailing/"] {
            let err = fs.add_bytes(bad, "x", 0o644).expect_err(bad);
            assert!(
                matches!(err, NestedError::InvalidGuestPath { .. }),
                "{bad}: {err}"
            );
        }
        fs.add_bytes("/file", "x", 0o644).expect("plain file");
        let err = fs
            .add_bytes("/file/child", "x", 0o644)
            .expect_err("under a file");
        assert!(err.to_string().contains("not a directory"), "{err}");
        let err = fs
            .add_bytes("/dev", "x", 0o644)
            .expect_err("over a directory");
        assert!(err.to_string().contains("already a directory"), "{err}");
    }

    #[test]
    fn busybox_archive_has_a_shell_and_the_tools_init_uses() {
        let fs = Initramfs::with_busybox(&crate::nested::busybox())
            .expect("busybox-static is installed");
        let paths = fs.paths();
        for tool in [
            "/bin/busybox",
            "/bin/sh",
            "/sbin/insmod",
            "/sbin/poweroff",
            "/bin/mount",
        ] {
            assert!(
                paths.iter().any(|p| p == tool),
                "{tool} missing from {paths:?}"
            );
        }
        assert!(matches!(fs.entries.get("bin/sh"), Some(Node::Symlink(t)) if t == "/bin/busybox"));
    }
}
