//! Test harness shared by the firmware's integration tests: boots the probe images on
//! /dev/kvm with a setup of its own (independent of the vmm crate).

#![allow(dead_code)]

pub mod layout;
pub mod vm;

#[allow(unused_imports)]
pub use layout::*;
#[allow(unused_imports)]
pub use vm::*;
