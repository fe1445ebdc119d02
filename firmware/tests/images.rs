//! Static checks of the built images (no KVM): ELF headers and notes, the multiboot
//! header, the bzImage setup header, acceptance by linux-loader, readelf's view, and an
//! objdump scan for instructions this host's KVM cannot emulate.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{parse_elf, ElfInfo};
use firmware::{
    all, LOAD_ADDRESS, PROBE_BZIMAGE, PROBE_LINUX64, PROBE_MARKER, PROBE_MULTIBOOT, PROBE_PVH,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryMmap};

fn out_file(name: &str) -> PathBuf {
    Path::new(env!("OUT_DIR")).join(name)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
}

fn elf(image: &[u8]) -> ElfInfo {
    parse_elf(image).expect("a well-formed ELF image")
}

/// The entry lies inside a loaded segment that starts at the load address.
fn assert_loads_at_1_mib(name: &str, info: &ElfInfo, entry: u64) {
    assert!(!info.loads.is_empty(), "{name}: no PT_LOAD");
    let lowest = info.loads.iter().map(|l| l.2).min().unwrap_or_default();
    assert_eq!(lowest, LOAD_ADDRESS, "{name}: lowest PT_LOAD address");
    for &(offset, filesz, paddr, _) in &info.loads {
        // The ELF headers (at offset 0) are not part of any loaded segment.
        assert!(
            filesz == 0 || offset > 0,
            "{name}: PT_LOAD at {paddr:#x} maps the headers"
        );
    }
    let inside = info
        .loads
        .iter()
        .any(|&(_, filesz, paddr, _)| entry >= paddr && entry < paddr + filesz);
    assert!(
        inside,
        "{name}: entry {entry:#x} is outside the loaded code"
    );
}

#[test]
fn images_are_small() {
    for (name, image) in all() {
        // Code and data are ~20 KiB (the virtio driver included); the static 0-4 GiB
        // identity map adds 24 KiB. probe.ld's own limit (code + data + bss <= 0x20000)
        // is checked at link time.
        assert!(image.len() < 64 * 1024, "{name} is {} bytes", image.len());
        assert!(image.len() > 1024, "{name} is suspiciously small");
    }
}

#[test]
fn linux64_is_an_elf64_without_pvh_note() {
    let info = elf(PROBE_LINUX64);
    assert!(info.is_64);
    assert_eq!(u16_at(PROBE_LINUX64, 0x12), 62, "e_machine x86-64");
    assert_eq!(info.pvh_entry, None);
    assert_loads_at_1_mib("linux64", &info, info.entry);
}

#[test]
fn pvh_has_a_xen_phys32_entry_note() {
    let info = elf(PROBE_PVH);
    assert!(info.is_64);
    let pvh_entry = u64::from(info.pvh_entry.expect("XEN_ELFNOTE_PHYS32_ENTRY note"));
    assert_loads_at_1_mib("pvh", &info, pvh_entry);
    assert_ne!(
        pvh_entry, info.entry,
        "the note and e_entry are different entries"
    );
    assert_loads_at_1_mib("pvh", &info, info.entry);
}

#[test]
fn multiboot_is_an_elf32_with_its_header_in_the_first_8_kib() {
    let info = elf(PROBE_MULTIBOOT);
    assert!(!info.is_64, "multiboot v1 image must be ELF32");
    assert_eq!(u16_at(PROBE_MULTIBOOT, 0x12), 3, "e_machine i386");
    assert_loads_at_1_mib("multiboot", &info, info.entry);
    let window = &PROBE_MULTIBOOT[..PROBE_MULTIBOOT.len().min(8192)];
    let offset = (0..window.len().saturating_sub(12))
        .step_by(4)
        .find(|&o| u32_at(window, o) == 0x1bad_b002)
        .expect("multiboot magic 4-byte aligned in the first 8 KiB");
    let flags = u32_at(window, offset + 4);
    let checksum = u32_at(window, offset + 8);
    assert_eq!(
        flags, 0x3,
        "page-aligned modules + memory info, no address fields"
    );
    assert_eq!(0x1bad_b002u32.wrapping_add(flags).wrapping_add(checksum), 0);
}

#[test]
fn bzimage_setup_header_follows_the_boot_protocol() {
    let b = PROBE_BZIMAGE;
    assert_eq!(u16_at(b, 0x1fe), 0xaa55, "boot_flag");
    assert_eq!(&b[0x202..0x206], b"HdrS");
    assert_eq!(u16_at(b, 0x206), 0x020f, "version");
    let setup_sects = usize::from(b[0x1f1]);
    assert!(setup_sects >= 1, "the header runs past the first sector");
    let payload = &b[(setup_sects + 1) * 512..];
    let syssize = u32_at(b, 0x1f4) as usize;
    assert!(syssize * 16 >= payload.len() && syssize * 16 < payload.len() + 16);
    assert_eq!(b[0x211] & 0x01, 0x01, "loadflags LOADED_HIGH");
    assert_eq!(
        u16_at(b, 0x236) & 0x0001,
        0x0001,
        "xloadflags XLF_KERNEL_64"
    );
    assert_eq!(u32_at(b, 0x214), LOAD_ADDRESS as u32, "code32_start");
    assert_eq!(u64_at(b, 0x258), LOAD_ADDRESS, "pref_address");
    let alignment = u32_at(b, 0x230);
    assert!(alignment.is_power_of_two() && LOAD_ADDRESS & (u64::from(alignment) - 1) == 0);
    assert!(u32_at(b, 0x238) >= 255, "cmdline_size");
    let init_size = u32_at(b, 0x260) as usize;
    assert!(init_size >= payload.len(), "init_size covers the payload");
    // The setup header ends where the jump at 0x200 lands.
    assert_eq!(b[0x200], 0xeb);
    assert!(
        0x202 + usize::from(b[0x201]) >= 0x26c,
        "header ends after 2.15 fields"
    );
    // The payload is the linked flat image, entry64 at offset 0x200 of it.
    let flat = std::fs::read(out_file("probe-bzimage-payload.bin")).expect("payload.bin");
    assert_eq!(payload, flat.as_slice());
    let entry = elf(&std::fs::read(out_file("probe-bzimage-payload.elf")).expect("elf")).entry;
    assert_eq!(entry, LOAD_ADDRESS + firmware::BZIMAGE_ENTRY64_OFFSET);
    assert!(payload
        .windows(PROBE_MARKER.len())
        .any(|w| w == PROBE_MARKER.as_bytes()));
}

#[test]
fn linux_loader_accepts_the_linux_and_pvh_images() {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("guest memory");
    let himem = Some(GuestAddress(LOAD_ADDRESS));

    let result = Elf::load(&mem, None, &mut std::io::Cursor::new(PROBE_LINUX64), himem)
        .expect("linux-loader loads the linux64 ELF");
    assert_eq!(result.kernel_load.0, elf(PROBE_LINUX64).entry);
    assert!(
        !matches!(result.pvh_boot_cap, PvhBootCapability::PvhEntryPresent(_)),
        "linux64 must not offer a PVH entry: {:?}",
        result.pvh_boot_cap
    );

    let result = Elf::load(&mem, None, &mut std::io::Cursor::new(PROBE_PVH), himem)
        .expect("linux-loader loads the PVH ELF");
    let note = u64::from(elf(PROBE_PVH).pvh_entry.expect("note"));
    assert_eq!(
        result.pvh_boot_cap,
        PvhBootCapability::PvhEntryPresent(GuestAddress(note))
    );

    let result = BzImage::load(&mem, None, &mut std::io::Cursor::new(PROBE_BZIMAGE), himem)
        .expect("linux-loader loads the bzImage");
    assert_eq!(result.kernel_load.0, LOAD_ADDRESS);
    let header = result.setup_header.expect("setup header");
    assert_eq!({ header.version }, 0x020f);
    assert_eq!({ header.boot_flag }, 0xaa55);
}

/// The ELF files as built, including the ELF64 multiboot link and the bzImage payload.
fn elf_files() -> Vec<PathBuf> {
    [
        "probe-linux64.elf",
        "probe-pvh.elf",
        "probe-multiboot.elf",
        "probe-multiboot64.elf",
        "probe-bzimage-payload.elf",
    ]
    .iter()
    .map(|n| out_file(n))
    .collect()
}

fn tool(program: &str, args: &[&str], file: &Path) -> String {
    let output = Command::new(program)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (binutils is required): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.trim().is_empty(), "{program} complained: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn readelf_reads_every_image_cleanly() {
    let files: Vec<PathBuf> = ["probe-linux64.elf", "probe-pvh.elf", "probe-multiboot.elf"]
        .iter()
        .map(|n| out_file(n))
        .collect();
    let [linux64, pvh, multiboot] = [&files[0], &files[1], &files[2]];
    let text = tool("readelf", &["-lhnS", "-W"], linux64);
    assert!(text.contains("ELF64") && !text.contains("NOTE"), "{text}");
    assert!(text.contains(".edgevisor_probe"), "{text}");
    let text = tool("readelf", &["-lhnS", "-W"], pvh);
    assert!(text.contains("NOTE") && text.contains("Xen"), "{text}");
    let text = tool("readelf", &["-lhnS", "-W"], multiboot);
    assert!(
        text.contains("ELF32") && text.contains("Intel 80386"),
        "{text}"
    );
    assert!(!text.contains("NOTE"), "{text}");
    for file in [linux64, pvh, multiboot] {
        let text = tool("readelf", &["-lW"], file);
        let loads: Vec<&str> = text.lines().filter(|l| l.contains("LOAD")).collect();
        assert!(!loads.is_empty());
        for load in loads {
            assert!(
                !load.contains("RWE"),
                "no writable+executable segment: {load}"
            );
        }
    }
}

/// Why a disassembled instruction cannot run on this host's KVM, if it cannot.
fn forbidden(line: &str) -> Option<&'static str> {
    let fields: Vec<&str> = line.split('\t').collect();
    let instruction = fields.get(2)?.trim();
    let mnemonic = instruction.split_whitespace().next()?;
    let registers = ["%xmm", "%ymm", "%zmm", "%mm", "%st", "%k0"];
    if registers.iter().any(|r| instruction.contains(r)) {
        return Some("SIMD/x87 register");
    }
    let banned = [
        "popcnt",
        "cmpxchg16b",
        "int3",
        "ldmxcsr",
        "stmxcsr",
        "emms",
        "(bad)",
        // What a C compiler may emit that the emulator does not know: CET markers,
        // rep-prefixed bit scans, SSE2 fences.
        "endbr64",
        "endbr32",
        "tzcnt",
        "lzcnt",
        "mfence",
        "lfence",
        "sfence",
    ];
    if banned.contains(&mnemonic) {
        return Some("banned instruction");
    }
    if ["xsave", "xrstor", "fxsave", "fxrstor"]
        .iter()
        .any(|p| mnemonic.starts_with(p))
    {
        return Some("state save/restore");
    }
    if mnemonic.starts_with('f') {
        return Some("x87");
    }
    if mnemonic.starts_with("rep") {
        return Some("rep string instruction");
    }
    None
}

#[test]
fn the_scan_recognises_forbidden_instructions() {
    let bad = [
        "  100000:\t66 0f ef c0          \tpxor   %xmm0,%xmm0",
        "  100000:\tf3 0f b8 c0          \tpopcnt %eax,%eax",
        "  100000:\tcc                   \tint3",
        "  100000:\t48 0f c7 0e          \tcmpxchg16b (%rsi)",
        "  100000:\t0f ae 2e             \txrstor (%rsi)",
        "  100000:\td9 e8                \tfld1",
        "  100000:\tf3 48 ab             \trep stos %rax,%es:(%rdi)",
        "  100000:\tf3 0f 1e fa          \tendbr64",
        "  100000:\tf3 0f bc c0          \ttzcnt  %eax,%eax",
        "  100000:\t0f ae f0             \tmfence",
        "  100000:\t0f 28 c1             \tmovaps %xmm1,%xmm0",
    ];
    for line in bad {
        assert!(forbidden(line).is_some(), "{line}");
    }
    assert_eq!(
        forbidden("  100000:\t0f 01 15 30 0c 10 00 \tlgdtl  0x100c30"),
        None
    );
    assert_eq!(forbidden("  100000:\t0f a2                \tcpuid"), None);
    assert_eq!(
        forbidden("  100000:\tf0 83 44 24 f8 00    \tlock addl $0x0,-0x8(%rsp)"),
        None
    );
}

#[test]
fn no_instruction_this_kvm_cannot_emulate() {
    for file in elf_files() {
        let mut seen = 0;
        let mut functions_seen: Vec<&str> = Vec::new();
        // Code sections: .head and .text hold 64-bit code, .text32 32-bit code.
        for (section, mode) in [
            (".head", "x86-64"),
            (".text", "x86-64"),
            (".text32", "i386"),
        ] {
            let headers = tool("objdump", &["-h"], &file);
            if !headers.contains(&format!(" {section} ")) {
                continue;
            }
            let text = tool("objdump", &["-d", "-j", section, "-M", mode], &file);
            functions_seen.extend(
                C_FUNCTIONS
                    .iter()
                    .copied()
                    .filter(|f| text.contains(&format!("<{f}>:"))),
            );
            for line in text.lines().filter(|l| l.split('\t').count() >= 3) {
                seen += 1;
                if let Some(reason) = forbidden(line) {
                    panic!("{}: {section}: {reason}: {line}", file.display());
                }
            }
        }
        assert!(
            seen > 1500,
            "{}: only {seen} instructions seen",
            file.display()
        );
        assert_eq!(
            functions_seen,
            C_FUNCTIONS,
            "{}: the scan must cover the C virtio driver",
            file.display()
        );
    }
}

/// Functions of the C virtio driver (src/virtio) the scan must see in each image.
const C_FUNCTIONS: [&str; 7] = [
    "memset",
    "virtio_checks",
    "virtio_rng_check",
    "virtio_blk_check",
    "virtio_net_check",
    "virtio_vsock_check",
    "vq_transact",
];
