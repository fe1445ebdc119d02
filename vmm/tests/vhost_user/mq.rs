//! Multiqueue: two probe guests with `queues=2` on the two ports of a testpmd whose vhost
//! ports have two queue pairs each, io-forwarding port 0 queue q to port 1 queue q and back.
//! Each guest asks its control virtqueue for two pairs (after a refused request for zero),
//! sends on pair 1 and receives the other guest's frame on pair 1. testpmd's per-stream
//! counters show that the frames went through queue 1 of each port and nothing through
//! queue 0; its log shows GET_QUEUE_NUM and pair 1's rings being enabled.

use std::time::Duration;

use super::common::*;
use super::support::*;

#[test]
fn two_guests_exchange_frames_on_queue_pair_1_through_testpmd() {
    let rig = Rig::new("vhost-user-mq");
    let (dir, s0, s1) = (rig.dir(), rig.s0.clone(), rig.s1.clone());
    let mut pmd = Testpmd::start(&dir, [&s0, &s1], 2, "mq");

    let (a, b) = start_two_guests(
        &dir,
        &mut pmd,
        &guest_args(&s0, MAC_A, ",queues=2", "mq"),
        &guest_args(&s1, MAC_B, ",queues=2", "mq"),
        // testpmd calls a device ready with pair 0 alone; the frames go over pair 1, whose
        // rings the VMM turns on (RX 2, then TX 3) when the guest asks for two pairs.
        "set queue enable: 1 to qp idx: 3",
    );

    let lines = [&a, &b].map(|vmm| {
        vmm.net_line(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no virtio-net line\n{}\n{}", vmm.show(), pmd.log_text()))
    });
    let frame_a = firmware::net_tx_frame(MAC_A);
    let frame_b = firmware::net_tx_frame(MAC_B);
    for ((vmm, line), (mac, peer_frame)) in [&a, &b]
        .iter()
        .zip(&lines)
        .zip([(MAC_A, &frame_b), (MAC_B, &frame_a)])
    {
        let want = format!(
            "mac={} mq pairs=2 ctrl=ok bad_pairs=err tx=pair1 rx=pair1 len={} fnv1a64={:#018x} pair0_rx=0",
            mac_text(mac),
            peer_frame.len(),
            firmware::fnv1a64(peer_frame)
        );
        assert!(
            line.contains(&want),
            "{line}\nwanted {want}\n{}\n{}",
            vmm.show(),
            pmd.log_text()
        );
        assert!(vmm.stdout().contains("PROBE PASS"), "{}", vmm.show());
    }

    // testpmd's own view: one frame on each queue-1 stream, nothing on the queue-0 ones.
    let streams = pmd.stop_streams();
    for (rx_port, tx_port) in [(0, 1), (1, 0)] {
        let s = streams
            .iter()
            .find(|s| s.rx_port == rx_port && s.rx_queue == 1)
            .unwrap_or_else(|| panic!("no stream from port {rx_port} queue 1: {streams:?}"));
        assert_eq!(
            (s.tx_port, s.tx_queue, s.rx_packets, s.tx_packets),
            (tx_port, 1, 1, 1),
            "{streams:?}"
        );
    }
    assert!(
        streams.iter().all(|s| s.rx_queue == 1),
        "a queue-0 stream moved frames: {streams:?}"
    );

    // The handshake: queue count asked for, pair 1's rings enabled.
    let log = pmd.log_text();
    for s in [&s0, &s1] {
        for step in [
            "read message VHOST_USER_GET_QUEUE_NUM",
            "set queue enable: 1 to qp idx: 2",
            "set queue enable: 1 to qp idx: 3",
        ] {
            let needle = format!("({}) {step}", s.display());
            assert!(log.contains(&needle), "testpmd log lacks {needle:?}\n{log}");
        }
    }
    drop((a, b));
}
