//! `--net vhost-user=` end to end with a real back end: two edgevisor guests (the firmware
//! probe with `probe.net=on`), each on one vhost-user port of a dpdk-testpmd in io-forward
//! mode, so the frame guest A sends comes out of guest B's receive queue and the other way
//! round. testpmd's own port counters confirm the handshake and the forwarding. Then testpmd
//! is killed and restarted, and both VMMs (guests still running) connect to it again.
//!
//! Needs root (hugepages), /dev/kvm and dpdk-testpmd (package dpdk-dev,
//! scripts/install-test-deps.sh).

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;
#[path = "vhost_user/mq.rs"]
mod mq;
#[path = "vhost_user/support.rs"]
mod support;
#[path = "vhost_user/timeout.rs"]
mod timeout;
use common::*;
use support::*;

use std::time::{Duration, Instant};

#[test]
fn two_guests_exchange_frames_through_testpmd_and_reconnect_after_it_restarts() {
    let rig = Rig::new("vhost-user");
    let (dir, s0, s1) = (rig.dir(), rig.s0.clone(), rig.s1.clone());
    let mut pmd = Testpmd::start(&dir, [&s0, &s1], 1, "first");

    // Each probe waits up to 30 s for its frame to be taken and for one to arrive.
    let (a, b) = start_two_guests(
        &dir,
        &mut pmd,
        &guest_args(&s0, MAC_A, "", "on"),
        &guest_args(&s1, MAC_B, "", "on"),
        "virtio is now ready for processing",
    );

    // The handshake as testpmd saw it, per port.
    let log = pmd.log_text();
    for s in [&s0, &s1] {
        let port = |what: &str| format!("({}) {what}", s.display());
        for step in [
            "read message VHOST_USER_SET_OWNER",
            "read message VHOST_USER_GET_PROTOCOL_FEATURES",
            "read message VHOST_USER_SET_MEM_TABLE",
            "read message VHOST_USER_SET_VRING_KICK",
            "read message VHOST_USER_SET_VRING_CALL",
            "set queue enable: 1 to qp idx: 1",
            "negotiated Virtio features: 0x1",
        ] {
            assert!(
                log.contains(&port(step)),
                "testpmd log lacks {step:?}\n{log}"
            );
        }
    }

    let frame_a = firmware::net_tx_frame(MAC_A);
    let frame_b = firmware::net_tx_frame(MAC_B);
    let lines = [&a, &b].map(|vmm| {
        vmm.net_line(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no virtio-net line\n{}\n{}", vmm.show(), pmd.log_text()))
    });
    // testpmd's counters: each port took one frame from its guest and gave one to it.
    let stats = pmd.port_stats(2);
    for (port, st) in stats.iter().enumerate() {
        assert_eq!(
            (st.rx_packets, st.tx_packets),
            (1, 1),
            "port {port}: {stats:?}\n{lines:?}\n{}",
            pmd.log_text()
        );
        assert_eq!(st.rx_bytes, frame_a.len() as u64, "port {port}: {stats:?}");
        assert_eq!(st.tx_bytes, frame_a.len() as u64, "port {port}: {stats:?}");
    }
    for ((vmm, line), (mac, peer_frame)) in [&a, &b]
        .iter()
        .zip(&lines)
        .zip([(MAC_A, &frame_b), (MAC_B, &frame_a)])
    {
        let want = format!(
            "mac={} tx=ok rx len={} fnv1a64={:#018x}",
            mac_text(mac),
            peer_frame.len(),
            firmware::fnv1a64(peer_frame)
        );
        assert!(
            line.contains(&want),
            "{line}\nwanted {want}\n{}",
            vmm.show()
        );
        assert!(vmm.stdout().contains("PROBE PASS"), "{}", vmm.show());
    }

    // The back end dies; the VMMs (guests still up, devices reset by the probe after its
    // check) notice and connect to the next testpmd on the same sockets by themselves.
    pmd.kill();
    let _ = std::fs::remove_file(&s0);
    let _ = std::fs::remove_file(&s1);
    for vmm in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(10), || vmm
                .stderr()
                .contains("went away; reconnecting")),
            "the VMM did not notice testpmd's death\n{}",
            vmm.show()
        );
    }
    let pmd2 = Testpmd::start(&dir, [&s0, &s1], 1, "second");
    for vmm in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(20), || vmm.stderr().contains("is back")),
            "the VMM did not reconnect\n{}\n{}",
            vmm.show(),
            pmd2.log_text()
        );
    }
    // "is back" is printed once the VMM has sent its handshake; messages that need no reply
    // (SET_PROTOCOL_FEATURES among them) may still be queued in testpmd's vhost thread, so
    // its log is polled rather than read once.
    for s in [&s0, &s1] {
        for step in [
            "read message VHOST_USER_SET_OWNER",
            "read message VHOST_USER_SET_PROTOCOL_FEATURES",
        ] {
            let needle = format!("({}) {step}", s.display());
            assert!(
                wait_until(Duration::from_secs(10), || pmd2
                    .log_text()
                    .contains(&needle)),
                "second testpmd lacks {needle:?}\n{}",
                pmd2.log_text()
            );
        }
    }
    // Both VMs are still running: the restart did not take the guests down.
    for vmm in [&a, &b] {
        assert!(vmm.stderr().contains("rings not started"), "{}", vmm.show());
    }
    drop((a, b));
    drop(pmd2);
}

#[test]
fn vhost_user_errors_are_clear_and_early() {
    let scratch = Scratch::new("vhost-user-errors");
    let dir = &scratch.0;
    let missing = dir.join("nobody.sock");
    let net = format!("vhost-user={}", missing.display());

    // Private guest memory: refused before anything is opened.
    let o = edgevisor(&["run", "--net", &net]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains("shared=on"), "{}", show(&o));
    assert!(!stdout(&o).contains("probe:"), "{}", show(&o));

    // No back end at the socket.
    let o = edgevisor(&["run", "--mem", "64M,shared=on", "--net", &net]);
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", show(&o));
    assert!(stderr(&o).contains("nobody.sock"), "{}", show(&o));

    // A "back end" that accepts and hangs up at once: the request it failed is named.
    let sock = dir.join("rude.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let rude = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        drop(conn);
    });
    let net = format!("vhost-user={}", sock.display());
    let o = edgevisor(&["run", "--mem", "64M,shared=on", "--net", &net]);
    rude.join().unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stderr(&o).contains("failed the SET_OWNER request")
            || stderr(&o).contains("failed the GET_FEATURES request"),
        "{}",
        show(&o)
    );

    // A "back end" that takes the connection and never answers: the VMM gives up after
    // net_dpdk::REPLY_TIMEOUT with a sentence instead of hanging in GET_FEATURES.
    let sock = dir.join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let silent = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        // Read what the VMM sends, never answer; EOF comes when the VMM cuts it off.
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &conn, &mut got);
        got.len()
    });
    let net = format!("vhost-user={}", sock.display());
    let started = Instant::now();
    let o = edgevisor(&["run", "--mem", "64M,shared=on", "--net", &net]);
    let took = started.elapsed();
    let sent = silent.join().unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stderr(&o).contains("did not answer within 5 s"),
        "{}",
        show(&o)
    );
    assert!(sent >= 12, "the VMM sent {sent} bytes: no request at all");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(20),
        "gave up after {took:?}"
    );

    // More queue pairs than edgevisor offers are refused before anything is opened.
    let net = format!("vhost-user={},queues=9", missing.display());
    let o = edgevisor(&["run", "--mem", "64M,shared=on", "--net", &net]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains("from 1 to 8"), "{}", show(&o));
}
