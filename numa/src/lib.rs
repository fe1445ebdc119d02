//! numa crate of edgevisor (being built).
