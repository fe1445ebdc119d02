//! images crate of edgevisor (being built).
