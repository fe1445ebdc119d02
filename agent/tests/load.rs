//! Many concurrent API clients creating, starting and deleting guests.

#![cfg(target_arch = "x86_64")] // boots x86_64 guests on /dev/kvm: not built for aarch64

mod common;

use std::sync::Arc;

use common::{vm_processes, Agent};

const CLIENTS: usize = 8;
const GUESTS_PER_CLIENT: usize = 5;

#[test]
fn concurrent_clients_create_and_delete_guests_without_loss_or_leak() {
    let agent = Arc::new(Agent::start("load"));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let agent = agent.clone();
            std::thread::spawn(move || {
                let ids: Vec<String> = (0..GUESTS_PER_CLIENT)
                    .map(|g| format!("c{c}-g{g}"))
                    .collect();
                for id in &ids {
                    // 409 only while a neighbour's racing duplicate (below) holds the id.
                    let mut tries = 0;
                    loop {
                        let a = agent.tcp("POST", "/v1/guests", &agent.probe_guest(id, 16));
                        if a.status == 201 {
                            break;
                        }
                        assert_eq!(a.status, 409, "create {id}: {}", a.text());
                        tries += 1;
                        assert!(tries < 500, "{id} stayed taken");
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    // Each client also races a create of a neighbour's id: exactly one wins.
                    let other = format!("c{}-g0", (c + 1) % CLIENTS);
                    let dup = agent.unix("POST", "/v1/guests", &agent.probe_guest(&other, 16));
                    assert!(matches!(dup.status, 201 | 409), "{}", dup.text());
                    if dup.status == 201 {
                        // Ours: give the id back.
                        let a = agent.unix("DELETE", &format!("/v1/guests/{other}"), b"");
                        assert_eq!(a.status, 200, "{}", a.text());
                    }
                    let a = agent.tcp("PUT", &format!("/v1/guests/{id}/start"), b"");
                    assert_eq!(a.status, 200, "start {id}: {}", a.text());
                    assert_eq!(a.json()["state"], "running");
                }
                let listed = agent.tcp("GET", "/v1/guests", b"").json();
                for id in &ids {
                    assert!(
                        listed["guests"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|g| g["id"] == *id),
                        "{id} missing from the list"
                    );
                }
                for id in &ids {
                    let a = agent.tcp("DELETE", &format!("/v1/guests/{id}"), b"");
                    assert_eq!(a.status, 200, "delete {id}: {}", a.text());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
    assert!(
        agent.states().is_empty(),
        "guests left: {:?}",
        agent.states()
    );
    assert!(vm_processes(&agent.state_dir()).is_empty(), "VMs leaked");
    let left: Vec<_> = std::fs::read_dir(agent.state_dir().join("guests"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "guest directories left behind");
}
