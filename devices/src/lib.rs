//! devices crate of edgevisor (being built).
