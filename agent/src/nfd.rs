//! The capabilities as node-feature-discovery "local" feature lines, so Kubernetes labels
//! nodes with facts NFD cannot see itself (a Raspberry Pi board, edgevisor's KVM view).
//!
//! NFD's local source reads every file in its features.d directory (by default
//! /etc/kubernetes/node-feature-discovery/features.d/) and turns each `name=value` line into
//! a node label. [`write_features`] writes ours there atomically: a temp file in the same
//! directory, fsync, rename, fsync of the directory; NFD never sees half a file.

use std::io;
use std::path::{Path, PathBuf};

use crate::capabilities::Capabilities;
use crate::metrics::write_atomic;

/// Prefix of every feature name we write.
pub const PREFIX: &str = "edgevisor.io/";
/// Name of the feature file inside the features.d directory.
pub const FILE_NAME: &str = "edgevisor";
/// Longest label value (and name part) Kubernetes accepts.
pub const MAX_LEN: usize = 63;

/// Turns `raw` into a valid Kubernetes label value: at most 63 characters out of
/// `[A-Za-z0-9._-]`, starting and ending with a letter or digit (or empty). Other characters
/// become `_` (runs of them one `_`).
pub fn sanitize_value(raw: &str) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut collapsed = String::with_capacity(mapped.len());
    for c in mapped.chars() {
        if !(c == '_' && collapsed.ends_with('_')) {
            collapsed.push(c);
        }
    }
    let trimmed = collapsed.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let cut: String = trimmed.chars().take(MAX_LEN).collect();
    cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The feature lines for `caps`, sorted by name, each `edgevisor.io/<name>=<value>`.
pub fn feature_lines(caps: &Capabilities) -> Vec<String> {
    let mut features: Vec<(String, String)> = vec![
        ("arch".into(), caps.arch.clone()),
        ("board.model".into(), caps.board.model.clone()),
        ("board.source".into(), caps.board.source.clone()),
        (
            "board.raspberry-pi".into(),
            caps.board.raspberry_pi.to_string(),
        ),
        ("cpu.model".into(), caps.cpu.model.clone()),
        ("cpu.count".into(), caps.allocatable.cpus.to_string()),
        ("numa.nodes".into(), caps.numa_nodes.len().to_string()),
        ("kvm".into(), caps.kvm.available.to_string()),
        (
            "kvm.hardware-backed".into(),
            caps.kvm.hardware_backed.to_string(),
        ),
        ("net.tap".into(), caps.network.tap.to_string()),
        ("net.vhost-user".into(), caps.network.vhost_user.to_string()),
        ("net.dpdk".into(), caps.network.dpdk.to_string()),
        ("iommu".into(), (!caps.iommu_groups.is_empty()).to_string()),
        ("sriov".into(), (!caps.sriov.is_empty()).to_string()),
    ];
    if let Some(v) = caps.kvm.api_version {
        features.push(("kvm.api-version".into(), v.to_string()));
    }
    if let Some(v) = caps.kvm.max_vcpus {
        features.push(("kvm.max-vcpus".into(), v.to_string()));
    }
    let vfs: u32 = caps.sriov.iter().map(|pf| pf.total_vfs).sum();
    if vfs > 0 {
        features.push(("sriov.total-vfs".into(), vfs.to_string()));
    }
    for pool in &caps.allocatable.hugepages {
        let size = numa::page_size_label(pool.page_size_bytes / 1024);
        features.push((format!("hugepages-{size}"), (pool.total > 0).to_string()));
    }
    for proto in &caps.boot_protocols {
        features.push((format!("boot.{proto}"), "true".into()));
    }
    for dev in &caps.devices {
        features.push((format!("device.{dev}"), "true".into()));
    }
    let mut lines: Vec<String> = features
        .into_iter()
        .map(|(name, value)| {
            format!(
                "{PREFIX}{}={}",
                sanitize_value(&name),
                sanitize_value(&value)
            )
        })
        .collect();
    lines.sort();
    lines.dedup();
    lines
}

/// Writes the feature file for `caps` into `dir` atomically and returns its path.
pub fn write_features(dir: &Path, caps: &Capabilities) -> io::Result<PathBuf> {
    let mut text = String::from("# written by edgevisor-agent; do not edit\n");
    for line in feature_lines(caps) {
        text.push_str(&line);
        text.push('\n');
    }
    let target = dir.join(FILE_NAME);
    write_atomic(&target, text.as_bytes())?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_follows_label_rules() {
        assert_eq!(
            sanitize_value("Raspberry Pi 4 Model B Rev 1.4"),
            "Raspberry_Pi_4_Model_B_Rev_1.4"
        );
        assert_eq!(sanitize_value("  (Intel) Xeon®  "), "Intel_Xeon");
        assert_eq!(sanitize_value("--"), "");
        let long = sanitize_value(&"a".repeat(100));
        assert_eq!(long.len(), MAX_LEN);
        // A cut that ends on a separator is trimmed back to a letter.
        let s = sanitize_value(&format!("{}-b", "a".repeat(62)));
        assert_eq!(s, "a".repeat(62));
    }
}
