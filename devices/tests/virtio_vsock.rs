//! virtio-vsock with Firecracker's hybrid Unix-socket back end.
//!
//! The "guest" is a `GuestMemoryMmap` whose rings and descriptor chains are written with
//! virtio-queue's mock driver: it posts RX buffers, sends packets on TX and reads what the
//! device put in its RX buffers. The device runs under a real event-manager loop pumped by the
//! test thread; the host side is real Unix sockets in a temporary directory.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::event_loop::{DeviceSubscriber, EventLoop};
use devices::virtio::mmio::{status, MmioTransport};
use devices::virtio::vsock::conn::{CONN_BUF_ALLOC, CREDIT_UPDATE_THRESHOLD};
use devices::virtio::vsock::muxer::FIRST_LOCAL_PORT;
use devices::virtio::vsock::packet::{
    op, Header, HDR_LEN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND,
};
use devices::virtio::vsock::{Vsock, DEFAULT_MAX_CONNECTIONS, RX_QUEUE, TX_QUEUE};
use devices::virtio::{device_type, features, VirtioDevice};
use devices::BusDevice;
use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

#[path = "virtio_vsock/rig.rs"]
mod rig;

use rig::*;

#[test]
fn device_identity_and_config_space() {
    let dir = TempDir::new("identity");
    let uds = dir.path("v.sock");
    let dev = Vsock::new(0x1_0203, uds.clone()).unwrap();
    assert_eq!(dev.device_type(), device_type::VSOCK);
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.offered_features(), features::VERSION_1);
    let mut cfg = [0xAAu8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 0x1_0203);
    let mut hi = [0xAAu8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    assert!(uds.exists(), "the device must listen at its path");
    // A second device on the same path is refused, and the first one keeps its socket.
    let err = Vsock::new(4, uds.clone())
        .err()
        .expect("path reuse accepted");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(uds.exists());
    drop(dev);
    assert!(!uds.exists(), "the listening socket outlived the device");
}

#[test]
fn host_initiated_stream_round_trips_with_credit_and_shutdown() {
    let dir = TempDir::new("hostinit");
    let mem = memory();
    let mut rig = Rig::new(&mem, &dir, None);
    // The guest advertises 6000 bytes of receive buffer (not a multiple of its 4 KiB RX
    // buffers, so a device that ignored the credit would overrun it).
    let guest_buf: u32 = 6000;
    let (mut host, hp) = rig.host_connect(52, guest_buf);
    assert_eq!(rig.connections(), 1);

    // Host to guest: 20000 bytes, but only 6000 until the guest reports progress.
    let sent = pattern(20000, 7);
    host.write_all(&sent).unwrap();
    let mut got = Vec::new();
    let mut guest_fwd = 0u32;
    let mut credit_requests = 0;
    while got.len() < sent.len() {
        let p = rig.expect();
        assert_eq!((p.hdr.src_port, p.hdr.dst_port), (hp, 52));
        match p.hdr.op {
            op::RW => {
                assert!(p.hdr.len <= 4096);
                got.extend_from_slice(&p.data);
                assert!(
                    got.len() as u32 <= guest_fwd + guest_buf,
                    "device sent {} bytes with only {} of credit",
                    got.len(),
                    guest_fwd + guest_buf
                );
            }
            op::CREDIT_REQUEST => {
                credit_requests += 1;
                assert_eq!(got.len() as u32, guest_fwd + guest_buf, "asked too early");
                rig.expect_nothing(50);
                // The guest application consumed everything so far.
                guest_fwd = got.len() as u32;
                rig.send(
                    guest_hdr(52, hp, op::CREDIT_UPDATE, guest_buf, guest_fwd),
                    &[],
                );
            }
            other => panic!("unexpected op {other}: {p:?}"),
        }
    }
    assert_eq!(got, sent, "host-to-guest bytes differ");
    assert_eq!(credit_requests, 3, "20000 bytes through a 6000-byte window");

    // Guest to host, byte for byte, in several packets.
    let up = pattern(3000, 99);
    for piece in up.chunks(1000) {
        rig.send(rw(52, hp, piece.len(), guest_buf, guest_fwd), piece);
    }
    assert_eq!(host_read(&mut rig, &mut host, up.len()), up);
    // The guest asks for credit: the update says all 3000 bytes were forwarded.
    rig.send(
        guest_hdr(52, hp, op::CREDIT_REQUEST, guest_buf, guest_fwd),
        &[],
    );
    let p = rig.expect();
    assert_eq!(p.hdr.op, op::CREDIT_UPDATE);
    assert_eq!((p.hdr.fwd_cnt, p.hdr.buf_alloc), (3000, CONN_BUF_ALLOC));

    // Past the threshold, an update comes unasked.
    let big = pattern(72000, 5);
    let mut reader = host.try_clone().unwrap();
    let reading = std::thread::spawn(move || {
        let mut b = vec![0u8; 72000];
        reader.read_exact(&mut b).unwrap();
        b
    });
    let mut updates = Vec::new();
    for piece in big.chunks(8000) {
        rig.send(rw(52, hp, piece.len(), guest_buf, guest_fwd), piece);
        rig.pump(1);
        while let Some(p) = rig.received.pop_front() {
            assert_eq!(p.hdr.op, op::CREDIT_UPDATE, "{p:?}");
            updates.push(p.hdr.fwd_cnt);
        }
    }
    assert_eq!(reading.join().unwrap(), big);
    rig.expect_nothing(30);
    assert_eq!(
        updates.len(),
        1,
        "one update per {CREDIT_UPDATE_THRESHOLD} bytes: {updates:?}"
    );
    assert!(updates[0] >= 3000 + CREDIT_UPDATE_THRESHOLD);

    // Host half-close: the guest sees SHUTDOWN(SEND) and may still send.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let p = rig.expect();
    assert_eq!((p.hdr.op, p.hdr.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    rig.send(rw(52, hp, 5, guest_buf, guest_fwd), b"after");
    assert_eq!(host_read(&mut rig, &mut host, 5), b"after");

    // The guest closes: RST back, the host stream ends, the connection is gone.
    let mut bye = guest_hdr(52, hp, op::SHUTDOWN, guest_buf, guest_fwd);
    bye.flags = SHUTDOWN_BOTH;
    rig.send(bye, &[]);
    let p = rig.expect();
    assert_eq!(p.hdr.op, op::RST);
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (hp, 52));
    assert!(host_sees_eof(&mut rig, &mut host));
    assert_eq!(rig.connections(), 0);

    let c = rig.counters();
    assert_eq!(c.malformed_chains + c.unsupported_requests + c.io_errors, 0);
    assert_eq!(c.tx_bytes, (3000 + 72000 + 5) as u64);
    assert!(c.rx_bytes >= sent.len() as u64);
    assert!(rig.irq.read().unwrap_or(0) >= 1, "no interrupt raised");
}

#[test]
fn guest_refusal_and_guest_rst_close_the_host_stream() {
    let dir = TempDir::new("refuse");
    let mem = memory();
    let mut rig = Rig::new(&mem, &dir, None);

    // Refused: the guest answers the REQUEST with RST; the host gets no OK, just EOF.
    let mut host = UnixStream::connect(&rig.uds).unwrap();
    host.write_all(b"CONNECT 7\n").unwrap();
    let req = rig.expect();
    assert_eq!(req.hdr.op, op::REQUEST);
    rig.send(guest_hdr(7, req.hdr.src_port, op::RST, 0, 0), &[]);
    rig.pump(5);
    assert!(host_sees_eof(&mut rig, &mut host));
    assert_eq!(rig.connections(), 0);

    // Established, then reset by the guest.
    let (mut host, hp) = rig.host_connect(8, 4096);
    assert!(hp > req.hdr.src_port, "host ports are allocated upward");
    rig.send(guest_hdr(8, hp, op::RST, 0, 0), &[]);
    rig.pump(5);
    assert!(host_sees_eof(&mut rig, &mut host));
    assert_eq!(rig.connections(), 0);
    // Nothing is sent back for an RST.
    rig.expect_nothing(30);

    // Garbage instead of a CONNECT line: the host stream is closed, the guest hears nothing.
    let mut bad = UnixStream::connect(&rig.uds).unwrap();
    bad.write_all(b"HELLO 5\n").unwrap();
    rig.pump(20);
    assert!(host_sees_eof(&mut rig, &mut bad));
    rig.expect_nothing(30);
    assert_eq!(rig.connections(), 0);
}

#[test]
fn guest_initiated_connections_to_a_listener_and_to_nothing() {
    let dir = TempDir::new("guestinit");
    let mem = memory();
    let mut rig = Rig::new(&mem, &dir, None);
    let listener = UnixListener::bind(dir.path("v.sock_1234")).unwrap();

    rig.send(guest_hdr(49152, 1234, op::REQUEST, 65536, 0), &[]);
    let p = rig.expect();
    assert_eq!(p.hdr.op, op::RESPONSE, "{p:?}");
    assert_eq!((p.hdr.src_cid, p.hdr.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (1234, 49152));
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(3))).unwrap();

    rig.send(rw(49152, 1234, 6, 65536, 0), b"hello\n");
    assert_eq!(host_read(&mut rig, &mut host, 6), b"hello\n");
    host.write_all(b"world\n").unwrap();
    let p = rig.expect();
    assert_eq!((p.hdr.op, p.data.as_slice()), (op::RW, &b"world\n"[..]));
    assert_eq!(p.hdr.fwd_cnt, 6, "our fwd_cnt counts what reached the host");

    // Nobody listens on port 999: RST, ports swapped.
    rig.send(guest_hdr(49153, 999, op::REQUEST, 65536, 0), &[]);
    let p = rig.expect();
    assert_eq!(p.hdr.op, op::RST);
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (999, 49153));
    assert_eq!(rig.connections(), 1);

    // Data for a connection that does not exist: RST.
    rig.send(rw(49154, 1234, 3, 65536, 0), b"abc");
    let p = rig.expect();
    assert_eq!((p.hdr.op, p.hdr.dst_port), (op::RST, 49154));

    // The host process closes: whatever it wrote first arrives, then an RST.
    host.write_all(b"last").unwrap();
    drop(host);
    let p = rig.expect();
    assert_eq!((p.hdr.op, p.data.as_slice()), (op::RW, &b"last"[..]));
    let p = rig.expect();
    assert_eq!(p.hdr.op, op::RST, "{p:?}");
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (1234, 49152));
    assert_eq!(rig.connections(), 0);
    let c = rig.counters();
    assert_eq!(c.malformed_chains + c.unsupported_requests, 0);
}

#[test]
fn hostile_packets_are_refused_counted_and_the_device_keeps_serving() {
    let dir = TempDir::new("hostile");
    let mem = memory();
    let mut rig = Rig::new(&mem, &dir, None);
    let listener = UnixListener::bind(dir.path("v.sock_80")).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut next_port = 40000;
    // A good connection attempt must still work after each hostile packet.
    let mut check_alive = |rig: &mut Rig| {
        next_port += 1;
        rig.send(guest_hdr(next_port, 80, op::REQUEST, 4096, 0), &[]);
        let p = rig.expect();
        assert_eq!((p.hdr.op, p.hdr.dst_port), (op::RESPONSE, next_port));
        rig.send(guest_hdr(next_port, 80, op::RST, 4096, 0), &[]);
        assert!(listener.accept().is_ok());
    };

    // Wrong type (SEQPACKET): counted, answered with RST as Linux does.
    let mut h = guest_hdr(1, 80, op::REQUEST, 4096, 0);
    h.kind = 2;
    rig.send(h, &[]);
    let p = rig.expect();
    assert_eq!((p.hdr.op, p.hdr.dst_port), (op::RST, 1));
    assert_eq!(rig.counters().unsupported_requests, 1);
    check_alive(&mut rig);

    // Spoofed source CID, and a destination that is not the host: dropped silently.
    let mut h = guest_hdr(2, 80, op::REQUEST, 4096, 0);
    h.src_cid = 4;
    rig.send(h, &[]);
    let mut h = guest_hdr(3, 80, op::REQUEST, 4096, 0);
    h.dst_cid = 5;
    rig.send(h, &[]);
    let mut h = guest_hdr(3, 80, op::REQUEST, 4096, 0);
    h.src_cid = GUEST_CID | (1 << 32);
    rig.send(h, &[]);
    rig.expect_nothing(20);
    assert_eq!(rig.counters().unsupported_requests, 4);
    check_alive(&mut rig);

    // Unknown op: RST.
    rig.send(guest_hdr(4, 80, 42, 4096, 0), &[]);
    assert_eq!(rig.expect().hdr.op, op::RST);
    assert_eq!(rig.counters().unsupported_requests, 5);

    // len larger and smaller than the chain, and above the packet limit.
    let before = rig.counters().malformed_chains;
    let mut h = rw(5, 80, 100, 4096, 0);
    rig.send(h, &[7u8; 50]);
    h.len = 10;
    rig.send(h, &[7u8; 50]);
    h.len = 1 << 20;
    rig.send(h, &[7u8; 50]);
    // A short header: 30 bytes.
    let head = rig.tx.add_chain(&[(TX_BUFS, 30, false)]);
    rig.kick(TX_QUEUE);
    assert_eq!(rig.tx.take_used(), vec![(u32::from(head), 0)]);
    // A header split over two descriptors is fine, though (that is not hostile).
    rig.expect_nothing(20);
    assert_eq!(rig.counters().malformed_chains, before + 4);
    check_alive(&mut rig);

    // Broken chains from the common notes: each goes back with length 0.
    let before = rig.counters().malformed_chains;
    let mut heads = Vec::new();
    heads.push(rig.tx.add_raw(&[(TX_BUFS, 64, F_NEXT, 200)]));
    let b = rig.tx.next_head(2);
    heads.push(
        rig.tx
            .add_raw(&[(TX_BUFS, 64, F_NEXT, b + 1), (TX_BUFS, 64, F_NEXT, b)]),
    );
    heads.push(rig.tx.add_raw(&[(RAM_END + 0x1000, 64, 0, 0)]));
    heads.push(rig.tx.add_raw(&[(REGION2 - 20, 64, 0, 0)]));
    heads.push(rig.tx.add_raw(&[(u64::MAX - 16, 64, 0, 0)]));
    let b = rig.tx.next_head(2);
    heads.push(rig.tx.add_raw(&[
        (TX_BUFS, 64, F_WRITE | F_NEXT, b + 1),
        (TX_BUFS + 0x100, 64, 0, 0),
    ]));
    heads.push(rig.tx.add_raw(&[(TX_BUFS, 64, F_INDIRECT, 0)]));
    rig.kick(TX_QUEUE);
    let used = rig.tx.take_used();
    let want: Vec<(u32, u32)> = heads.iter().map(|&h| (u32::from(h), 0)).collect();
    assert_eq!(used, want);
    assert_eq!(rig.counters().malformed_chains, before + heads.len() as u64);
    rig.expect_nothing(20);
    check_alive(&mut rig);

    // Hostile RX chains: too small for a header, and device-readable. Both go back empty;
    // the next good buffer gets the packet.
    let rx_before = rig.rx.take_used();
    assert!(rx_before.is_empty());
    let before = rig.counters().malformed_chains;
    // Drain the posted buffers first so the hostile ones are next in line.
    let mut conns = Vec::new();
    for i in 0..RX_POSTED as u32 {
        rig.send(guest_hdr(50000 + i, 999, op::REQUEST, 4096, 0), &[]);
        conns.push(50000 + i);
    }
    // Collect without re-posting.
    let end = Instant::now() + Duration::from_secs(3);
    let mut used = Vec::new();
    while used.len() < RX_POSTED && Instant::now() < end {
        rig.manager.run_with_timeout(5).unwrap();
        used.extend(rig.rx.take_used());
    }
    assert_eq!(used.len(), RX_POSTED);
    let tiny = rig.rx.add_chain(&[(RX_BUFS, 20, true)]);
    let readable = rig
        .rx
        .add_chain(&[(RX_BUFS, 64, false), (RX_BUFS + 64, 4096, true)]);
    rig.send(guest_hdr(60000, 999, op::REQUEST, 4096, 0), &[]);
    rig.kick(RX_QUEUE);
    let used = rig.rx.take_used();
    assert_eq!(used, vec![(u32::from(tiny), 0), (u32::from(readable), 0)]);
    assert_eq!(rig.counters().malformed_chains, before + 2);
    for _ in 0..RX_POSTED {
        rig.post_rx();
    }
    rig.kick(RX_QUEUE);
    let p = rig.expect();
    assert_eq!((p.hdr.op, p.hdr.dst_port), (op::RST, 60000));

    let c = rig.counters();
    assert_eq!(c.io_errors, 0);
}

#[test]
fn a_guest_sending_past_its_credit_is_reset_and_host_buffering_stays_bounded() {
    let dir = TempDir::new("credit");
    let mem = memory();
    let mut rig = Rig::new(&mem, &dir, None);
    let listener = UnixListener::bind(dir.path("v.sock_90")).unwrap();
    rig.send(guest_hdr(1000, 90, op::REQUEST, 65536, 0), &[]);
    assert_eq!(rig.expect().hdr.op, op::RESPONSE);
    // The host process accepts but never reads.
    let (_host, _) = listener.accept().unwrap();
    let chunk = pattern(8000, 1);
    let mut sent = 0usize;
    let mut reset_after = None;
    for _ in 0..200 {
        rig.send(rw(1000, 90, chunk.len(), 65536, 0), &chunk);
        sent += chunk.len();
        rig.pump(1);
        if let Some(p) = rig.received.pop_front() {
            if p.hdr.op == op::RST {
                reset_after = Some(sent);
                break;
            }
            assert_eq!(p.hdr.op, op::CREDIT_UPDATE, "{p:?}");
        }
    }
    let sent = reset_after.expect("a guest ignoring its credit was never reset");
    // The socket buffer took some, our buffer at most CONN_BUF_ALLOC; the packet that
    // would have overflowed it was refused.
    assert!(
        sent > CONN_BUF_ALLOC as usize,
        "reset after only {sent} bytes"
    );
    assert_eq!(rig.connections(), 0);
    assert_eq!(rig.counters().unsupported_requests, 1);
}

#[test]
fn many_connections_up_to_the_cap_then_refusals() {
    const CAP: usize = 12;
    let dir = TempDir::new("cap");
    let mem = memory();
    let mut rig = Rig::new(&mem, &dir, Some(CAP));
    let mut hosts = Vec::new();
    for i in 0..CAP as u32 {
        let (host, hp) = rig.host_connect(100 + i, 65536);
        assert_eq!(hp, FIRST_LOCAL_PORT + i);
        hosts.push((host, hp, 100 + i));
    }
    assert_eq!(rig.connections(), CAP);
    // Every connection carries its own bytes both ways.
    for (host, hp, port) in hosts.iter_mut() {
        let msg = format!("to guest port {port}");
        host.write_all(msg.as_bytes()).unwrap();
        let p = rig.expect();
        assert_eq!((p.hdr.op, p.hdr.dst_port), (op::RW, *port));
        assert_eq!(p.data, msg.as_bytes());
        let back = format!("from guest port {port}");
        rig.send(rw(*port, *hp, back.len(), 65536, 0), back.as_bytes());
        assert_eq!(host_read(&mut rig, host, back.len()), back.as_bytes());
    }

    // One more from the host: accepted and closed at once.
    let mut extra = UnixStream::connect(&rig.uds).unwrap();
    let _ = extra.write_all(b"CONNECT 500\n");
    rig.pump(20);
    assert!(host_sees_eof(&mut rig, &mut extra));
    // One more from the guest: RST, even though a listener is there.
    let _listener = UnixListener::bind(dir.path("v.sock_7")).unwrap();
    rig.send(guest_hdr(2000, 7, op::REQUEST, 65536, 0), &[]);
    let p = rig.expect();
    assert_eq!((p.hdr.op, p.hdr.dst_port), (op::RST, 2000));
    assert_eq!(rig.device.lock().unwrap().refused_over_cap(), 2);
    rig.expect_nothing(20);

    // Closing one makes room again.
    let (_, hp, port) = hosts.remove(0);
    rig.send(guest_hdr(port, hp, op::RST, 0, 0), &[]);
    assert_eq!(rig.connections(), CAP - 1);
    rig.send(guest_hdr(2000, 7, op::REQUEST, 65536, 0), &[]);
    assert_eq!(rig.expect().hdr.op, op::RESPONSE);
    assert_eq!(rig.connections(), CAP);
}

#[test]
fn host_connections_made_before_the_driver_starts_are_delivered_on_activation() {
    let dir = TempDir::new("early");
    let mem = memory();
    let uds = dir.path("v.sock");
    let device = Arc::new(Mutex::new(Vsock::new(GUEST_CID, uds.clone()).unwrap()));
    let mut manager = EventManager::new().unwrap();
    manager.add_subscriber(Harness {
        device: device.clone(),
    });
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 33\n").unwrap();
    // The loop runs while the device is inactive: no spinning, nothing delivered.
    let mut wakeups = 0;
    let end = Instant::now() + Duration::from_millis(100);
    while Instant::now() < end {
        wakeups += manager.run_with_timeout(10).unwrap();
    }
    assert!(wakeups <= 3, "the event loop spun {wakeups} times");

    let mut rig = Rig {
        mem: &mem,
        device,
        manager,
        irq: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        rx: GuestQueue::new(&mem, RX_RING),
        tx: GuestQueue::new(&mem, TX_RING),
        ev: GuestQueue::new(&mem, EV_RING),
        received: VecDeque::new(),
        uds,
    };
    for _ in 0..4 {
        rig.post_rx();
    }
    rig.activate();
    let p = rig.expect();
    assert_eq!((p.hdr.op, p.hdr.dst_port), (op::REQUEST, 33));
}

#[test]
fn driven_through_the_mmio_transport_and_the_real_event_loop() {
    let dir = TempDir::new("mmio");
    let mem = memory();
    let uds = dir.path("v.sock");
    let vsock: Arc<Mutex<dyn VirtioDevice>> =
        Arc::new(Mutex::new(Vsock::new(GUEST_CID, uds.clone()).unwrap()));
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(vsock, mem.clone(), irq.try_clone().unwrap()).unwrap();
    let subscriber = DeviceSubscriber::new(&t).unwrap();
    let mut event_loop = EventLoop::spawn(vec![subscriber], Box::new(|| Ok(()))).unwrap();
    let mut rx = GuestQueue::new(&mem, RX_RING);
    let mut tx = GuestQueue::new(&mem, TX_RING);
    let ev = GuestQueue::new(&mem, EV_RING);

    assert_eq!(reg_read(&mut t, 0x08), device_type::VSOCK);
    let mut cid = [0u8; 8];
    t.read(0x100, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    reg_write(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    reg_write(&mut t, 0x14, 1);
    assert_eq!(reg_read(&mut t, 0x10), 1, "VERSION_1 only");
    reg_write(&mut t, 0x24, 1);
    reg_write(&mut t, 0x20, 1);
    let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    reg_write(&mut t, 0x70, st);
    for (index, q) in [&rx, &tx, &ev].into_iter().enumerate() {
        reg_write(&mut t, 0x30, index as u32);
        assert_eq!(reg_read(&mut t, 0x34), 256);
        reg_write(&mut t, 0x38, u32::from(QSIZE));
        for (reg, addr) in [
            (0x80, q.mock.desc_table_addr().0),
            (0x90, q.mock.avail_addr().0),
            (0xa0, q.used.0),
        ] {
            reg_write(&mut t, reg, addr as u32);
            reg_write(&mut t, reg + 4, (addr >> 32) as u32);
        }
        reg_write(&mut t, 0x44, 1);
    }
    reg_write(&mut t, 0x70, st | status::DRIVER_OK);
    assert_ne!(reg_read(&mut t, 0x70) & status::DRIVER_OK, 0);
    for _ in 0..8 {
        let slot = rx.next_head(1);
        rx.add_chain(&[(RX_BUFS + u64::from(slot) * STRIDE, RX_BUF_LEN, true)]);
    }
    reg_write(&mut t, 0x50, RX_QUEUE as u32);

    let guest_send = |tx: &mut GuestQueue, t: &mut MmioTransport, hdr: Header, data: &[u8]| {
        let slot = tx.next_head(2);
        let at = TX_BUFS + u64::from(slot) * STRIDE;
        mem.write_slice(&hdr.to_bytes(), GuestAddress(at)).unwrap();
        mem.write_slice(data, GuestAddress(at + 0x40)).unwrap();
        let mut bufs = vec![(at, HDR_LEN as u32, false)];
        if !data.is_empty() {
            bufs.push((at + 0x40, data.len() as u32, false));
        }
        tx.add_chain(&bufs);
        reg_write(t, 0x50, TX_QUEUE as u32);
        wait_one_used(tx);
    };

    let mut host = UnixStream::connect(&uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    let req = read_rx(&mem, wait_one_used(&mut rx));
    assert_eq!((req.hdr.op, req.hdr.dst_port), (op::REQUEST, 52));
    let hp = req.hdr.src_port;
    guest_send(
        &mut tx,
        &mut t,
        guest_hdr(52, hp, op::RESPONSE, 65536, 0),
        &[],
    );
    let mut line = String::new();
    let mut b = [0u8; 1];
    while !line.ends_with('\n') {
        host.read_exact(&mut b).unwrap();
        line.push(b[0] as char);
    }
    assert_eq!(line, format!("OK {hp}\n"));

    host.write_all(b"ping").unwrap();
    let p = read_rx(&mem, wait_one_used(&mut rx));
    assert_eq!((p.hdr.op, p.data.as_slice()), (op::RW, &b"ping"[..]));
    guest_send(&mut tx, &mut t, rw(52, hp, 4, 65536, 4), b"pong");
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    let c = t.counters().snapshot();
    assert_eq!((c.tx_packets, c.rx_packets), (2, 2));
    assert_eq!(c.malformed_chains + c.unsupported_requests + c.io_errors, 0);
    assert!(
        irq.read().unwrap_or(0) >= 1,
        "no interrupt reached the irqfd"
    );

    // A device reset forgets the connection: the host stream is closed.
    reg_write(&mut t, 0x70, 0);
    let mut rest = Vec::new();
    assert_eq!(host.read_to_end(&mut rest).unwrap(), 0);
    event_loop.stop();
    drop(t);
    assert!(!uds.exists(), "the listening socket outlived the device");
}

#[test]
fn host_data_waits_without_spinning_while_the_guest_has_no_buffers() {
    let dir = TempDir::new("stall");
    let mem = memory();
    let mut rig = Rig::new(&mem, &dir, None);
    let (mut host, hp) = rig.host_connect(61, 1 << 20);
    // The guest's RX buffers run out: fill them with RSTs for unknown ports, no re-posting.
    for i in 0..RX_POSTED as u32 {
        rig.send(rw(30000 + i, 1, 1, 1 << 20, 0), b"x");
    }
    assert_eq!(rig.rx.take_used().len(), RX_POSTED);
    let sent = pattern(50000, 3);
    host.write_all(&sent).unwrap();
    let mut wakeups = 0;
    let end = Instant::now() + Duration::from_millis(200);
    while Instant::now() < end {
        wakeups += rig.manager.run_with_timeout(10).unwrap();
    }
    assert!(
        wakeups <= 3,
        "the event loop spun {wakeups} times without RX buffers"
    );
    assert!(rig.rx.take_used().is_empty());

    // Buffers arrive: everything is delivered, in order.
    for _ in 0..RX_POSTED {
        rig.post_rx();
    }
    rig.kick(RX_QUEUE);
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let p = rig.expect();
        assert_eq!((p.hdr.op, p.hdr.src_port), (op::RW, hp), "{p:?}");
        got.extend_from_slice(&p.data);
    }
    assert_eq!(got, sent);
}

#[test]
fn guest_shutdown_directions_are_honoured() {
    let dir = TempDir::new("shut");
    let mem = memory();
    let mut rig = Rig::new(&mem, &dir, None);
    let (mut host, hp) = rig.host_connect(70, 65536);

    // The guest will receive no more: host data stays on the host side.
    let mut shut = guest_hdr(70, hp, op::SHUTDOWN, 65536, 0);
    shut.flags = SHUTDOWN_RCV;
    rig.send(shut, &[]);
    host.write_all(b"unwanted").unwrap();
    rig.expect_nothing(50);

    // It may still send.
    rig.send(rw(70, hp, 3, 65536, 0), b"abc");
    assert_eq!(host_read(&mut rig, &mut host, 3), b"abc");

    // Now it will not send either: both directions are shut, so the device resets the
    // connection and closes the host stream.
    shut.flags = SHUTDOWN_SEND;
    rig.send(shut, &[]);
    let p = rig.expect();
    assert_eq!((p.hdr.op, p.hdr.dst_port), (op::RST, 70));
    assert!(host_sees_eof(&mut rig, &mut host));
    assert_eq!(rig.connections(), 0);

    // Another connection: the guest will send no more, so the host sees end of stream but
    // can still write to the guest.
    let (mut host, hp) = rig.host_connect(71, 65536);
    let mut shut = guest_hdr(71, hp, op::SHUTDOWN, 65536, 0);
    shut.flags = SHUTDOWN_SEND;
    rig.send(shut, &[]);
    assert!(host_sees_eof(&mut rig, &mut host));
    host.write_all(b"still").unwrap();
    let p = rig.expect();
    assert_eq!((p.hdr.op, p.data.as_slice()), (op::RW, &b"still"[..]));
    // Data from the guest after that is a protocol error: reset and counted.
    rig.send(rw(71, hp, 3, 65536, 0), b"def");
    let p = rig.expect();
    assert_eq!((p.hdr.op, p.hdr.dst_port), (op::RST, 71));
    assert_eq!(rig.counters().unsupported_requests, 1);
    assert_eq!(rig.connections(), 0);
}

#[test]
fn the_default_cap_admits_its_full_count_of_mixed_connections() {
    let dir = TempDir::new("defcap");
    let mem = memory();
    let mut rig = Rig::new(&mem, &dir, None);
    let listener = UnixListener::bind(dir.path("v.sock_9000")).unwrap();
    let half = (DEFAULT_MAX_CONNECTIONS / 2) as u32;
    let mut hosts = Vec::new();
    let mut accepted = Vec::new();
    for i in 0..half {
        hosts.push(rig.host_connect(20000 + i, 65536));
        rig.send(guest_hdr(30000 + i, 9000, op::REQUEST, 65536, 0), &[]);
        let p = rig.expect();
        assert_eq!((p.hdr.op, p.hdr.dst_port), (op::RESPONSE, 30000 + i));
        accepted.push(listener.accept().unwrap().0);
    }
    assert_eq!(rig.connections(), DEFAULT_MAX_CONNECTIONS);
    // The last connection of each kind still carries data.
    let (host, hp) = hosts.last_mut().unwrap();
    let hp = *hp;
    rig.send(rw(20000 + half - 1, hp, 4, 65536, 0), b"last");
    assert_eq!(host_read(&mut rig, host, 4), b"last");
    let far = accepted.last_mut().unwrap();
    far.write_all(b"tail").unwrap();
    let p = rig.expect();
    assert_eq!((p.hdr.op, p.hdr.dst_port), (op::RW, 30000 + half - 1));
    assert_eq!(p.data, b"tail");
    // One more of either kind is refused.
    rig.send(guest_hdr(40000, 9000, op::REQUEST, 65536, 0), &[]);
    assert_eq!(rig.expect().hdr.op, op::RST);
    let mut extra = UnixStream::connect(&rig.uds).unwrap();
    let _ = extra.write_all(b"CONNECT 1\n");
    assert!(host_sees_eof(&mut rig, &mut extra));
    assert_eq!(rig.device.lock().unwrap().refused_over_cap(), 2);
    assert_eq!(rig.counters().io_errors, 0);
}
