//! tests crate of edgevisor (being built).
