//! Support code for edgevisor's integration tests (the tests themselves are in `tests/`).
//!
//! [`nested`] boots real Linux and our firmware guests on a complete x86 CPU: a Debian kernel
//! under QEMU (TCG, emulated AMD CPU with SVM) provides a real `/dev/kvm`, and `edgevisor` runs
//! inside it. See `tests/tests/nested.rs` for the way the pieces fit.

pub mod nested;
