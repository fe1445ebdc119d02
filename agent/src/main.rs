//! `edgevisor-agent`: the node daemon.

fn main() {
    eprintln!("edgevisor-agent: not built yet");
    std::process::exit(2);
}
