//! edgevisor's own tiny guests: a boot probe, built from the x86 assembly in `src/asm`
//! by `build.rs` (gcc, ld, objcopy), in four images, one per entry path.
//!
//! Every image loads at 1 MiB ([`LOAD_ADDRESS`]), runs one shared 64-bit body, checks
//! what the VMM handed it (magic, CPU mode, command line, memory map, initrd, CPUID,
//! RTC) and prints one `probe: ` line per check on COM1, then
//! `PROBE PASS protocol=<name>` or `PROBE FAIL protocol=<name> check=<check> <detail>`.
//! After PASS it ends the VM as `probe.exit=` on its command line asks (`poweroff` by
//! default, `reset`, `panic`, `debug=N`, `triple`, `hang`); after FAIL it writes 1 to
//! isa-debug-exit. docs/GUEST_INTERFACE.md is the contract.
//!
//! The code uses only integer instructions that KVM's instruction emulator handles.

/// ELF64 "vmlinux"-style image: 64-bit Linux entry at `e_entry`, no PVH note.
/// Boots as protocol `linux64` (long mode, RSI = zero page).
pub const PROBE_LINUX64: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe-linux64.elf"));

/// ELF64 image with a Xen ELF note `XEN_ELFNOTE_PHYS32_ENTRY` (type 18, name "Xen")
/// giving a 32-bit entry: protocol `pvh` (protected mode, EBX = `hvm_start_info`).
/// Like a Linux vmlinux, its `e_entry` is a 64-bit Linux entry, which reports
/// `linux64`: a loader that ignores the note shows up as the wrong protocol.
pub const PROBE_PVH: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe-pvh.elf"));

/// ELF32 image with a multiboot v1 header (magic 0x1BADB002, flags 0x3, no address
/// fields) in its first 8 KiB; `e_entry` is the 32-bit multiboot entry.
pub const PROBE_MULTIBOOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe-multiboot.elf"));

/// Linux bzImage (boot protocol 2.15, `XLF_KERNEL_64`): boot sector and setup header,
/// then a flat protected-mode payload for [`LOAD_ADDRESS`] whose 64-bit entry is at
/// payload offset [`BZIMAGE_ENTRY64_OFFSET`]; protocol `bzimage`.
pub const PROBE_BZIMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe-bzimage.bin"));

/// ASCII marker present in every probe image (section `.edgevisor_probe` in the ELF
/// images, inside the payload of the bzImage).
pub const PROBE_MARKER: &str = "edgevisor-probe";

/// Physical address every image is linked to load at.
pub const LOAD_ADDRESS: u64 = 0x10_0000;

/// Offset of the 64-bit entry in the bzImage's protected-mode payload.
pub const BZIMAGE_ENTRY64_OFFSET: u64 = 0x200;

static ALL: [(&str, &[u8]); 4] = [
    ("linux64", PROBE_LINUX64),
    ("pvh", PROBE_PVH),
    ("multiboot", PROBE_MULTIBOOT),
    ("bzimage", PROBE_BZIMAGE),
];

/// Every probe image with the protocol name it reports in its `PROBE PASS` line.
pub fn all() -> &'static [(&'static str, &'static [u8])] {
    &ALL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_image_carries_the_marker() {
        for (name, image) in all() {
            let found = image
                .windows(PROBE_MARKER.len())
                .any(|w| w == PROBE_MARKER.as_bytes());
            assert!(found, "{name} lacks the {PROBE_MARKER} marker");
        }
    }

    #[test]
    fn all_lists_each_image_once_by_protocol() {
        let names: Vec<&str> = all().iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["linux64", "pvh", "multiboot", "bzimage"]);
        let images: Vec<&[u8]> = all().iter().map(|(_, image)| *image).collect();
        assert_eq!(
            images,
            [PROBE_LINUX64, PROBE_PVH, PROBE_MULTIBOOT, PROBE_BZIMAGE]
        );
        for (i, a) in images.iter().enumerate() {
            for b in &images[i + 1..] {
                assert_ne!(a, b, "two protocols share one image");
            }
        }
    }
}
