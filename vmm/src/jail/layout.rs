//! The jail's directory: `<chroot base>/edgevisor/<id>/root` and what goes into it.
//!
//! Inside the jail (after pivot_root) the tree is:
//! - `/<exec file name>`: a root-owned copy (mode 0755) of `--exec-file`;
//! - the exec file's ELF interpreter and shared libraries at their host paths (for example
//!   `/lib64/ld-linux-x86-64.so.2`, `/lib/x86_64-linux-gnu/libc.so.6`), as `ld.so --list`
//!   names them; nothing for a static binary;
//! - every `--file` at its absolute host path (`--file /srv/img/vmlinux` is `/srv/img/vmlinux`
//!   in the jail too, a relative path is taken from the jailer's working directory), so the
//!   VMM's arguments name the same paths inside and out. A file on the jail's filesystem is
//!   hard-linked (the host file itself: its owner and mode are left alone, so the caller makes
//!   it readable, or writable for a disk, by the jailed uid); any other file is copied, and the
//!   copy is owned by the jailed uid;
//! - `/dev/kvm` (char 10:232) and `/dev/net/tun` (char 10:200) when asked, mode 0600, owned
//!   by the jailed uid;
//! - `/run`: an empty directory owned by the jailed uid (mode 0700) for the API socket,
//!   reports and other files the VMM writes.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// Errors building or removing a jail directory.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("jail directory {0} already exists: a jail with this id is running or was not cleaned up; run edgevisor-jailer --id ID --cleanup")]
    AlreadyExists(PathBuf),
    #[error("cannot create {path} in the jail: {source}; check the --chroot-base-dir filesystem")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot put {from} into the jail at {to}: {source}; check that the file is readable")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list the shared libraries of {exec} with {interp} --list: {detail}; use a static binary")]
    Libraries {
        exec: PathBuf,
        interp: PathBuf,
        detail: String,
    },
    #[error("cannot remove jail directory {path}: {source}; remove it by hand")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A device node the jail can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceNode {
    /// `/dev/kvm`, char 10:232.
    Kvm,
    /// `/dev/net/tun`, char 10:200.
    Tun,
}

impl DeviceNode {
    /// The `--dev` name.
    pub fn name(self) -> &'static str {
        match self {
            DeviceNode::Kvm => "kvm",
            DeviceNode::Tun => "tun",
        }
    }

    /// The path inside the jail, without the leading slash.
    pub fn jail_path(self) -> &'static str {
        match self {
            DeviceNode::Kvm => "dev/kvm",
            DeviceNode::Tun => "dev/net/tun",
        }
    }

    fn numbers(self) -> (u32, u32) {
        match self {
            DeviceNode::Kvm => (10, 232),
            DeviceNode::Tun => (10, 200),
        }
    }
}

/// What goes into a new jail directory.
#[derive(Debug, Clone)]
pub struct LayoutSpec {
    /// `<chroot base>/edgevisor/<id>`.
    pub jail_dir: PathBuf,
    /// The VMM binary to copy in.
    pub exec_file: PathBuf,
    /// Extra files, absolute host paths (also their paths inside the jail).
    pub files: Vec<PathBuf>,
    /// Device nodes to create.
    pub devices: Vec<DeviceNode>,
    /// The jailed uid and gid, `None` when the VMM stays root.
    pub owner: Option<(u32, u32)>,
}

/// A jail directory that exists on disk.
#[derive(Debug)]
pub struct JailDir {
    dir: PathBuf,
}

impl JailDir {
    /// Adopts an existing jail directory (for cleanup).
    pub fn existing(dir: PathBuf) -> Option<JailDir> {
        dir.is_dir().then_some(JailDir { dir })
    }

    /// `<chroot base>/edgevisor/<id>`.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The directory the VMM sees as `/`.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Removes the whole jail directory.
    pub fn remove(self) -> Result<(), LayoutError> {
        fs::remove_dir_all(&self.dir).map_err(|source| LayoutError::Remove {
            path: self.dir.clone(),
            source,
        })
    }
}

/// The path `p` (absolute) takes under `root`.
pub fn in_jail(root: &Path, p: &Path) -> PathBuf {
    let rel: PathBuf = p
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    root.join(rel)
}

/// Creates the jail directory and fills it. When a step fails after the directory was made,
/// the directory is removed again.
pub fn build(spec: &LayoutSpec) -> Result<JailDir, LayoutError> {
    if spec.jail_dir.exists() {
        return Err(LayoutError::AlreadyExists(spec.jail_dir.clone()));
    }
    if let Some(parent) = spec.jail_dir.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|source| LayoutError::Create {
                path: parent.to_path_buf(),
                source,
            })?;
    }
    match fs::DirBuilder::new().mode(0o755).create(&spec.jail_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            return Err(LayoutError::AlreadyExists(spec.jail_dir.clone()))
        }
        Err(source) => {
            return Err(LayoutError::Create {
                path: spec.jail_dir.clone(),
                source,
            })
        }
    }
    let jail = JailDir {
        dir: spec.jail_dir.clone(),
    };
    match fill(&jail.root(), spec) {
        Ok(()) => Ok(jail),
        Err(e) => {
            let _ = jail.remove();
            Err(e)
        }
    }
}

fn fill(root: &Path, spec: &LayoutSpec) -> Result<(), LayoutError> {
    mkdir(root, 0o755)?;
    let exec_name = spec.exec_file.file_name().unwrap_or_default();
    let exec_dst = root.join(exec_name);
    copy_file(&spec.exec_file, &exec_dst, 0o755)?;
    chown(&exec_dst, 0, 0)?;
    for lib in shared_libraries(&spec.exec_file)? {
        let dst = in_jail(root, &lib);
        mkdir_parents(root, &dst)?;
        copy_file(&lib, &dst, 0o755)?;
    }
    for file in &spec.files {
        let dst = in_jail(root, file);
        mkdir_parents(root, &dst)?;
        if fs::hard_link(file, &dst).is_err() {
            copy_file(file, &dst, 0o600)?;
            if let Some((uid, gid)) = spec.owner {
                chown(&dst, uid, gid)?;
            }
        }
    }
    for dev in &spec.devices {
        let dst = root.join(dev.jail_path());
        mkdir_parents(root, &dst)?;
        mknod(&dst, dev.numbers())?;
        if let Some((uid, gid)) = spec.owner {
            chown(&dst, uid, gid)?;
        }
    }
    let run = root.join("run");
    mkdir(&run, 0o700)?;
    if let Some((uid, gid)) = spec.owner {
        chown(&run, uid, gid)?;
    }
    Ok(())
}

fn mkdir(path: &Path, mode: u32) -> Result<(), LayoutError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|source| LayoutError::Create {
            path: path.to_path_buf(),
            source,
        })?;
    // The umask may have cleared bits of `mode`.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
        LayoutError::Create {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Creates the directories between `root` and `file` (mode 0755, root-owned).
fn mkdir_parents(root: &Path, file: &Path) -> Result<(), LayoutError> {
    let Some(parent) = file.parent() else {
        return Ok(());
    };
    if parent == root || parent.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(|source| LayoutError::Create {
            path: parent.to_path_buf(),
            source,
        })
}

/// Copies `from` (following symlinks) to a new file `to` with `mode`.
fn copy_file(from: &Path, to: &Path, mode: u32) -> Result<(), LayoutError> {
    let err = |source| LayoutError::Copy {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    };
    if to.symlink_metadata().is_ok() {
        return Err(err(std::io::Error::from(ErrorKind::AlreadyExists)));
    }
    fs::copy(from, to).map_err(err)?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(err)
}

fn cstring(path: &Path) -> Result<std::ffi::CString, std::io::Error> {
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), LayoutError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| LayoutError::Create {
        path: path.to_path_buf(),
        source,
    })
}

fn mknod(path: &Path, (major, minor): (u32, u32)) -> Result<(), LayoutError> {
    let err = |source| LayoutError::Create {
        path: path.to_path_buf(),
        source,
    };
    let c = cstring(path).map_err(err)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; mknod only reads it.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(major, minor),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // mknod applies the umask; make the mode exactly 0600.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)
}

/// The ELF interpreter (PT_INTERP) of a 64-bit little-endian ELF file, `None` for a static
/// binary or anything else.
pub fn elf_interpreter(bytes: &[u8]) -> Option<PathBuf> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| {
        let v = u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?);
        usize::try_from(v).ok()
    };
    let phoff = u64_at(0x20)?;
    let entsize = usize::from(u16_at(0x36)?);
    let count = usize::from(u16_at(0x38)?);
    for i in 0..count {
        let ph = phoff.checked_add(i.checked_mul(entsize)?)?;
        if u32_at(ph)? != PT_INTERP {
            continue;
        }
        let off = u64_at(ph + 8)?;
        let len = u64_at(ph + 32)?;
        let raw = bytes.get(off..off.checked_add(len)?)?;
        let name = raw.split(|b| *b == 0).next()?;
        return (!name.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(name)));
    }
    None
}

/// The interpreter and shared libraries a dynamic executable loads (empty for a static one),
/// from `<interpreter> --list <exec>`, the query `ldd` makes; it loads the libraries without
/// running the program.
pub fn shared_libraries(exec: &Path) -> Result<Vec<PathBuf>, LayoutError> {
    let bytes = fs::read(exec).map_err(|source| LayoutError::Copy {
        from: exec.to_path_buf(),
        to: PathBuf::new(),
        source,
    })?;
    let Some(interp) = elf_interpreter(&bytes) else {
        return Ok(Vec::new());
    };
    let fail = |detail: String| LayoutError::Libraries {
        exec: exec.to_path_buf(),
        interp: interp.clone(),
        detail,
    };
    let out = Command::new(&interp)
        .arg("--list")
        .arg(exec)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let mut libs = vec![interp.clone()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let path = rest.split_whitespace().next().unwrap_or("");
                if !path.starts_with('/') {
                    return Err(fail(format!("{} is not found", name.trim())));
                }
                path
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        let target = PathBuf::from(target);
        if target.is_absolute() && !libs.contains(&target) {
            libs.push(target);
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_of_this_test_binary_is_found_and_garbage_is_not_elf() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let interp = elf_interpreter(&me).expect("the test binary is dynamically linked");
        assert!(interp.is_absolute(), "{interp:?}");
        assert!(interp.to_string_lossy().contains("ld-linux"), "{interp:?}");
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), None);
        let mut truncated = me[..64].to_vec();
        truncated[0x38] = 0xff; // many program headers beyond the end
        assert_eq!(elf_interpreter(&truncated), None);
    }

    #[test]
    fn libraries_include_libc_and_the_interpreter() {
        let me = std::env::current_exe().unwrap();
        let libs = shared_libraries(&me).unwrap();
        assert!(libs.iter().any(|l| l.ends_with("libc.so.6")), "{libs:?}");
        assert!(libs[0].to_string_lossy().contains("ld-linux"), "{libs:?}");
        assert!(libs.iter().all(|l| l.is_absolute()));
    }

    #[test]
    fn host_paths_map_under_the_root() {
        let root = Path::new("/jail/root");
        assert_eq!(
            in_jail(root, Path::new("/srv/img/vmlinux")),
            Path::new("/jail/root/srv/img/vmlinux")
        );
        assert_eq!(
            in_jail(root, Path::new("/lib64/ld.so")),
            Path::new("/jail/root/lib64/ld.so")
        );
    }
}
