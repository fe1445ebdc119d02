//! Any bytes: parsing never panics, and every offered protocol's plan stays inside the file.
#![no_main]

use images::{BootProtocol, KernelImage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(image) = KernelImage::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = (image.format(), image.kind(), image.multiboot_header());
    assert_eq!(image.default_protocol(), image.protocols()[0]);
    for protocol in BootProtocol::ALL {
        let offered = image.protocols().contains(&protocol);
        match image.plan(protocol) {
            Ok(plan) => {
                assert!(offered);
                for s in &plan.segments {
                    assert_eq!(image.segment_data(s).len(), s.file_size);
                    assert!(s.mem_size >= s.file_size as u64);
                    assert!(s.guest_addr + s.mem_size <= plan.kernel_end);
                }
                assert!(plan
                    .segments
                    .iter()
                    .any(|s| plan.entry >= s.guest_addr && plan.entry - s.guest_addr < s.mem_size));
            }
            Err(e) => {
                assert!(!offered);
                let _ = e.to_string();
            }
        }
    }
});
