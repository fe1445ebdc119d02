//! The virtio-mmio register file under arbitrary driver behaviour: reads and writes of any
//! width at any offset (registers and configuration space), whole bring-ups with
//! input-chosen features and queue addresses, guest-memory writes (descriptors, rings) and
//! queue notifies served by the real event-loop subscriber. The device behind the real
//! `MmioTransport` is virtio-rng or virtio-blk (on an image file), as the input picks.
//! Oracle: no panic, no access outside guest memory, and the status state machine holds:
//! DRIVER_OK is only ever shown together with FEATURES_OK, and an active device shows both
//! and no DEVICE_NEEDS_RESET.
#![no_main]

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use devices::virtio::block::{Block, BlockConfig, CacheMode};
use devices::virtio::event_loop::DeviceSubscriber;
use devices::virtio::mmio::{status, MmioTransport, QUEUE_NOTIFY_OFFSET};
use devices::virtio::rng::Rng;
use devices::virtio::VirtioDevice;
use devices::BusDevice;
use devices_fuzz::{Input, MemLayout, RingSpec};
use event_manager::{EventManager, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// Driver operations per input at most.
const MAX_OPS: usize = 256;
const WIDTHS: [usize; 8] = [4, 4, 4, 4, 1, 2, 8, 3];

/// The image the block variant opens afresh for each input (an unlinked file).
fn image() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!("edgevisor-fuzz-{}-mmio.img", std::process::id()));
        let file = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        file.set_len(16 << 10).expect("sizing the fuzz image");
        // Nothing left behind when the fuzzer ends: the name goes now, and each input
        // reopens the file through this process's descriptor, which stays open.
        let _ = std::fs::remove_file(&path);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        std::mem::forget(file);
        PathBuf::from(format!("/proc/self/fd/{fd}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let use_block = input.u8() & 1 != 0;
    let layout = MemLayout::from_input(&mut input);
    let mem = layout.build();
    let device: Arc<Mutex<dyn VirtioDevice>> = if use_block {
        let block = Block::new(BlockConfig {
            path: image().clone(),
            readonly: false,
            cache: CacheMode::Unsafe,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Arc::new(Mutex::new(block))
    } else {
        Arc::new(Mutex::new(Rng::new()))
    };
    let max = device.lock().unwrap().queue_max_sizes()[0];
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let mut transport = MmioTransport::new(device, mem.clone(), irq).expect("transport");
    let mut manager = EventManager::<DeviceSubscriber>::new().expect("event manager");
    manager.add_subscriber(DeviceSubscriber::new(&transport).expect("subscriber"));
    let active = transport.active_flag();
    let mut spec: Option<RingSpec> = None;

    for _ in 0..MAX_OPS {
        if input.remaining() == 0 {
            break;
        }
        match input.u8() % 8 {
            0 => {
                // A read of any width anywhere in the window.
                let offset = u64::from(input.u16() % 0x200);
                let mut buf = [0u8; 8];
                let width = WIDTHS[usize::from(input.u8() % 8)];
                transport.read(offset, &mut buf[..width]);
                if offset == 0 && width == 4 {
                    assert_eq!(
                        u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]),
                        0x7472_6976
                    );
                }
            }
            1 => {
                // A write of any width anywhere in the window.
                let offset = u64::from(input.u16() % 0x200);
                let width = WIDTHS[usize::from(input.u8() % 8)];
                let value = input.u64().to_le_bytes();
                transport.write(offset, &value[..width]);
            }
            2 => {
                // An aligned 32-bit register write: the common case, cheaper to find.
                let offset = u64::from(input.u8()) * 4;
                transport.write(offset, &input.u32().to_le_bytes());
            }
            3 => {
                // The guest writes its RAM (anything: buffers, rings, descriptors).
                let (base, size) = layout.regions[usize::from(input.u8()) % layout.regions.len()];
                let at = base + u64::from(input.u32()) % size as u64;
                let n = usize::from(input.u8() % 64);
                let bytes = input.bytes(n);
                let _ = mem.write_slice(bytes, GuestAddress(at));
            }
            4 => {
                // A whole bring-up through the registers, as a Linux driver does it.
                let s = RingSpec::from_input(&mut input, &layout, max);
                let mask = input.u64();
                bring_up(&mut transport, &s, mask, input.u8());
                spec = Some(s);
            }
            5 => {
                // Descriptors and available entries for the queue set up last.
                if let Some(s) = &spec {
                    s.fill(&mem, &layout, &mut input);
                }
            }
            6 => {
                // QueueNotify (the VMM would route it to the ioeventfd), then the event loop.
                let queue = u32::from(input.u8() % 3);
                transport.write(QUEUE_NOTIFY_OFFSET, &queue.to_le_bytes());
                manager.run_with_timeout(0).expect("event loop");
            }
            _ => {
                manager.run_with_timeout(0).expect("event loop");
            }
        }
        let st = transport.status();
        assert!(
            st & status::DRIVER_OK == 0 || st & status::FEATURES_OK != 0,
            "status {st:#x} shows DRIVER_OK without FEATURES_OK"
        );
        if active.load(Ordering::SeqCst) {
            assert_eq!(
                st & (status::DRIVER_OK | status::FEATURES_OK | status::DEVICE_NEEDS_RESET),
                status::DRIVER_OK | status::FEATURES_OK,
                "active device with status {st:#x}"
            );
        }
    }
    // Reset: the device drops its queues (and the block image its lock) before `mem` goes.
    transport.write(0x70, &0u32.to_le_bytes());
    assert!(!active.load(Ordering::SeqCst));
});

/// Status ACKNOWLEDGE, DRIVER, the offered features masked by `mask`, FEATURES_OK, queue 0
/// as `spec` says, DRIVER_OK. `quirks` lets a step be skipped or merged with the next.
fn bring_up(t: &mut MmioTransport, spec: &RingSpec, mask: u64, quirks: u8) {
    let w = |t: &mut MmioTransport, offset: u64, value: u32| t.write(offset, &value.to_le_bytes());
    let r = |t: &mut MmioTransport, offset: u64| {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    };
    if quirks & 1 == 0 {
        w(t, 0x70, 0);
    }
    w(t, 0x70, status::ACKNOWLEDGE);
    w(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    w(t, 0x14, 0);
    let lo = u64::from(r(t, 0x10));
    w(t, 0x14, 1);
    let offered = lo | u64::from(r(t, 0x10)) << 32;
    let accept = if quirks & 2 == 0 {
        offered & mask
    } else {
        mask
    };
    w(t, 0x24, 0);
    w(t, 0x20, accept as u32);
    w(t, 0x24, 1);
    w(t, 0x20, (accept >> 32) as u32);
    let base = status::ACKNOWLEDGE | status::DRIVER;
    if quirks & 4 != 0 {
        // FEATURES_OK and DRIVER_OK in one write.
        w(t, 0x70, base | status::FEATURES_OK | status::DRIVER_OK);
    } else {
        w(t, 0x70, base | status::FEATURES_OK);
    }
    w(t, 0x30, u32::from(quirks >> 4 & 1));
    w(t, 0x38, u32::from(spec.size));
    for (offset, addr) in [(0x80, spec.desc), (0x90, spec.avail), (0xa0, spec.used)] {
        w(t, offset, addr as u32);
        w(t, offset + 4, (addr >> 32) as u32);
    }
    w(t, 0x44, u32::from(spec.ready));
    if quirks & 8 == 0 {
        let st = r(t, 0x70);
        w(t, 0x70, st | status::DRIVER_OK);
    }
}
