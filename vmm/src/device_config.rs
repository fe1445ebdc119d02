//! Settings of the virtio devices a VM gets: `--disk`, `--net`, `--vsock`, `--rng` on the
//! command line (Cloud Hypervisor's `key=value,...` syntax), or Firecracker's `drives`,
//! `network-interfaces`, `vsock` and `entropy` sections in a `--config` file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Why a device option is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceConfigError {
    /// A `key=value` item without `=`, an unknown key, or a repeated key.
    #[error("--{option} {input:?}: {problem}")]
    Syntax {
        /// Which option.
        option: &'static str,
        /// What the user wrote.
        input: String,
        /// What is wrong.
        problem: String,
    },
    /// A required key is missing.
    #[error("--{option} {input:?} needs {key}=...")]
    Missing {
        /// Which option.
        option: &'static str,
        /// What the user wrote.
        input: String,
        /// The missing key.
        key: &'static str,
    },
    /// A value is out of range or malformed.
    #[error("--{option}: {key}={value:?} is not valid: {expected}")]
    BadValue {
        /// Which option.
        option: &'static str,
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// What would be valid.
        expected: &'static str,
    },
    /// More devices than the VM has interrupt lines for.
    #[error("{count} virtio devices asked for, but a VM has room for at most {max}: drop some --disk/--net options")]
    TooMany {
        /// Devices asked for.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// The function address of a `--device vfio=BDF` option (checked by `VmConfig::validate`).
pub fn parse_device(input: &str) -> Result<String, DeviceConfigError> {
    match input.split_once('=') {
        Some(("vfio", bdf)) if !bdf.is_empty() && !bdf.contains(',') => Ok(bdf.to_string()),
        Some(("vfio", _)) => Err(DeviceConfigError::Syntax {
            option: "device",
            input: input.to_string(),
            problem: "give one PCI address, e.g. vfio=0000:01:00.1".into(),
        }),
        _ => Err(DeviceConfigError::Syntax {
            option: "device",
            input: input.to_string(),
            problem: "the only device kind is vfio=BDF (a PCI function bound to vfio-pci)".into(),
        }),
    }
}

/// How a disk's writes reach the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskCache {
    /// Flush offered to the guest; a flush reaches fsync.
    #[default]
    Writeback,
    /// No flush offered; nothing synced.
    Unsafe,
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Refuse guest writes.
    #[serde(default)]
    pub readonly: bool,
    /// Cache mode.
    #[serde(default)]
    pub cache: DiskCache,
}

/// One virtio-net card on a TAP device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// TAP interface name (created when missing, and then removed at exit).
    pub tap: String,
    /// Guest MAC address; random (locally administered) when absent.
    #[serde(default)]
    pub mac: Option<String>,
}

/// Who opens the vhost-user connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VhostUserMode {
    /// The back end listens on the socket; edgevisor connects (testpmd's default).
    #[default]
    Client,
    /// Edgevisor creates the socket and waits for the back end (testpmd's `client=1`).
    Server,
}

/// One virtio-net card whose data path is a vhost-user back end (DPDK testpmd, OVS-DPDK).
/// Needs guest memory the back end can map: `--mem SIZE,shared=on`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserNetConfig {
    /// The vhost-user Unix socket.
    pub socket: PathBuf,
    /// Who connects to whom.
    #[serde(default)]
    pub mode: VhostUserMode,
    /// RX/TX queue pairs; more than one adds VIRTIO_NET_F_MQ and the control virtqueue.
    #[serde(default = "one_queue_pair")]
    pub queues: u16,
    /// Guest MAC address; random (locally administered) when absent.
    #[serde(default)]
    pub mac: Option<String>,
}

fn one_queue_pair() -> u16 {
    1
}

/// What one `--net` option asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetOption {
    /// `tap=NAME[,mac=MAC]`.
    Tap(NetConfig),
    /// `vhost-user=SOCKET[,mode=client|server][,queues=N][,mac=MAC]`.
    VhostUser(VhostUserNetConfig),
}

impl NetOption {
    /// Parses one `--net` value: `vhost-user=...` or `tap=...`.
    pub fn parse(input: &str) -> Result<NetOption, DeviceConfigError> {
        if input.starts_with("vhost-user=") || input.contains(",vhost-user=") {
            VhostUserNetConfig::parse(input).map(NetOption::VhostUser)
        } else {
            NetConfig::parse(input).map(NetOption::Tap)
        }
    }
}

impl VhostUserNetConfig {
    /// Most queue pairs accepted.
    pub const MAX_QUEUES: u16 = net_dpdk::MAX_QUEUE_PAIRS;

    /// Parses `vhost-user=SOCKET[,mode=client|server][,queues=N][,mac=MAC]`.
    pub fn parse(input: &str) -> Result<VhostUserNetConfig, DeviceConfigError> {
        let map = parse_items("net", input, &["vhost-user", "mode", "queues", "mac"])?;
        let socket = map.get("vhost-user").ok_or(DeviceConfigError::Missing {
            option: "net",
            input: input.to_string(),
            key: "vhost-user",
        })?;
        let mode = match map.get("mode").map(String::as_str) {
            None | Some("client") => VhostUserMode::Client,
            Some("server") => VhostUserMode::Server,
            Some(other) => {
                return Err(DeviceConfigError::BadValue {
                    option: "net",
                    key: "mode",
                    value: other.to_string(),
                    expected: "client (the back end listens) or server (edgevisor listens)",
                })
            }
        };
        let queues = match map.get("queues") {
            None => 1,
            Some(v) => v.parse::<u16>().map_err(|_| DeviceConfigError::BadValue {
                option: "net",
                key: "queues",
                value: v.clone(),
                expected: "a number of queue pairs from 1 to 8",
            })?,
        };
        let config = VhostUserNetConfig {
            socket: PathBuf::from(socket),
            mode,
            queues,
            mac: map.get("mac").cloned(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the socket path, queue count and MAC.
    pub fn validate(&self) -> Result<(), DeviceConfigError> {
        if self.socket.as_os_str().is_empty() {
            return Err(DeviceConfigError::BadValue {
                option: "net",
                key: "vhost-user",
                value: String::new(),
                expected: "the path of the back end's Unix socket",
            });
        }
        if self.queues == 0 || self.queues > Self::MAX_QUEUES {
            return Err(DeviceConfigError::BadValue {
                option: "net",
                key: "queues",
                value: self.queues.to_string(),
                expected: "a number of queue pairs from 1 to 8",
            });
        }
        if let Some(mac) = &self.mac {
            parse_mac(mac)?;
        }
        Ok(())
    }

    /// The MAC, parsed.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        self.mac.as_deref().and_then(|m| parse_mac(m).ok())
    }
}

/// The virtio-vsock device, with Firecracker's hybrid Unix-socket back end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub cid: u64,
    /// Host Unix socket path: host-initiated connections arrive here; guest-initiated ones
    /// to port P go to `<uds>_<P>`.
    pub uds: PathBuf,
}

/// Splits `a=b,c=d` into a map, refusing unknown and repeated keys.
fn parse_items(
    option: &'static str,
    input: &str,
    known: &[&str],
) -> Result<BTreeMap<String, String>, DeviceConfigError> {
    let syntax = |problem: String| DeviceConfigError::Syntax {
        option,
        input: input.to_string(),
        problem,
    };
    let mut map = BTreeMap::new();
    for item in input.split(',').filter(|s| !s.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| syntax(format!("{item:?} is not key=value")))?;
        if !known.contains(&key) {
            return Err(syntax(format!(
                "unknown key {key:?} (known: {})",
                known.join(", ")
            )));
        }
        if map.insert(key.to_string(), value.to_string()).is_some() {
            return Err(syntax(format!("{key} is given twice")));
        }
    }
    Ok(map)
}

fn on_off(option: &'static str, key: &'static str, value: &str) -> Result<bool, DeviceConfigError> {
    match value {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(DeviceConfigError::BadValue {
            option,
            key,
            value: value.to_string(),
            expected: "on or off",
        }),
    }
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff`; refuses multicast addresses.
pub fn parse_mac(value: &str) -> Result<[u8; 6], DeviceConfigError> {
    let bad = || DeviceConfigError::BadValue {
        option: "net",
        key: "mac",
        value: value.to_string(),
        expected: "six hex bytes like 02:00:00:00:00:01, not multicast",
    };
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(bad());
    }
    Ok(mac)
}

impl DiskConfig {
    /// Parses `path=FILE[,readonly=on][,cache=writeback|unsafe]`.
    pub fn parse(input: &str) -> Result<DiskConfig, DeviceConfigError> {
        let map = parse_items("disk", input, &["path", "readonly", "cache"])?;
        let path = map.get("path").ok_or(DeviceConfigError::Missing {
            option: "disk",
            input: input.to_string(),
            key: "path",
        })?;
        let readonly = match map.get("readonly") {
            Some(v) => on_off("disk", "readonly", v)?,
            None => false,
        };
        let cache = match map.get("cache").map(String::as_str) {
            None | Some("writeback") => DiskCache::Writeback,
            Some("unsafe") => DiskCache::Unsafe,
            Some(other) => {
                return Err(DeviceConfigError::BadValue {
                    option: "disk",
                    key: "cache",
                    value: other.to_string(),
                    expected: "writeback or unsafe",
                })
            }
        };
        Ok(DiskConfig {
            path: PathBuf::from(path),
            readonly,
            cache,
        })
    }
}

impl NetConfig {
    /// Parses `tap=NAME[,mac=MAC]`.
    pub fn parse(input: &str) -> Result<NetConfig, DeviceConfigError> {
        let map = parse_items("net", input, &["tap", "mac"])?;
        let tap = map.get("tap").ok_or(DeviceConfigError::Missing {
            option: "net",
            input: input.to_string(),
            key: "tap",
        })?;
        let config = NetConfig {
            tap: tap.clone(),
            mac: map.get("mac").cloned(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the interface name and MAC.
    pub fn validate(&self) -> Result<(), DeviceConfigError> {
        let name_ok = !self.tap.is_empty()
            && self.tap.len() <= 15
            && self
                .tap
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err(DeviceConfigError::BadValue {
                option: "net",
                key: "tap",
                value: self.tap.clone(),
                expected: "1 to 15 characters of letters, digits, '-', '_' or '.'",
            });
        }
        if let Some(mac) = &self.mac {
            parse_mac(mac)?;
        }
        Ok(())
    }

    /// The MAC, parsed.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        self.mac.as_deref().and_then(|m| parse_mac(m).ok())
    }
}

impl VsockConfig {
    /// Parses `cid=N,uds=PATH`.
    pub fn parse(input: &str) -> Result<VsockConfig, DeviceConfigError> {
        let map = parse_items("vsock", input, &["cid", "uds"])?;
        let missing = |key| DeviceConfigError::Missing {
            option: "vsock",
            input: input.to_string(),
            key,
        };
        let cid_text = map.get("cid").ok_or(missing("cid"))?;
        let cid = cid_text
            .parse::<u64>()
            .map_err(|_| DeviceConfigError::BadValue {
                option: "vsock",
                key: "cid",
                value: cid_text.clone(),
                expected: "a number from 3 to 4294967294",
            })?;
        let config = VsockConfig {
            cid,
            uds: PathBuf::from(map.get("uds").ok_or(missing("uds"))?),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the context id (0-2 are reserved, and u32::MAX means "any").
    pub fn validate(&self) -> Result<(), DeviceConfigError> {
        if self.cid < 3 || self.cid >= u64::from(u32::MAX) {
            return Err(DeviceConfigError::BadValue {
                option: "vsock",
                key: "cid",
                value: self.cid.to_string(),
                expected: "a number from 3 to 4294967294",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_options_parse_and_default_to_writeback() {
        let d = DiskConfig::parse("path=/img,readonly=on,cache=unsafe").unwrap();
        assert_eq!(d.path, PathBuf::from("/img"));
        assert!(d.readonly);
        assert_eq!(d.cache, DiskCache::Unsafe);
        let d = DiskConfig::parse("path=/img").unwrap();
        assert_eq!((d.readonly, d.cache), (false, DiskCache::Writeback));
    }

    #[test]
    fn bad_device_options_name_the_problem() {
        let e = DiskConfig::parse("readonly=on").unwrap_err();
        assert!(e.to_string().contains("needs path="), "{e}");
        let e = DiskConfig::parse("path=/a,speed=9").unwrap_err();
        assert!(e.to_string().contains("unknown key \"speed\""), "{e}");
        let e = DiskConfig::parse("path=/a,path=/b").unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = DiskConfig::parse("path=/a,cache=none").unwrap_err();
        assert!(e.to_string().contains("writeback or unsafe"), "{e}");
        let e = NetConfig::parse("tap=this-name-is-too-long").unwrap_err();
        assert!(e.to_string().contains("15 characters"), "{e}");
        let e = NetConfig::parse("tap=t0,mac=01:00:00:00:00:01").unwrap_err();
        assert!(e.to_string().contains("not multicast"), "{e}");
        let e = VsockConfig::parse("cid=2,uds=/s").unwrap_err();
        assert!(e.to_string().contains("from 3"), "{e}");
        let e = VsockConfig::parse("cid=3").unwrap_err();
        assert!(e.to_string().contains("uds="), "{e}");
    }

    #[test]
    fn vhost_user_net_options_parse_and_name_problems() {
        let n =
            NetOption::parse("vhost-user=/run/pmd.sock,mode=server,queues=1,mac=02:00:00:00:00:09")
                .unwrap();
        let NetOption::VhostUser(v) = n else {
            panic!("not vhost-user: {n:?}");
        };
        assert_eq!(v.socket, PathBuf::from("/run/pmd.sock"));
        assert_eq!(v.mode, VhostUserMode::Server);
        assert_eq!(v.queues, 1);
        assert_eq!(v.mac_bytes(), Some([2, 0, 0, 0, 0, 9]));
        let NetOption::VhostUser(v) = NetOption::parse("vhost-user=/s").unwrap() else {
            panic!("not vhost-user");
        };
        assert_eq!((v.mode, v.queues, v.mac), (VhostUserMode::Client, 1, None));
        assert!(matches!(
            NetOption::parse("tap=t0").unwrap(),
            NetOption::Tap(_)
        ));
        let e = NetOption::parse("vhost-user=/s,mode=both").unwrap_err();
        assert!(e.to_string().contains("client"), "{e}");
        let NetOption::VhostUser(v) = NetOption::parse("vhost-user=/s,queues=4").unwrap() else {
            panic!("not vhost-user");
        };
        assert_eq!(v.queues, 4);
        for bad in ["0", "9", "two"] {
            let e = NetOption::parse(&format!("vhost-user=/s,queues={bad}")).unwrap_err();
            assert!(e.to_string().contains("from 1 to 8"), "{e}");
        }
        let e = NetOption::parse("vhost-user=/s,tap=t0").unwrap_err();
        assert!(e.to_string().contains("unknown key \"tap\""), "{e}");
        let e = NetOption::parse("vhost-user=").unwrap_err();
        assert!(e.to_string().contains("Unix socket"), "{e}");
    }

    #[test]
    fn net_and_vsock_options_parse() {
        let n = NetConfig::parse("tap=tap0,mac=02:aa:bb:cc:dd:ee").unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac_bytes(), Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]));
        let v = VsockConfig::parse("cid=3,uds=/tmp/v.sock").unwrap();
        assert_eq!((v.cid, v.uds), (3, PathBuf::from("/tmp/v.sock")));
    }
}
