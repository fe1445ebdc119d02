//! `--resource-limit NAME=VALUE`: resource limits the jailed VMM starts with.

use super::cgroup::parse_size;

/// Errors of `--resource-limit`.
#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    #[error("--resource-limit {0:?} is not NAME=VALUE; write e.g. --resource-limit no-file=1024")]
    NotNameValue(String),
    #[error("--resource-limit name {0:?} is unknown; use no-file, fsize, nproc, as, core, memlock, stack or cpu")]
    UnknownName(String),
    #[error("--resource-limit {name}={value:?} is not a number (K, M, G suffixes allowed) or unlimited; fix the value")]
    BadValue { name: String, value: String },
    #[error("cannot set resource limit {name} to {value}: {source}; lower the value")]
    Set {
        name: &'static str,
        value: u64,
        #[source]
        source: std::io::Error,
    },
}

/// A resource the jailer can limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// The `--resource-limit` name (Firecracker's jailer names where it has one).
    pub name: &'static str,
    /// The `RLIMIT_*` constant.
    pub id: libc::__rlimit_resource_t,
}

/// Every resource `--resource-limit` accepts.
pub const RESOURCES: [Resource; 8] = [
    Resource {
        name: "no-file",
        id: libc::RLIMIT_NOFILE,
    },
    Resource {
        name: "fsize",
        id: libc::RLIMIT_FSIZE,
    },
    Resource {
        name: "nproc",
        id: libc::RLIMIT_NPROC,
    },
    Resource {
        name: "as",
        id: libc::RLIMIT_AS,
    },
    Resource {
        name: "core",
        id: libc::RLIMIT_CORE,
    },
    Resource {
        name: "memlock",
        id: libc::RLIMIT_MEMLOCK,
    },
    Resource {
        name: "stack",
        id: libc::RLIMIT_STACK,
    },
    Resource {
        name: "cpu",
        id: libc::RLIMIT_CPU,
    },
];

/// The open-file limit the jail gets when `--resource-limit no-file=...` is not given.
pub const DEFAULT_NO_FILE: u64 = 2048;

/// One limit: soft and hard are both set to `value` (`RLIM_INFINITY` for unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimit {
    pub resource: Resource,
    pub value: u64,
}

/// Parses the settings; a later setting of the same resource wins. `no-file` defaults to
/// [`DEFAULT_NO_FILE`].
pub fn parse_all<S: AsRef<str>>(settings: &[S]) -> Result<Vec<ResourceLimit>, RlimitError> {
    let mut limits: Vec<ResourceLimit> = Vec::new();
    for s in settings {
        let s = s.as_ref();
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| RlimitError::NotNameValue(s.to_string()))?;
        let (name, value) = (name.trim(), value.trim());
        let resource = RESOURCES
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| RlimitError::UnknownName(name.to_string()))?;
        let value = if value == "unlimited" {
            libc::RLIM_INFINITY
        } else {
            parse_size(value).ok_or_else(|| RlimitError::BadValue {
                name: name.to_string(),
                value: value.to_string(),
            })?
        };
        limits.retain(|l| l.resource != resource);
        limits.push(ResourceLimit { resource, value });
    }
    if !limits.iter().any(|l| l.resource.id == libc::RLIMIT_NOFILE) {
        limits.push(ResourceLimit {
            resource: RESOURCES[0],
            value: DEFAULT_NO_FILE,
        });
    }
    Ok(limits)
}

impl ResourceLimit {
    /// Sets the calling process's limit.
    pub fn apply(&self) -> Result<(), RlimitError> {
        let lim = libc::rlimit {
            rlim_cur: self.value,
            rlim_max: self.value,
        };
        // SAFETY: setrlimit reads the rlimit struct we pass by pointer; it lives across the call.
        let rc = unsafe { libc::setrlimit(self.resource.id, &lim) };
        if rc != 0 {
            return Err(RlimitError::Set {
                name: self.resource.name,
                value: self.value,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_defaults_and_later_settings_win() {
        let l = parse_all::<&str>(&[]).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].resource.id, libc::RLIMIT_NOFILE);
        assert_eq!(l[0].value, DEFAULT_NO_FILE);
        let l = parse_all(&["no-file=10", "fsize=1M", "no-file=1024", "core=unlimited"]).unwrap();
        let get = |n: &str| l.iter().find(|x| x.resource.name == n).map(|x| x.value);
        assert_eq!(get("no-file"), Some(1024));
        assert_eq!(get("fsize"), Some(1 << 20));
        assert_eq!(get("core"), Some(libc::RLIM_INFINITY));
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn bad_limits_are_refused() {
        assert!(matches!(
            parse_all(&["files=3"]),
            Err(RlimitError::UnknownName(n)) if n == "files"
        ));
        assert!(matches!(
            parse_all(&["fsize=big"]),
            Err(RlimitError::BadValue { .. })
        ));
        assert!(matches!(
            parse_all(&["fsize"]),
            Err(RlimitError::NotNameValue(_))
        ));
    }
}
