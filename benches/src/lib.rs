//! benches crate of edgevisor (being built).
