//! The virtio-mmio transport, the block and rng devices and the chain checks, driven from a
//! simulated guest driver: registers written through the transport exactly as a guest's
//! MMIO accesses would be, rings and descriptors written into guest memory, and the real
//! event loop serving the kicks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::block::{Block, BlockConfig, BlockError, CacheMode};
use devices::virtio::event_loop::{DeviceSubscriber, EventLoop};
use devices::virtio::mmio::{status, MmioTransport};
use devices::virtio::rng::Rng;
use devices::virtio::{VirtioCounterSnapshot, VirtioDevice};
use devices::BusDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const QSIZE: u16 = 16;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
/// Data buffers live here.
const DATA: u64 = 0x10000;
/// Guest RAM: [0, 1 MiB) and [2 MiB, 3 MiB), with a hole between.
const REGION2: u64 = 0x20_0000;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

struct Driver {
    mem: GuestMemoryMmap,
    transport: MmioTransport,
    irq: EventFd,
    event_loop: Option<EventLoop>,
    avail_idx: u16,
    used_seen: u16,
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20), (GuestAddress(REGION2), 1 << 20)])
        .unwrap()
}

impl Driver {
    fn new(device: Arc<Mutex<dyn VirtioDevice>>) -> Driver {
        let mem = memory();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let transport = MmioTransport::new(device, mem.clone(), irq.try_clone().unwrap()).unwrap();
        let subscriber = DeviceSubscriber::new(&transport).unwrap();
        let event_loop = EventLoop::spawn(vec![subscriber], Box::new(|| Ok(()))).unwrap();
        Driver {
            mem,
            transport,
            irq,
            event_loop: Some(event_loop),
            avail_idx: 0,
            used_seen: 0,
        }
    }

    fn r(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    fn negotiate(&mut self, accept: u64) -> u32 {
        self.w(0x70, 0);
        self.w(0x70, status::ACKNOWLEDGE);
        self.w(0x70, status::ACKNOWLEDGE | status::DRIVER);
        self.w(0x24, 0);
        self.w(0x20, accept as u32);
        self.w(0x24, 1);
        self.w(0x20, (accept >> 32) as u32);
        self.w(
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.r(0x70)
    }

    fn offered(&mut self) -> u64 {
        self.w(0x14, 0);
        let lo = self.r(0x10) as u64;
        self.w(0x14, 1);
        lo | (self.r(0x10) as u64) << 32
    }

    fn setup_queue(&mut self, size: u32, desc: u64, avail: u64, used: u64) {
        self.w(0x30, 0);
        self.w(0x38, size);
        self.w(0x80, desc as u32);
        self.w(0x84, (desc >> 32) as u32);
        self.w(0x90, avail as u32);
        self.w(0x94, (avail >> 32) as u32);
        self.w(0xa0, used as u32);
        self.w(0xa4, (used >> 32) as u32);
        self.w(0x44, 1);
    }

    /// Full bring-up with a valid queue; returns the final status.
    fn start(&mut self) -> u32 {
        let offered = self.offered();
        let st = self.negotiate(offered & (1 << 32 | 1 << 9 | 1 << 5));
        assert_ne!(st & status::FEATURES_OK, 0, "features refused");
        self.setup_queue(QSIZE as u32, DESC, AVAIL, USED);
        self.w(0x70, st | status::DRIVER_OK);
        self.r(0x70)
    }

    fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC + 16 * index as u64);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).unwrap();
    }

    /// Makes `head` available and kicks queue 0 through the QueueNotify register.
    fn submit(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * (self.avail_idx % QSIZE) as u64;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        self.w(0x50, 0);
    }

    /// Waits for the next used element: (id, len).
    fn used(&mut self) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
            if idx != self.used_seen {
                let at = USED + 4 + 8 * (self.used_seen % QSIZE) as u64;
                self.used_seen = self.used_seen.wrapping_add(1);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                return (id, len);
            }
            assert!(Instant::now() < deadline, "the device never used the chain");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn counters(&self) -> VirtioCounterSnapshot {
        self.transport.counters().snapshot()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(mut l) = self.event_loop.take() {
            l.stop();
        }
    }
}

fn rng_driver() -> Driver {
    Driver::new(Arc::new(Mutex::new(Rng::new())))
}

#[test]
fn registers_identify_a_v2_device_and_refuse_wrong_sizes() {
    let mut d = rng_driver();
    assert_eq!(d.r(0x00), 0x7472_6976);
    assert_eq!(d.r(0x04), 2);
    assert_eq!(d.r(0x08), 4);
    d.w(0x30, 0);
    assert_eq!(d.r(0x34), 256);
    let mut two = [0u8; 2];
    d.transport.read(0x00, &mut two);
    assert_eq!(two, [0, 0]);
    d.transport.write(0x70, &[1]);
    assert_eq!(d.r(0x70), 0, "a 1-byte status write must be ignored");
    assert!(d.counters().transport_errors >= 2);
}

#[test]
fn features_without_version_1_are_refused() {
    let mut d = rng_driver();
    let st = d.negotiate(0);
    assert_eq!(st & status::FEATURES_OK, 0);
    let offered = d.offered();
    let st = d.negotiate(offered | 1 << 40);
    assert_eq!(st & status::FEATURES_OK, 0, "unoffered feature accepted");
    let st = d.negotiate(1 << 32);
    assert_ne!(st & status::FEATURES_OK, 0);
}

#[test]
fn rng_fills_the_buffer_and_interrupts() {
    let mut d = rng_driver();
    let st = d.start();
    assert_ne!(st & status::DRIVER_OK, 0);
    assert_eq!(st & status::DEVICE_NEEDS_RESET, 0);
    d.desc(0, DATA, 64, F_WRITE, 0);
    d.submit(0);
    assert_eq!(d.used(), (0, 64));
    let mut buf = [0u8; 64];
    d.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf.iter().any(|b| *b != 0));
    assert_eq!(d.irq.read().unwrap(), 1);
    assert_eq!(d.r(0x60) & 1, 1, "InterruptStatus used-ring bit");
    d.w(0x64, 1);
    assert_eq!(d.r(0x60), 0);
    let c = d.counters();
    assert_eq!((c.requests, c.rx_bytes, c.kicks), (1, 64, 1));
}

#[test]
fn queue_config_is_frozen_after_driver_ok() {
    let mut d = rng_driver();
    d.start();
    let errors = d.counters().transport_errors;
    d.w(0x30, 0);
    d.w(0x38, 2);
    d.w(0x80, 0x5000);
    assert_eq!(d.counters().transport_errors, errors + 2);
    // The queue still works at its old place.
    d.desc(0, DATA, 8, F_WRITE, 0);
    d.submit(0);
    assert_eq!(d.used(), (0, 8));
}

#[test]
fn invalid_queues_get_needs_reset_not_a_running_device() {
    for (size, desc, avail, used) in [
        (12, DESC, AVAIL, USED),                    // not a power of two
        (512, DESC, AVAIL, USED),                   // above the maximum
        (QSIZE as u32, DESC + 8, AVAIL, USED),      // descriptor table misaligned
        (QSIZE as u32, 0x10_0000 - 8, AVAIL, USED), // table runs into the hole
    ] {
        let mut d = rng_driver();
        let st = d.negotiate(1 << 32);
        d.setup_queue(size, desc, avail, used);
        d.w(0x70, st | status::DRIVER_OK);
        let st = d.r(0x70);
        assert_ne!(
            st & status::DEVICE_NEEDS_RESET,
            0,
            "size {size} desc {desc:#x} accepted"
        );
        // A reset brings it back.
        d.w(0x70, 0);
        assert_eq!(d.r(0x70), 0);
        let st = d.start();
        assert_eq!(st & status::DEVICE_NEEDS_RESET, 0);
    }
}

/// Writes one hostile chain at descriptor 0.
type ChainBuilder = Box<dyn Fn(&Driver)>;

#[test]
fn hostile_chains_are_returned_empty_and_the_queue_keeps_serving() {
    let mut d = rng_driver();
    d.start();
    let cases: Vec<(&str, ChainBuilder)> = vec![
        (
            "loop",
            Box::new(|d: &Driver| d.desc(0, DATA, 8, F_WRITE | F_NEXT, 0)),
        ),
        (
            "next out of range",
            Box::new(|d: &Driver| d.desc(0, DATA, 8, F_WRITE | F_NEXT, QSIZE + 3)),
        ),
        (
            "buffer into the hole",
            Box::new(|d: &Driver| d.desc(0, 0x10_0000 - 4, 8, F_WRITE, 0)),
        ),
        (
            "buffer across the address space end",
            Box::new(|d: &Driver| d.desc(0, u64::MAX - 2, 8, F_WRITE, 0)),
        ),
        (
            "buffer past the last region",
            Box::new(|d: &Driver| d.desc(0, REGION2 + (1 << 20) - 4, 8, F_WRITE, 0)),
        ),
        (
            "readable after writable",
            Box::new(|d: &Driver| {
                d.desc(0, DATA, 8, F_WRITE | F_NEXT, 1);
                d.desc(1, DATA + 8, 8, 0, 0);
            }),
        ),
        (
            "indirect",
            Box::new(|d: &Driver| d.desc(0, DATA, 32, F_INDIRECT, 0)),
        ),
        (
            "4 GiB chain",
            Box::new(|d: &Driver| {
                d.desc(0, DATA, u32::MAX, F_WRITE | F_NEXT, 1);
                d.desc(1, DATA, 8, F_WRITE, 0);
            }),
        ),
    ];
    for (n, (name, build)) in cases.iter().enumerate() {
        build(&d);
        d.submit(0);
        assert_eq!(d.used(), (0, 0), "{name}: not returned empty");
        assert_eq!(d.counters().malformed_chains, n as u64 + 1, "{name}");
        // The next good chain is served.
        d.desc(0, DATA, 16, F_WRITE, 0);
        d.submit(0);
        assert_eq!(d.used(), (0, 16), "{name}: queue stopped serving");
    }
}

#[test]
fn a_bad_head_index_is_counted_and_skipped() {
    let mut d = rng_driver();
    d.start();
    d.submit(QSIZE + 1);
    d.desc(0, DATA, 4, F_WRITE, 0);
    d.submit(0);
    assert_eq!(d.used(), (0, 4));
    assert_eq!(d.counters().malformed_chains, 1);
}

fn image(sectors: usize) -> (tempdir::Dir, std::path::PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.path.join("disk.img");
    let mut bytes = vec![0u8; sectors * 512];
    bytes[..12].copy_from_slice(b"sector-zero!");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

mod tempdir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }
    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "edgevisor-virtio-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn block_driver(path: &std::path::Path, readonly: bool, cache: CacheMode) -> Driver {
    let block = Block::new(BlockConfig {
        path: path.to_path_buf(),
        readonly,
        cache,
    })
    .unwrap();
    Driver::new(Arc::new(Mutex::new(block)))
}

/// Writes a request: header at DATA, data at DATA+0x100, status at DATA+0x80.
fn block_request(d: &Driver, kind: u32, sector: u64, data_len: u32, data_writable: bool) {
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&kind.to_le_bytes());
    header[8..16].copy_from_slice(&sector.to_le_bytes());
    d.mem.write_slice(&header, GuestAddress(DATA)).unwrap();
    d.mem.write_obj(0xffu8, GuestAddress(DATA + 0x80)).unwrap();
    if data_len == 0 {
        d.desc(0, DATA, 16, F_NEXT, 1);
        d.desc(1, DATA + 0x80, 1, F_WRITE, 0);
        return;
    }
    d.desc(0, DATA, 16, F_NEXT, 1);
    let flags = if data_writable { F_WRITE } else { 0 };
    d.desc(1, DATA + 0x100, data_len, flags | F_NEXT, 2);
    d.desc(2, DATA + 0x80, 1, F_WRITE, 0);
}

fn block_status(d: &Driver) -> u8 {
    d.mem.read_obj(GuestAddress(DATA + 0x80)).unwrap()
}

#[test]
fn block_reads_writes_and_flushes_reach_the_file() {
    let (_dir, path) = image(64);
    let mut d = block_driver(&path, false, CacheMode::Writeback);
    let offered = d.offered();
    assert_ne!(offered & (1 << 9), 0, "writeback must offer FLUSH");
    assert_eq!(offered & (1 << 5), 0);
    d.start();
    assert_eq!(
        d.r(0x100) as u64 | (d.r(0x104) as u64) << 32,
        64,
        "capacity"
    );

    block_request(&d, 0, 0, 512, true);
    d.submit(0);
    assert_eq!(d.used(), (0, 513));
    assert_eq!(block_status(&d), 0);
    let mut got = [0u8; 12];
    d.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x100))
        .unwrap();
    assert_eq!(&got, b"sector-zero!");

    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    d.mem
        .write_slice(&pattern, GuestAddress(DATA + 0x100))
        .unwrap();
    block_request(&d, 1, 3, 1024, false);
    d.submit(0);
    assert_eq!(d.used(), (0, 1));
    assert_eq!(block_status(&d), 0);
    block_request(&d, 4, 0, 0, false);
    d.submit(0);
    assert_eq!(d.used(), (0, 1));
    assert_eq!(block_status(&d), 0);
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[3 * 512..5 * 512], &pattern[..]);
    let c = d.counters();
    assert_eq!((c.flushes, c.write_bytes, c.read_bytes), (1, 1024, 512));
}

#[test]
fn block_refuses_out_of_range_partial_and_readonly_writes() {
    let (_dir, path) = image(8);
    let mut d = block_driver(&path, true, CacheMode::Unsafe);
    let offered = d.offered();
    assert_ne!(offered & (1 << 5), 0, "read-only must offer RO");
    assert_eq!(offered & (1 << 9), 0, "unsafe must not offer FLUSH");
    d.start();
    for (kind, sector, len, writable) in [
        (1u32, 0u64, 512u32, false),    // write on a read-only disk
        (0, 8, 512, true),              // past the end
        (0, 7, 1024, true),             // runs past the end
        (0, u64::MAX / 256, 512, true), // sector * 512 overflows
        (0, 0, 100, true),              // not whole sectors
    ] {
        block_request(&d, kind, sector, len, writable);
        d.submit(0);
        let (_, used) = d.used();
        assert_eq!(block_status(&d), 1, "kind {kind} sector {sector} len {len}");
        assert_eq!(used, 1);
    }
    block_request(&d, 77, 0, 0, false);
    d.submit(0);
    d.used();
    assert_eq!(block_status(&d), 2, "unknown request type must be UNSUPP");
    let before = std::fs::read(&path).unwrap();
    assert_eq!(&before[..12], b"sector-zero!");
    assert_eq!(d.counters().unsupported_requests, 1);
}

#[test]
fn a_writable_image_is_locked_against_a_second_vm() {
    let (_dir, path) = image(8);
    let config = BlockConfig {
        path: path.clone(),
        readonly: false,
        cache: CacheMode::Writeback,
    };
    let first = Block::new(config.clone()).unwrap();
    match Block::new(config.clone()) {
        Err(BlockError::Locked { path: p }) => assert_eq!(p, path),
        other => panic!("second open: {:?}", other.err()),
    }
    let ro = BlockConfig {
        readonly: true,
        ..config.clone()
    };
    assert!(matches!(
        Block::new(ro.clone()),
        Err(BlockError::Locked { .. })
    ));
    drop(first);
    let a = Block::new(ro.clone()).unwrap();
    let b = Block::new(ro).unwrap();
    assert_eq!(a.capacity_sectors(), b.capacity_sectors());
    let e = Block::new(BlockConfig {
        path: path.with_file_name("missing.img"),
        ..config
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("missing.img"), "{e}");
}

#[test]
fn with_event_idx_the_device_publishes_avail_event_after_each_drain() {
    let mut d = rng_driver();
    let offered = d.offered();
    assert_ne!(offered & (1 << 29), 0, "EVENT_IDX offered");
    let st = d.negotiate(1 << 32 | 1 << 29);
    d.setup_queue(QSIZE as u32, DESC, AVAIL, USED);
    d.w(0x70, st | status::DRIVER_OK);
    // avail_event sits after the used ring's elements.
    let avail_event = GuestAddress(USED + 4 + 8 * QSIZE as u64);
    for round in 1..=3u16 {
        d.desc(0, DATA, 8, F_WRITE, 0);
        d.submit(0);
        assert_eq!(d.used(), (0, 8));
        // A driver only kicks again once its new avail index passes avail_event: the device
        // must have moved it to the index it will look at next.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let event: u16 = d.mem.read_obj(avail_event).unwrap();
            if event == round {
                break;
            }
            assert!(Instant::now() < deadline, "avail_event stuck at {event}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Activates an rng device on one queue (size QSIZE, descriptor table at DESC, used ring at
/// USED, available ring at `avail`, `ready` as given) whose available index reads
/// `avail_idx`, kicks it on another thread and says whether the kick returned within 5 s.
/// A queue that can yield nothing must end the drain, not spin on the event-loop thread.
fn rng_kick_returns(ready: bool, avail: u64, avail_idx: u16) -> bool {
    use virtio_queue::{Queue, QueueT};

    let mem = memory();
    mem.write_obj(avail_idx, GuestAddress(avail + 2)).unwrap();
    let mut queue = Queue::new(QSIZE).unwrap();
    queue.set_desc_table_address(Some(DESC as u32), Some(0));
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_ready(ready);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rng = Rng::new();
        let interrupt = Arc::new(devices::virtio::Interrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            rng.counters(),
        ));
        rng.activate(devices::virtio::Activation {
            mem,
            queues: vec![queue],
            acked_features: rng.offered_features(),
            interrupt,
            queue_events: Vec::new(),
        })
        .unwrap();
        rng.queue_notified(0);
        let _ = done_tx.send(());
    });
    done_rx.recv_timeout(Duration::from_secs(5)).is_ok()
}

#[test]
fn an_avail_index_more_than_a_ring_ahead_stops_the_queue_instead_of_spinning() {
    // Found by the virtio_queue fuzz target: virtio-queue refuses to pop from such a ring,
    // but re-enabling notifications saw "more chains" every time, so the drain never ended.
    assert!(
        rng_kick_returns(true, AVAIL, QSIZE + 1),
        "the kick never returned"
    );
    assert!(
        rng_kick_returns(true, AVAIL, 0x8000),
        "the kick never returned"
    );
}

#[test]
fn a_kick_on_a_queue_that_cannot_pop_returns() {
    // A queue the driver never made ready, and one whose available ring sits at guest
    // address 0 (which virtio-queue treats as not configured): pop yields nothing.
    assert!(rng_kick_returns(false, AVAIL, 1), "the kick never returned");
    assert!(rng_kick_returns(true, 0, 1), "the kick never returned");
}

#[test]
fn driver_ok_written_with_refused_features_does_not_stick() {
    // Found by the virtio_mmio fuzz target: with unacceptable features, FEATURES_OK was
    // dropped from a status write but DRIVER_OK kept, so the register showed a live device
    // (DRIVER_OK without FEATURES_OK) that was never activated.
    let mut d = rng_driver();
    let base = status::ACKNOWLEDGE | status::DRIVER;
    d.w(0x70, status::ACKNOWLEDGE);
    d.w(0x70, base);
    d.w(0x24, 1);
    d.w(0x20, 0); // VERSION_1 not accepted: FEATURES_OK must be refused.
    d.w(0x70, base | status::FEATURES_OK | status::DRIVER_OK);
    let st = d.r(0x70);
    assert_eq!(
        st & (status::FEATURES_OK | status::DRIVER_OK),
        0,
        "status {st:#x}"
    );
    assert!(!d
        .transport
        .active_flag()
        .load(std::sync::atomic::Ordering::SeqCst));
}

#[test]
fn get_id_into_a_short_buffer_never_reports_more_than_the_buffer() {
    // Found by the virtio_block fuzz target: with fewer than 21 writable bytes, the id was
    // written over the status byte and the used length claimed one byte more than the
    // driver supplied.
    let (_dir, path) = image(8);
    let mut d = block_driver(&path, false, CacheMode::Writeback);
    d.start();
    let id: Vec<u8> = b"disk.img".to_vec();
    for writable in [1u32, 2, 5, 9, 20, 21, 32] {
        d.mem
            .write_slice(&[0xeeu8; 32], GuestAddress(DATA + 0x100))
            .unwrap();
        block_request(&d, 8, 0, 0, false);
        // One writable buffer: id bytes, then the status as its last byte.
        d.desc(1, DATA + 0x100, writable, F_WRITE, 0);
        d.submit(0);
        let room = (writable as usize - 1).min(20);
        assert_eq!(d.used(), (0, room as u32 + 1), "{writable} writable bytes");
        let mut got = vec![0u8; writable as usize];
        d.mem
            .read_slice(&mut got, GuestAddress(DATA + 0x100))
            .unwrap();
        assert_eq!(got[writable as usize - 1], 0, "status of {writable}");
        let mut want = id.clone();
        want.resize(20, 0);
        assert_eq!(&got[..room], &want[..room], "id in {writable} bytes");
    }
}

#[test]
fn a_driver_cannot_set_needs_reset_or_bits_above_the_status_byte() {
    // Found by the virtio_mmio fuzz target: a running device took the status write
    // 0x95ffcfff as it was, so the register showed DEVICE_NEEDS_RESET (and bits the status
    // byte does not have) on a device that kept running. DEVICE_NEEDS_RESET is the device's to
    // set, and the status is one byte, as the spec and QEMU have it.
    let mut d = rng_driver();
    let st = d.start();
    assert_ne!(st & status::DRIVER_OK, 0, "status {st:#x}");
    d.w(0x70, 0x95ff_cf00 | st | status::DEVICE_NEEDS_RESET);
    let after = d.r(0x70);
    assert_eq!(after, st, "status {after:#x}");
    assert!(d
        .transport
        .active_flag()
        .load(std::sync::atomic::Ordering::SeqCst));
    // The device still serves its queue.
    d.desc(0, 0x4000, 16, 2, 0);
    d.submit(0);
    assert_eq!(d.used(), (0, 16));
    // A device that set DEVICE_NEEDS_RESET itself keeps it until the reset, and takes no
    // other status write: no FEATURES_OK or DRIVER_OK brings it up (the fuzzer's second find:
    // DRIVER_OK before FEATURES_OK set it, then 0x4b and 0x4f started the device).
    let mut d = rng_driver();
    let offered = d.offered();
    let base = status::ACKNOWLEDGE | status::DRIVER;
    d.w(0x70, 0);
    d.w(0x70, status::ACKNOWLEDGE);
    d.w(0x70, base);
    d.w(0x24, 1);
    d.w(0x20, (offered >> 32) as u32);
    d.w(0x70, base | status::DRIVER_OK); // before FEATURES_OK
    let refused = d.r(0x70);
    assert_eq!(
        refused,
        base | status::DEVICE_NEEDS_RESET,
        "status {refused:#x}"
    );
    d.setup_queue(QSIZE as u32, DESC, AVAIL, USED);
    for write in [
        base | status::FEATURES_OK,
        base | status::FEATURES_OK | status::DEVICE_NEEDS_RESET,
        base | status::FEATURES_OK | status::DRIVER_OK | status::DEVICE_NEEDS_RESET,
    ] {
        d.w(0x70, write);
        assert_eq!(d.r(0x70), refused, "after {write:#x}");
    }
    assert!(!d
        .transport
        .active_flag()
        .load(std::sync::atomic::Ordering::SeqCst));
    d.w(0x70, 0);
    assert_eq!(d.r(0x70), 0);
}
