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
//! Between the RTC check and PASS, a small virtio-mmio driver (freestanding C in
//! `src/virtio`) drives every device a `virtio_mmio.device=` token announces: rng, blk,
//! net (with `probe.net=on`) and vsock (with `probe.vsock=PORT`), one `probe: virtio-<type>`
//! line each (docs/GUEST_INTERFACE.md, "The probe's virtio checks"). The constants and
//! helpers below let a host-side test predict what the probe sends, writes and prints.
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

/// Guest RAM the virtio driver owns for virtqueues and buffers (512 KiB per device).
pub const VIRTIO_SCRATCH: std::ops::Range<u64> = 0x40_0000..0x80_0000;

/// Most `virtio_mmio.device=` tokens the probe accepts.
pub const VIRTIO_MAX_DEVICES: usize = 8;

/// Sector the block check writes (and reads back) unless the disk is read-only.
pub const BLOCK_CHECK_SECTOR: u64 = 1;

/// Text at the start of the sector the block check writes.
pub const BLOCK_PATTERN_TEXT: &[u8] = b"edgevisor-probe-block";

/// Ethertype of the frame the net check sends and of the frames it waits for.
pub const NET_ETHERTYPE: u16 = 0x88b5;

/// Payload of the frame the net check sends.
pub const NET_TX_PAYLOAD: &[u8] = b"edgevisor-probe-net-tx";

/// Source MAC of the net check's frame when the device offers no VIRTIO_NET_F_MAC.
pub const NET_FALLBACK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// What the vsock check sends once connected; the host answers one line.
pub const VSOCK_MESSAGE: &[u8] = b"edgevisor-probe-vsock\n";

/// The guest-side port of the vsock check's connection.
pub const VSOCK_GUEST_PORT: u32 = 49152;

/// The 512 bytes the block check writes to [`BLOCK_CHECK_SECTOR`]:
/// [`BLOCK_PATTERN_TEXT`], then byte i = i & 0xff.
pub fn block_check_pattern() -> [u8; 512] {
    let mut sector = [0u8; 512];
    for (i, byte) in sector.iter_mut().enumerate() {
        *byte = (i & 0xff) as u8;
    }
    sector[..BLOCK_PATTERN_TEXT.len()].copy_from_slice(BLOCK_PATTERN_TEXT);
    sector
}

/// The Ethernet frame (without the virtio-net header) the net check sends from `mac`:
/// broadcast destination, [`NET_ETHERTYPE`], [`NET_TX_PAYLOAD`], no padding.
pub fn net_tx_frame(mac: [u8; 6]) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend(mac);
    frame.extend(NET_ETHERTYPE.to_be_bytes());
    frame.extend(NET_TX_PAYLOAD);
    frame
}

/// FNV-1a, 64 bits: what the probe prints for block sector 0 (`read0_fnv1a64=`) and for
/// a received frame (`fnv1a64=`, over the frame without the virtio-net header).
pub fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

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

    fn contains(image: &[u8], needle: &[u8]) -> bool {
        image.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn the_virtio_constants_are_the_ones_in_the_images() {
        for (name, image) in all() {
            for needle in [BLOCK_PATTERN_TEXT, NET_TX_PAYLOAD, VSOCK_MESSAGE] {
                assert!(
                    contains(image, needle),
                    "{name} lacks {:?}",
                    String::from_utf8_lossy(needle)
                );
            }
        }
    }

    #[test]
    fn block_pattern_and_net_frame_layout() {
        let sector = block_check_pattern();
        assert_eq!(&sector[..21], b"edgevisor-probe-block");
        assert_eq!(sector[21], 21);
        assert_eq!(sector[300], 44, "300 & 0xff");
        assert_eq!(sector[511], 255);
        let frame = net_tx_frame([1, 2, 3, 4, 5, 6]);
        assert_eq!(frame.len(), 14 + 22);
        assert_eq!(
            &frame[..12],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6]
        );
        assert_eq!(&frame[12..14], &[0x88, 0xb5]);
    }

    #[test]
    fn fnv1a64_matches_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
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
