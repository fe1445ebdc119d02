//! Reading kernels and initrds from files: the errors name the file.

mod common;

use std::path::Path;

use common::*;
use images::{read_initrd, BootProtocol, ImageError, KernelImage};

#[test]
fn kernel_from_file() {
    let dir = Scratch::new("kernel");
    let bytes = ElfSpec::elf64().pvh_note(0x20_0000).bytes();
    let path = dir.file("vmlinux", &bytes);
    let img = KernelImage::from_file(&path).unwrap();
    assert_eq!(img.bytes(), &bytes[..]);
    assert_eq!(img.default_protocol(), BootProtocol::Pvh);
}

#[test]
fn missing_kernel() {
    let path = Path::new("/nonexistent/edgevisor/vmlinux");
    let e = KernelImage::from_file(path).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::NotFound {
                what: "kernel image",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("/nonexistent/edgevisor/vmlinux"),
        "{e}"
    );
}

#[test]
fn empty_kernel_and_directory() {
    let dir = Scratch::new("empty");
    let path = dir.file("empty", b"");
    let e = KernelImage::from_file(&path).unwrap_err();
    assert!(matches!(e, ImageError::EmptyFile { .. }), "{e}");
    assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
    let e = KernelImage::from_file(&dir.0).unwrap_err();
    assert!(matches!(e, ImageError::Unreadable { .. }), "{e}");
    assert!(matches!(
        KernelImage::from_bytes(Vec::new()),
        Err(ImageError::EmptyImage)
    ));
}

#[test]
fn content_errors_carry_the_path() {
    let dir = Scratch::new("content");
    let path = dir.file("notes.txt", b"just some text, not a kernel at all");
    let e = KernelImage::from_file(&path).unwrap_err();
    assert!(
        matches!(&e, ImageError::NotAKernelImage { path: p } if *p == path),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
    assert!(
        msg.contains("is not a kernel image edgevisor can boot: expected an ELF vmlinux, a bzImage or a multiboot ELF32"),
        "{msg}"
    );

    let mut spec = ElfSpec::elf32_multiboot();
    spec.early.clear();
    let path = dir.file("plain32.elf", &spec.bytes());
    let e = KernelImage::from_file(&path).unwrap_err();
    assert!(matches!(e.root(), ImageError::NoMultibootHeader), "{e}");
    assert!(e.to_string().contains("plain32.elf"), "{e}");
}

#[test]
fn initrd_files() {
    let dir = Scratch::new("initrd");
    let data = pattern(5000, 3);
    assert_eq!(read_initrd(&dir.file("initrd.cpio", &data)).unwrap(), data);

    let e = read_initrd(&dir.0.join("missing.cpio")).unwrap_err();
    assert!(
        matches!(e, ImageError::NotFound { what: "initrd", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("missing.cpio"), "{e}");

    let e = read_initrd(&dir.file("empty.cpio", b"")).unwrap_err();
    assert!(
        matches!(e, ImageError::EmptyFile { what: "initrd", .. }),
        "{e}"
    );

    let e = read_initrd(&dir.0).unwrap_err();
    assert!(
        matches!(e, ImageError::Unreadable { what: "initrd", .. }),
        "{e}"
    );
}
