//! A back end met on reconnect that takes the connection and never answers: while the guest
//! runs, the device cuts it off after `net_dpdk::REPLY_TIMEOUT` (5 s), says so, and keeps
//! retrying until a real back end is back, with the guest up throughout. (At start-up the same
//! silence is an error: `vhost_user_errors_are_clear_and_early`.)

use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::support::*;

/// Accepts connections on `listener` and holds them open without a word until `stop`;
/// returns how many it took.
fn silent_peer(listener: UnixListener, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut held: Vec<UnixStream> = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            if let Ok((conn, _)) = listener.accept() {
                held.push(conn);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        held.len()
    })
}

fn wait_count(vmm: &Vmm, needle: &str, count: usize, limit: Duration) -> bool {
    wait_until(limit, || vmm.stderr().matches(needle).count() >= count)
}

#[test]
fn a_silent_back_end_met_on_reconnect_is_cut_off_and_retried() {
    let rig = Rig::new("vhost-user-silent-reconnect");
    let (dir, s0, s1) = (rig.dir(), rig.s0.clone(), rig.s1.clone());
    let mut pmd = Testpmd::start(&dir, [&s0, &s1], 1, "silent1");
    let net = format!("vhost-user={}", s0.display());
    let mut vmm = Vmm::start(
        &dir,
        "a",
        &[
            "--mem",
            "64M,shared=on",
            "--net",
            &net,
            "--cmdline",
            "probe.net=on probe.exit=hang",
        ],
    );
    assert!(
        pmd.wait_for(
            "virtio is now ready for processing",
            1,
            Duration::from_secs(20)
        ),
        "{}\n{}",
        pmd.log_text(),
        vmm.show()
    );
    pmd.command("start");
    // The guest is done with its check (rings handed back) before testpmd goes.
    vmm.net_line(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no virtio-net line\n{}", vmm.show()));

    pmd.kill();
    assert!(
        wait_count(&vmm, "went away; reconnecting", 1, Duration::from_secs(10)),
        "{}",
        vmm.show()
    );
    let _ = std::fs::remove_file(&s0);
    let _ = std::fs::remove_file(&s1);
    let stop = Arc::new(AtomicBool::new(false));
    let peer = silent_peer(UnixListener::bind(&s0).unwrap(), stop.clone());
    let needle = "did not answer within 5 s";
    let started = Instant::now();
    assert!(
        wait_count(&vmm, needle, 2, Duration::from_secs(30)),
        "no repeated time-out\n{}",
        vmm.show()
    );
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "two cut-offs in under 10 s: {:?}",
        started.elapsed()
    );
    stop.store(true, Ordering::SeqCst);
    assert!(
        peer.join().unwrap() >= 2,
        "edgevisor did not come back to the socket"
    );
    let _ = std::fs::remove_file(&s0);

    // A real back end again: the VMM (guest still up) connects to it.
    let pmd2 = Testpmd::start(&dir, [&s0, &s1], 1, "silent2");
    assert!(
        wait_count(&vmm, "is back", 1, Duration::from_secs(30)),
        "{}\n{}",
        vmm.show(),
        pmd2.log_text()
    );
    assert!(
        matches!(vmm.child.try_wait(), Ok(None)),
        "the VMM ended\n{}",
        vmm.show()
    );
    assert!(
        !vmm.stderr().contains("seccomp"),
        "a thread broke its filter\n{}",
        vmm.show()
    );
}
