//! Helpers shared by the VMM's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "edgevisor-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The probe image for a protocol name.
pub fn probe(name: &str) -> &'static [u8] {
    firmware::all()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
        .unwrap_or_else(|| panic!("no firmware probe named {name}"))
}

/// Runs `edgevisor` with `args`.
pub fn edgevisor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgevisor"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn edgevisor")
}

/// `edgevisor run --kernel <path> ...rest`.
pub fn run_kernel(path: &Path, rest: &[&str]) -> Output {
    let mut args = vec!["run", "--kernel", path.to_str().unwrap()];
    args.extend_from_slice(rest);
    edgevisor(&args)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Describes an output for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// A MAC address as `--net ...,mac=` takes it.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Free 2 MiB hugepages (`HugePages_Free` in /proc/meminfo).
pub fn free_hugepages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Makes `pages` 2 MiB hugepages free (growing the pool only by what is missing) and puts
/// the pool back to its old size on drop.
pub struct Hugepages(String);

impl Hugepages {
    pub fn reserve(pages: u64) -> Hugepages {
        let before = std::fs::read_to_string(NR_HUGEPAGES).expect("read nr_hugepages (root?)");
        let total: u64 = before.trim().parse().unwrap_or(0);
        let free = free_hugepages();
        if free < pages {
            std::fs::write(NR_HUGEPAGES, (total + pages - free).to_string())
                .expect("grow the 2 MiB hugepage pool (tests run as root)");
            assert!(
                free_hugepages() >= pages,
                "the kernel could not give {pages} free 2 MiB hugepages"
            );
        }
        Hugepages(before)
    }
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.0.trim());
    }
}

/// FNV-1a 32-bit, as the probe computes it over the initrd.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ *b as u32).wrapping_mul(0x0100_0193)
    })
}

/// A minimal ELF64 executable with one PT_LOAD of `code` at `addr`, entry at its start.
pub fn elf64_with_code(addr: u64, code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let off = (EHDR + PHDR) as u64;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&addr.to_le_bytes()); // e_entry
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&7u32.to_le_bytes()); // RWX
    f.extend_from_slice(&off.to_le_bytes()); // p_offset
    f.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&addr.to_le_bytes()); // p_paddr
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&0x1000u64.to_le_bytes());
    f.extend_from_slice(code);
    f
}

/// Whether the host CPU has VMX or SVM.
pub fn host_has_vmx_or_svm() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .split_whitespace()
        .any(|w| w == "vmx" || w == "svm")
}
