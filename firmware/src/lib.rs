//! firmware crate of edgevisor (being built).
