//! What the user asks for: `--mem 512M,hugepages=2M,node=0,prefault=on,shared=on` and
//! `--cpus 2,pin=4-5`.

use std::fmt;
use std::str::FromStr;

use crate::cpuset::{parse_cpu_list_ordered, CpuListError};

/// The most vCPUs a `CpuSpec` may ask for (KVM's own limit on x86_64 is at most this; the VMM
/// checks KVM_CAP_MAX_VCPUS for the real figure).
pub const MAX_VCPUS: u32 = 4096;

/// Errors from parsing `--mem` and `--cpus` values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The value is empty.
    #[error("{option} is empty: {expected}")]
    Empty {
        /// "--mem" or "--cpus".
        option: &'static str,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// The leading size is not a size.
    #[error(
        "--mem size {0:?} is not a size: write a whole number of MiB or GiB such as 512M or 2G"
    )]
    BadSize(String),
    /// The size is zero.
    #[error("--mem size is zero: give the guest at least 1M of memory")]
    ZeroSize,
    /// The size is not a multiple of the page size.
    #[error(
        "--mem size {size_mib}M is not a multiple of the {page} hugepage size: \
         round it to a multiple of {page}"
    )]
    SizeNotPageMultiple {
        /// Size asked for.
        size_mib: u64,
        /// Page size label ("2M", "1G").
        page: &'static str,
    },
    /// A `key=value` part has no `=`.
    #[error("{option} part {part:?} is not key=value: write for example {example}")]
    NotKeyValue {
        /// "--mem" or "--cpus".
        option: &'static str,
        /// The offending part.
        part: String,
        /// A valid example.
        example: &'static str,
    },
    /// A key is not known.
    #[error("{option} has no key {key:?}: valid keys are {valid}")]
    UnknownKey {
        /// "--mem" or "--cpus".
        option: &'static str,
        /// The offending key.
        key: String,
        /// The valid keys.
        valid: &'static str,
    },
    /// A key is given twice.
    #[error("{option} gives {key}= twice: keep one")]
    DuplicateKey {
        /// "--mem" or "--cpus".
        option: &'static str,
        /// The repeated key.
        key: String,
    },
    /// A value is not valid for its key.
    #[error("{option} {key}={value:?} is not valid: {expected}")]
    BadValue {
        /// "--mem" or "--cpus".
        option: &'static str,
        /// The key.
        key: &'static str,
        /// The offending value.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// The vCPU count is not a positive number.
    #[error(
        "--cpus count {0:?} is not a positive number of vCPUs: write for example 2 or 2,pin=4-5"
    )]
    BadCount(String),
    /// The `pin=` list is not a CPU list.
    #[error("--cpus pin=: {0}")]
    PinList(#[source] CpuListError),
    /// The `pin=` list does not name one CPU per vCPU.
    #[error(
        "--cpus asks for {count} vCPUs but pin= names {pinned} host CPUs: \
         list exactly one host CPU per vCPU, e.g. pin=4-{example_last}"
    )]
    PinCountMismatch {
        /// vCPUs asked for.
        count: u32,
        /// CPUs listed.
        pinned: usize,
        /// Last CPU of an example list starting at 4.
        example_last: u32,
    },
    /// More vCPUs than any KVM accepts.
    #[error("--cpus asks for {0} vCPUs, more than the {MAX_VCPUS} a VM can have: give fewer")]
    TooManyVcpus(u32),
    /// The `pin=` list names a CPU twice.
    #[error("--cpus pin= names host CPU {0} twice: give each vCPU its own host CPU")]
    PinDuplicate(u32),
}

/// Hugepage size for guest memory.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum HugePages {
    /// Normal pages (4 KiB on x86_64).
    #[default]
    #[serde(rename = "None", alias = "none")]
    None,
    /// 2 MiB hugepages.
    #[serde(rename = "2M")]
    Size2M,
    /// 1 GiB hugepages.
    #[serde(rename = "1G")]
    Size1G,
}

impl HugePages {
    /// Hugepage size in KiB, or `None` for normal pages.
    pub fn page_size_kib(self) -> Option<u64> {
        match self {
            HugePages::None => None,
            HugePages::Size2M => Some(2048),
            HugePages::Size1G => Some(1 << 20),
        }
    }

    /// The page size in bytes the mapping will use (the host base page for `None`).
    pub fn page_size_bytes(self) -> u64 {
        self.page_size_kib()
            .map(|kib| kib * 1024)
            .unwrap_or_else(crate::memory::host_page_size)
    }

    /// "none", "2M" or "1G".
    pub fn label(self) -> &'static str {
        match self {
            HugePages::None => "none",
            HugePages::Size2M => "2M",
            HugePages::Size1G => "1G",
        }
    }
}

impl fmt::Display for HugePages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for HugePages {
    type Err = SpecError;

    /// Accepts "none"/"off", "2M"/"2MiB"/"2048K" and "1G"/"1GiB", in any case (so Firecracker's
    /// `huge_pages` values "None" and "2M" parse too).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "off" => Ok(HugePages::None),
            "2m" | "2mib" | "2mb" | "2048k" | "2048kb" => Ok(HugePages::Size2M),
            "1g" | "1gib" | "1gb" | "1024m" => Ok(HugePages::Size1G),
            _ => Err(SpecError::BadValue {
                option: "--mem",
                key: "hugepages",
                value: s.to_string(),
                expected: "use hugepages=none, hugepages=2M or hugepages=1G",
            }),
        }
    }
}

/// Guest memory as asked for with `--mem`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemorySpec {
    /// Guest RAM in MiB.
    pub size_mib: u64,
    /// Page size backing guest RAM.
    #[serde(default)]
    pub hugepages: HugePages,
    /// NUMA node to bind guest RAM to (mbind MPOL_BIND), or none to leave it to the kernel.
    #[serde(default)]
    pub node: Option<u32>,
    /// Populate every page before the guest starts.
    #[serde(default)]
    pub prefault: bool,
    /// Back guest RAM with a memfd mapped shared, so another process (a vhost-user back end)
    /// can map it.
    #[serde(default)]
    pub shared: bool,
}

const MEM_KEYS: &str = "hugepages, node, prefault, shared";
const MEM_EXAMPLE: &str = "512M,hugepages=2M,node=0,prefault=on,shared=on";

impl MemorySpec {
    /// A spec for `size_mib` MiB of private, normal-page memory, not bound, not prefaulted.
    pub fn new(size_mib: u64) -> Self {
        MemorySpec {
            size_mib,
            hugepages: HugePages::None,
            node: None,
            prefault: false,
            shared: false,
        }
    }

    /// Parses the `--mem` syntax: a size first (`512M`, `2G`, or a bare number of MiB), then
    /// optional `hugepages=none|2M|1G`, `node=N`, `prefault=on|off`, `shared=on|off`.
    pub fn parse(value: &str) -> Result<Self, SpecError> {
        let mut parts = value.split(',');
        let size = parts.next().unwrap_or("").trim();
        if size.is_empty() {
            return Err(SpecError::Empty {
                option: "--mem",
                expected: "give a size such as 512M, optionally followed by ,hugepages=2M,node=0,prefault=on,shared=on",
            });
        }
        let mut spec = MemorySpec::new(parse_size_mib(size)?);
        let mut seen: Vec<&str> = Vec::new();
        for part in parts {
            let (key, value) = split_key_value("--mem", part, MEM_EXAMPLE)?;
            if seen.contains(&key) {
                return Err(SpecError::DuplicateKey {
                    option: "--mem",
                    key: key.to_string(),
                });
            }
            seen.push(key);
            match key {
                "hugepages" => spec.hugepages = value.parse()?,
                "node" => {
                    spec.node = Some(value.parse().map_err(|_| SpecError::BadValue {
                        option: "--mem",
                        key: "node",
                        value: value.to_string(),
                        expected: "give a NUMA node number such as node=0 (see `edgevisor node`)",
                    })?)
                }
                "prefault" => spec.prefault = parse_switch("prefault", value)?,
                "shared" => spec.shared = parse_switch("shared", value)?,
                _ => {
                    return Err(SpecError::UnknownKey {
                        option: "--mem",
                        key: key.to_string(),
                        valid: MEM_KEYS,
                    })
                }
            }
        }
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the size against the page size (also for specs built in code or from JSON).
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.size_mib == 0 {
            return Err(SpecError::ZeroSize);
        }
        if let Some(kib) = self.hugepages.page_size_kib() {
            if (self.size_mib * 1024) % kib != 0 {
                return Err(SpecError::SizeNotPageMultiple {
                    size_mib: self.size_mib,
                    page: self.hugepages.label(),
                });
            }
        }
        Ok(())
    }

    /// Guest RAM in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_mib << 20
    }

    /// The mapping options this spec asks for (everything but the size, which the VMM splits
    /// into guest-physical ranges).
    pub fn options(&self) -> crate::memory::MemoryOptions {
        crate::memory::MemoryOptions {
            backing: if self.shared {
                crate::memory::GuestMemoryBacking::Memfd(self.hugepages)
            } else if self.hugepages == HugePages::None {
                crate::memory::GuestMemoryBacking::Anonymous
            } else {
                crate::memory::GuestMemoryBacking::HugeTlb(self.hugepages)
            },
            node: self.node,
            prefault: self.prefault,
        }
    }
}

impl FromStr for MemorySpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for MemorySpec {
    /// Writes the `--mem` syntax, which [`MemorySpec::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}M,hugepages={}", self.size_mib, self.hugepages)?;
        if let Some(node) = self.node {
            write!(f, ",node={node}")?;
        }
        let on = |b: bool| if b { "on" } else { "off" };
        write!(
            f,
            ",prefault={},shared={}",
            on(self.prefault),
            on(self.shared)
        )
    }
}

/// Parses "512M", "512MiB", "2G", "2GiB" or a bare "512" (MiB) into MiB.
fn parse_size_mib(size: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::BadSize(size.to_string());
    let lower = size.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    if number.is_empty() {
        return Err(bad());
    }
    let number: u64 = number.parse().map_err(|_| bad())?;
    let factor = match unit.trim() {
        "" | "m" | "mib" | "mb" => 1,
        "g" | "gib" | "gb" => 1024,
        _ => return Err(bad()),
    };
    let mib = number.checked_mul(factor).ok_or_else(bad)?;
    // Sizes are turned into byte counts later; keep them far from overflow.
    if mib > (1 << 40) {
        return Err(bad());
    }
    Ok(mib)
}

fn split_key_value<'a>(
    option: &'static str,
    part: &'a str,
    example: &'static str,
) -> Result<(&'a str, &'a str), SpecError> {
    part.split_once('=')
        .map(|(k, v)| (k.trim(), v.trim()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| SpecError::NotKeyValue {
            option,
            part: part.to_string(),
            example,
        })
}

fn parse_switch(key: &'static str, value: &str) -> Result<bool, SpecError> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(SpecError::BadValue {
            option: "--mem",
            key,
            value: value.to_string(),
            expected: "use on or off",
        }),
    }
}

/// vCPUs as asked for with `--cpus`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuSpec {
    /// Number of vCPUs.
    pub count: u32,
    /// Host CPU for each vCPU, in vCPU order; `None` to place them on the memory's node.
    #[serde(default)]
    pub pin: Option<Vec<u32>>,
}

impl CpuSpec {
    /// Parses the `--cpus` syntax: a count first, then optional `pin=<CPU list>` naming one
    /// host CPU per vCPU in order ("2,pin=4-5": vCPU 0 on CPU 4, vCPU 1 on CPU 5).
    pub fn parse(value: &str) -> Result<Self, SpecError> {
        let mut parts = value.split(',');
        let count_text = parts.next().unwrap_or("").trim();
        if count_text.is_empty() {
            return Err(SpecError::Empty {
                option: "--cpus",
                expected: "give a vCPU count such as 2, optionally followed by ,pin=4-5",
            });
        }
        let count: u32 = count_text
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| SpecError::BadCount(count_text.to_string()))?;
        // The pin list itself contains commas ("pin=4,6"): everything after "pin=" is the list.
        let rest: Vec<&str> = parts.collect();
        let mut pin = None;
        if let Some(first) = rest.first() {
            let (key, _) = split_key_value("--cpus", first, "2,pin=4-5")?;
            if key != "pin" {
                return Err(SpecError::UnknownKey {
                    option: "--cpus",
                    key: key.to_string(),
                    valid: "pin",
                });
            }
            let list = rest.join(",");
            let list = list
                .split_once('=')
                .map(|(_, v)| v.trim())
                .unwrap_or_default();
            if list.split(',').any(|p| p.contains('=')) {
                let dup = list.split(',').find(|p| p.contains('=')).unwrap_or("");
                let key = dup.split('=').next().unwrap_or("").trim();
                return Err(if key == "pin" {
                    SpecError::DuplicateKey {
                        option: "--cpus",
                        key: key.to_string(),
                    }
                } else {
                    SpecError::UnknownKey {
                        option: "--cpus",
                        key: key.to_string(),
                        valid: "pin (which must come last)",
                    }
                });
            }
            pin = Some(parse_cpu_list_ordered(list).map_err(SpecError::PinList)?);
        }
        let spec = CpuSpec { count, pin };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the count (1 to [`MAX_VCPUS`]) and that `pin` names exactly one distinct CPU
    /// per vCPU.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.count == 0 {
            return Err(SpecError::BadCount("0".to_string()));
        }
        if self.count > MAX_VCPUS {
            return Err(SpecError::TooManyVcpus(self.count));
        }
        if let Some(pin) = &self.pin {
            if pin.len() != self.count as usize {
                return Err(SpecError::PinCountMismatch {
                    count: self.count,
                    pinned: pin.len(),
                    example_last: 3 + self.count,
                });
            }
            for (i, cpu) in pin.iter().enumerate() {
                if pin[..i].contains(cpu) {
                    return Err(SpecError::PinDuplicate(*cpu));
                }
            }
        }
        Ok(())
    }
}

impl FromStr for CpuSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_mem_spec() {
        let spec = MemorySpec::parse("512M,hugepages=2M,node=0,prefault=on,shared=on").unwrap();
        assert_eq!(
            spec,
            MemorySpec {
                size_mib: 512,
                hugepages: HugePages::Size2M,
                node: Some(0),
                prefault: true,
                shared: true,
            }
        );
        assert_eq!(spec.size_bytes(), 512 << 20);
        assert_eq!(spec.to_string().parse::<MemorySpec>().unwrap(), spec);
    }

    #[test]
    fn size_forms() {
        assert_eq!(MemorySpec::parse("2G").unwrap().size_mib, 2048);
        assert_eq!(MemorySpec::parse("3GiB").unwrap().size_mib, 3072);
        assert_eq!(MemorySpec::parse("128").unwrap().size_mib, 128);
        assert_eq!(MemorySpec::parse("64MiB").unwrap().size_mib, 64);
        let plain = MemorySpec::parse("256M").unwrap();
        assert_eq!(plain, MemorySpec::new(256));
        for bad in ["M", "12T", "1.5G", "-5M", "x", "99999999999999999999G"] {
            assert!(
                matches!(MemorySpec::parse(bad), Err(SpecError::BadSize(ref s)) if s == bad),
                "{bad}"
            );
        }
        assert_eq!(MemorySpec::parse("0M").unwrap_err(), SpecError::ZeroSize);
        assert!(matches!(
            MemorySpec::parse(",node=0").unwrap_err(),
            SpecError::Empty { .. }
        ));
    }

    #[test]
    fn size_must_be_page_multiple() {
        let err = MemorySpec::parse("513M,hugepages=2M").unwrap_err();
        assert_eq!(
            err,
            SpecError::SizeNotPageMultiple {
                size_mib: 513,
                page: "2M"
            }
        );
        assert!(err.to_string().contains("513M"), "{err}");
        assert!(MemorySpec::parse("1536M,hugepages=1G").is_err());
        assert_eq!(
            MemorySpec::parse("2G,hugepages=1G").unwrap().hugepages,
            HugePages::Size1G
        );
        assert!(MemorySpec::parse("513M").is_ok());
    }

    #[test]
    fn bad_keys_and_values_name_the_part() {
        let err = MemorySpec::parse("512M,hugepage=2M").unwrap_err();
        assert!(matches!(err, SpecError::UnknownKey { ref key, .. } if key == "hugepage"));
        assert!(err
            .to_string()
            .contains("hugepages, node, prefault, shared"));
        let err = MemorySpec::parse("512M,hugepages=4M").unwrap_err();
        assert!(
            matches!(err, SpecError::BadValue { key: "hugepages", ref value, .. } if value == "4M")
        );
        assert!(matches!(
            MemorySpec::parse("512M,node=x").unwrap_err(),
            SpecError::BadValue { key: "node", .. }
        ));
        assert!(matches!(
            MemorySpec::parse("512M,prefault=maybe").unwrap_err(),
            SpecError::BadValue {
                key: "prefault",
                ..
            }
        ));
        assert!(matches!(
            MemorySpec::parse("512M,prefault").unwrap_err(),
            SpecError::NotKeyValue { ref part, .. } if part == "prefault"
        ));
        assert!(matches!(
            MemorySpec::parse("512M,node=0,node=1").unwrap_err(),
            SpecError::DuplicateKey { ref key, .. } if key == "node"
        ));
    }

    #[test]
    fn hugepages_values() {
        assert_eq!("None".parse::<HugePages>().unwrap(), HugePages::None);
        assert_eq!("2M".parse::<HugePages>().unwrap(), HugePages::Size2M);
        assert_eq!("1GiB".parse::<HugePages>().unwrap(), HugePages::Size1G);
        assert_eq!(HugePages::Size2M.page_size_bytes(), 2 << 20);
        assert_eq!(HugePages::Size1G.page_size_kib(), Some(1 << 20));
        // Firecracker's machine-config.huge_pages values.
        let json: HugePages = serde_json::from_str("\"2M\"").unwrap();
        assert_eq!(json, HugePages::Size2M);
        let json: HugePages = serde_json::from_str("\"None\"").unwrap();
        assert_eq!(json, HugePages::None);
    }

    #[test]
    fn options_pick_the_backing() {
        use crate::memory::GuestMemoryBacking as B;
        let opts = MemorySpec::parse("64M,hugepages=2M,shared=on")
            .unwrap()
            .options();
        assert_eq!(opts.backing, B::Memfd(HugePages::Size2M));
        let opts = MemorySpec::parse("64M,hugepages=2M,node=1,prefault=on")
            .unwrap()
            .options();
        assert_eq!(opts.backing, B::HugeTlb(HugePages::Size2M));
        assert_eq!(opts.node, Some(1));
        assert!(opts.prefault);
        assert_eq!(
            MemorySpec::parse("64M").unwrap().options().backing,
            B::Anonymous
        );
    }

    #[test]
    fn cpu_spec() {
        assert_eq!(
            CpuSpec::parse("2,pin=4-5").unwrap(),
            CpuSpec {
                count: 2,
                pin: Some(vec![4, 5])
            }
        );
        assert_eq!(
            CpuSpec::parse("3,pin=7,2,5").unwrap().pin,
            Some(vec![7, 2, 5])
        );
        assert_eq!(
            CpuSpec::parse("4").unwrap(),
            CpuSpec {
                count: 4,
                pin: None
            }
        );
        for bad in ["0", "-1", "two", "", "99999999999"] {
            assert!(CpuSpec::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            CpuSpec::parse("4097").unwrap_err(),
            SpecError::TooManyVcpus(4097)
        );
        assert!(CpuSpec::parse("4096").is_ok());
        assert_eq!(
            CpuSpec::parse("4294967295,pin=1").unwrap_err(),
            SpecError::TooManyVcpus(u32::MAX)
        );
        let err = CpuSpec::parse("2,pin=4-6").unwrap_err();
        assert_eq!(
            err,
            SpecError::PinCountMismatch {
                count: 2,
                pinned: 3,
                example_last: 5
            }
        );
        assert!(err.to_string().contains("pin=4-5"), "{err}");
        assert_eq!(
            CpuSpec::parse("2,pin=4,4").unwrap_err(),
            SpecError::PinDuplicate(4)
        );
        assert!(matches!(
            CpuSpec::parse("2,pin=4-x").unwrap_err(),
            SpecError::PinList(_)
        ));
        assert!(matches!(
            CpuSpec::parse("2,pinned=4-5").unwrap_err(),
            SpecError::UnknownKey { ref key, .. } if key == "pinned"
        ));
        assert!(matches!(
            CpuSpec::parse("2,pin=4,pin=5").unwrap_err(),
            SpecError::DuplicateKey { .. }
        ));
        assert!(matches!(
            CpuSpec::parse("2,pin=4-5,node=1").unwrap_err(),
            SpecError::UnknownKey { ref key, .. } if key == "node"
        ));
    }
}
