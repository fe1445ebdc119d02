//! Builds the boot-probe images from the assembly in `src/asm` and the freestanding C of
//! the virtio driver in `src/virtio` with the system's GNU toolchain (`gcc` for the
//! preprocessor, assembler and C compiler, `ld`, `objcopy`).
//!
//! Outputs in `OUT_DIR`:
//! - `probe-linux64.elf`: ELF64, 64-bit Linux entry at `e_entry`.
//! - `probe-pvh.elf`: ELF64 with the Xen PHYS32_ENTRY note.
//! - `probe-multiboot.elf`: ELF32 (linked as ELF64, converted by objcopy).
//! - `probe-bzimage.bin`: boot sector + setup header + flat payload
//!   (`probe-bzimage-payload.elf` is kept for disassembly in tests).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Assembly sources, each compiled to `<name>.o`.
const SOURCES: &[&str] = &[
    "runtime",
    "checks",
    "entry_linux64",
    "entry_pvh",
    "entry_multiboot",
    "entry_bzimage",
];

/// C sources of the virtio driver in `src/virtio`, each compiled to `virtio_<name>.o`.
const C_SOURCES: &[&str] = &[
    "runtime",
    "transport",
    "rng_blk",
    "net",
    "net_mq",
    "vsock",
    "bench",
    "pci",
    "nvme",
];

/// Headers of the C sources.
const C_HEADERS: &[&str] = &["virtio.h"];

/// gcc flags for the freestanding C: 64-bit, no red zone, general-purpose registers only
/// (no SSE/x87/MMX), no inline `rep movs/stos` (the emulator subset of this host's KVM),
/// no endbr64, no stack protector, no PIC, linked at 1 MiB with the small code model.
const C_FLAGS: &[&str] = &[
    "-m64",
    "-std=gnu11",
    "-O2",
    "-ffreestanding",
    "-fno-builtin",
    "-nostdlib",
    "-nostdinc",
    "-fno-pic",
    "-fno-pie",
    "-mcmodel=small",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-mno-sse",
    "-mno-mmx",
    "-mno-80387",
    "-mstringop-strategy=libcall",
    "-fno-tree-loop-distribute-patterns",
    "-fno-stack-protector",
    "-fno-stack-clash-protection",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fno-jump-tables",
    "-fno-common",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-unused-parameter",
];

/// Files the sources include or the links read, besides the sources themselves.
const OTHER_INPUTS: &[&str] = &[
    "probe.h",
    "macros.h",
    "probe.ld",
    "bzimage.ld",
    "bzimage_setup.S",
];

/// Marks the lines of probe.ld that only the PVH image keeps.
const PVH_ONLY_MARK: &str = "/* pvh-only */";

/// One ELF image of the probe: which entry object, which entry symbol.
struct ElfImage {
    name: &'static str,
    entry_object: &'static str,
    entry_symbol: &'static str,
    has_pvh_note: bool,
}

const ELF_IMAGES: &[ElfImage] = &[
    ElfImage {
        name: "linux64",
        entry_object: "entry_linux64",
        entry_symbol: "linux64_entry",
        has_pvh_note: false,
    },
    ElfImage {
        name: "pvh",
        entry_object: "entry_pvh",
        entry_symbol: "pvh_image_linux64_entry",
        has_pvh_note: true,
    },
    ElfImage {
        name: "multiboot64",
        entry_object: "entry_multiboot",
        entry_symbol: "multiboot_entry32",
        has_pvh_note: false,
    },
    ElfImage {
        name: "bzimage-payload",
        entry_object: "entry_bzimage",
        entry_symbol: "bzimage_entry64",
        has_pvh_note: false,
    },
];

fn main() {
    if let Err(message) = build() {
        eprintln!("error: building the firmware probe failed: {message}");
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    let manifest_dir = env::var("CARGO_MANIFEST_DIR")
        .map_err(|_| "CARGO_MANIFEST_DIR is not set; run this through cargo".to_string())?;
    let out_dir = PathBuf::from(
        env::var("OUT_DIR").map_err(|_| "OUT_DIR is not set; run this through cargo")?,
    );
    let asm_dir = Path::new(&manifest_dir).join("src").join("asm");
    let c_dir = Path::new(&manifest_dir).join("src").join("virtio");

    println!("cargo:rerun-if-changed=build.rs");
    for source in SOURCES {
        println!(
            "cargo:rerun-if-changed={}",
            asm_dir.join(format!("{source}.S")).display()
        );
    }
    for other in OTHER_INPUTS {
        println!("cargo:rerun-if-changed={}", asm_dir.join(other).display());
    }

    for file in C_SOURCES
        .iter()
        .map(|s| format!("{s}.c"))
        .chain(C_HEADERS.iter().map(|h| h.to_string()))
    {
        println!("cargo:rerun-if-changed={}", c_dir.join(file).display());
    }

    for source in SOURCES {
        assemble(
            &asm_dir.join(format!("{source}.S")),
            &out_dir.join(format!("{source}.o")),
            &[&asm_dir],
        )?;
    }
    for source in C_SOURCES {
        compile_c(
            &c_dir.join(format!("{source}.c")),
            &out_dir.join(format!("virtio_{source}.o")),
        )?;
    }

    let template = fs::read_to_string(asm_dir.join("probe.ld"))
        .map_err(|e| format!("cannot read {}: {e}", asm_dir.join("probe.ld").display()))?;
    for image in ELF_IMAGES {
        link_elf(image, &template, &out_dir)?;
    }

    run(Command::new("objcopy").args([
        "-O".as_ref(),
        "elf32-i386".as_ref(),
        out_dir.join("probe-multiboot64.elf").as_os_str(),
        out_dir.join("probe-multiboot.elf").as_os_str(),
    ]))?;
    run(Command::new("objcopy").args([
        "-O".as_ref(),
        "binary".as_ref(),
        out_dir.join("probe-bzimage-payload.elf").as_os_str(),
        out_dir.join("probe-bzimage-payload.bin").as_os_str(),
    ]))?;

    // The setup header wraps the flat payload through `.incbin`, found via -I OUT_DIR.
    let setup_object = out_dir.join("bzimage_setup.o");
    assemble(
        &asm_dir.join("bzimage_setup.S"),
        &setup_object,
        &[&asm_dir, &out_dir],
    )?;
    run(Command::new("ld").args([
        "-m".as_ref(),
        "elf_x86_64".as_ref(),
        "-T".as_ref(),
        asm_dir.join("bzimage.ld").as_os_str(),
        "--oformat".as_ref(),
        "binary".as_ref(),
        "-o".as_ref(),
        out_dir.join("probe-bzimage.bin").as_os_str(),
        setup_object.as_os_str(),
    ]))?;
    Ok(())
}

/// `gcc -c` one `.S` file (C preprocessor, then GNU as); `include_dirs` serve both
/// `#include` and `.incbin`.
fn assemble(source: &Path, object: &Path, include_dirs: &[&Path]) -> Result<(), String> {
    let mut command = Command::new("gcc");
    command.args([
        "-c",
        "-nostdinc",
        "-Wa,--noexecstack",
        "-Wa,--fatal-warnings",
    ]);
    for dir in include_dirs {
        command.arg(format!("-I{}", dir.display()));
        command.arg(format!("-Wa,-I{}", dir.display()));
    }
    command.arg("-o").arg(object).arg(source);
    run(&mut command)
}

/// `gcc -c` one freestanding C file of the virtio driver with [`C_FLAGS`].
fn compile_c(source: &Path, object: &Path) -> Result<(), String> {
    let mut command = Command::new("gcc");
    command.arg("-c").args(C_FLAGS);
    if let Some(dir) = source.parent() {
        command.arg(format!("-I{}", dir.display()));
    }
    command.arg("-o").arg(object).arg(source);
    run(&mut command)
}

/// Link `runtime.o checks.o <entry>.o` and the virtio objects into `probe-<name>.elf` with a copy of
/// probe.ld that keeps the PVH note only where the image has one.
fn link_elf(image: &ElfImage, template: &str, out_dir: &Path) -> Result<(), String> {
    let script: String = template
        .lines()
        .filter(|line| image.has_pvh_note || !line.contains(PVH_ONLY_MARK))
        .map(|line| format!("{line}\n"))
        .collect();
    let script_path = out_dir.join(format!("probe-{}.ld", image.name));
    fs::write(&script_path, script)
        .map_err(|e| format!("cannot write {}: {e}", script_path.display()))?;

    let mut command = Command::new("ld");
    command
        .args(["-m", "elf_x86_64", "-nostdlib", "--build-id=none", "-n"])
        .args(["-z", "noexecstack", "-e", image.entry_symbol])
        .arg("-T")
        .arg(&script_path)
        .arg("-o")
        .arg(out_dir.join(format!("probe-{}.elf", image.name)));
    for object in ["runtime", "checks", image.entry_object] {
        command.arg(out_dir.join(format!("{object}.o")));
    }
    for source in C_SOURCES {
        command.arg(out_dir.join(format!("virtio_{source}.o")));
    }
    run(&mut command)
}

/// Run a tool; a missing tool or a non-zero exit becomes one sentence with its output.
fn run(command: &mut Command) -> Result<(), String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|e| {
        format!("cannot run `{program}` ({e}); install binutils and gcc (apt-get install build-essential)")
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{:?}` failed with {}:\n{}{}",
        command,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}
