//! Real kernels, when the machine has them: every /boot/vmlinuz-*, plus the paths listed in
//! EDGEVISOR_TEST_KERNELS (colon separated; e.g. a vmlinux extracted from a bzImage).
//! Skips (with a note on stderr) when there are none.

use std::path::PathBuf;

use images::{BootProtocol, ImageFormat, ImageKind, KernelImage};

fn kernels() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("vmlinuz-"))
                })
                .collect()
        })
        .unwrap_or_default();
    if let Ok(extra) = std::env::var("EDGEVISOR_TEST_KERNELS") {
        paths.extend(
            extra
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        );
    }
    paths
}

#[test]
fn real_kernels_parse_and_plan() {
    let paths = kernels();
    if paths.is_empty() {
        eprintln!("no /boot/vmlinuz-* and no EDGEVISOR_TEST_KERNELS: skipping");
        return;
    }
    for path in paths {
        let img = match KernelImage::from_file(&path) {
            Ok(img) => img,
            // An unreadable /boot entry is the machine's business, not a parser failure.
            Err(e @ images::ImageError::Unreadable { .. }) => {
                eprintln!("skipping {}: {e}", path.display());
                continue;
            }
            Err(e) => panic!("{}: {e}", path.display()),
        };
        eprintln!(
            "{}: {} {} {:?}",
            path.display(),
            img.format(),
            img.kind(),
            img.protocols()
        );
        assert_eq!(img.kind(), ImageKind::Linux, "{}", path.display());
        assert!(img.protocols().contains(&BootProtocol::Linux64));
        for &p in img.protocols() {
            let plan = img.plan(p).unwrap();
            for s in &plan.segments {
                assert_eq!(img.segment_data(s).len(), s.file_size);
                assert!(s.guest_addr >= 0x10_0000 && s.guest_addr + s.mem_size <= plan.kernel_end);
            }
            eprintln!(
                "  {p}: entry {:#x}, {} segment(s), kernel_end {:#x}",
                plan.entry,
                plan.segments.len(),
                plan.kernel_end
            );
        }
        if img.format() == ImageFormat::BzImage {
            let plan = img.plan(BootProtocol::Linux64).unwrap();
            let setup = plan.setup.unwrap();
            assert!(setup.version >= 0x020C, "{:#x}", setup.version);
            assert_eq!(plan.entry, 0x10_0200);
            assert_eq!(plan.segments.len(), 1);
            let payload_start = plan.segments[0].file_offset;
            assert_eq!(payload_start % 512, 0);
            assert_eq!(
                payload_start + plan.segments[0].file_size,
                img.bytes().len()
            );
            assert!(plan.segments[0].mem_size >= u64::from(setup.init_size));
            assert_eq!(plan.setup_header.as_deref(), img.bytes().get(0x1F1..0x26C));
        }
    }
}
