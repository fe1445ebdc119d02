//! A Debian cloud kernel and its KVM modules, downloaded once with apt and cached.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use super::builder::ScratchDir;
use super::command::{run, stdout_of};
use super::{cache_dir, NestedError, Result};

const PREFIX: &str = "linux-image-6.1.0-";
const SUFFIX: &str = "-cloud-amd64";
/// The modules L1 loads, in `insmod` order, by path under `lib/modules/<release>/kernel/`:
/// the ones that give `/dev/kvm` on an AMD CPU, and TUN for the TAP devices of the L2 guests.
const MODULES: [&str; 4] = [
    "virt/lib/irqbypass",
    "arch/x86/kvm/kvm",
    "arch/x86/kvm/kvm-amd",
    "drivers/net/tun",
];
/// The modules an L2 guest loads to use edgevisor's virtio-mmio devices, in `insmod` order
/// (the cloud kernel builds the whole virtio stack as modules, and finds virtio-mmio devices
/// through ACPI only: it has no CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
const GUEST_MODULES: [&str; 8] = [
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_mmio",
    "drivers/block/virtio_blk",
    "drivers/char/hw_random/virtio-rng",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
];
/// The VFIO stack L1 loads to pass QEMU's edu device through to an L2 guest, in `insmod`
/// order (irqbypass, which vfio-pci-core also needs, is loaded with KVM). The cloud kernel
/// builds them as modules and the Intel IOMMU driver in (it has no AMD IOMMU driver).
const VFIO_MODULES: [&str; 5] = [
    "drivers/vfio/vfio",
    "drivers/vfio/vfio_iommu_type1",
    "drivers/vfio/vfio_virqfd",
    "drivers/vfio/pci/vfio-pci-core",
    "drivers/vfio/pci/vfio-pci",
];
const COMPLETE: &str = "complete";

/// A Debian `linux-image-*-cloud-amd64` kernel unpacked into the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianKernel {
    /// The package name, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// The package version, e.g. `6.1.192-2`.
    pub version: String,
    /// The kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// `irqbypass.ko`, `kvm.ko`, `kvm-amd.ko`, `tun.ko` (uncompressed), in the order to load
    /// them in L1.
    pub modules: Vec<PathBuf>,
    /// The virtio stack for an L2 guest (uncompressed), in the order to load them.
    pub guest_modules: Vec<PathBuf>,
    /// The VFIO stack for L1 (uncompressed), in the order to load them.
    pub vfio_modules: Vec<PathBuf>,
}

/// The ABI number of `linux-image-6.1.0-<N>-cloud-amd64`, if `name` is exactly such a package.
fn abi_of(name: &str) -> Option<u32> {
    let abi = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if abi.is_empty() || !abi.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    abi.parse().ok()
}

/// The name with the highest ABI number among `linux-image-6.1.0-<N>-cloud-amd64` packages.
pub(crate) fn newest_cloud_kernel<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names
        .into_iter()
        .filter_map(|n| abi_of(n.trim()).map(|abi| (abi, n.trim())))
        .max_by_key(|(abi, _)| *abi)
        .map(|(_, name)| name)
}

/// The candidate version apt would download for `package`, if any.
fn candidate_version(package: &str) -> Option<String> {
    let text =
        stdout_of(Command::new("apt-cache").args(["show", "--no-all-versions", package])).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The package to use and its version, asking apt (only local lists, no network).
fn choose_package() -> Result<(String, String)> {
    let pattern = format!("{PREFIX}<N>{SUFFIX}");
    if let Some(name) = std::env::var("EDGEVISOR_NESTED_KERNEL_PKG")
        .ok()
        .filter(|n| !n.trim().is_empty())
    {
        let name = name.trim().to_string();
        let version = candidate_version(&name).ok_or(NestedError::NoKernelPackage {
            pattern: name.clone(),
        })?;
        return Ok((name, version));
    }
    let names = stdout_of(Command::new("apt-cache").args(["pkgnames", PREFIX])).map_err(|_| {
        NestedError::NoKernelPackage {
            pattern: pattern.clone(),
        }
    })?;
    let mut candidates: Vec<&str> = names
        .lines()
        .filter(|n| abi_of(n.trim()).is_some())
        .collect();
    // Newest first; an old name may linger in the lists without an installable version.
    while let Some(name) = newest_cloud_kernel(candidates.iter().copied()) {
        if let Some(version) = candidate_version(name) {
            return Ok((name.to_string(), version));
        }
        candidates.retain(|n| n.trim() != name);
    }
    Err(NestedError::NoKernelPackage { pattern })
}

/// A file name usable for the cache entry of `package` at `version` (`:` of epochs replaced).
fn entry_name(package: &str, version: &str) -> String {
    format!("{package}_{}", version.replace([':', '/'], "_"))
}

impl DebianKernel {
    /// The newest `linux-image-6.1.0-*-cloud-amd64` apt knows (or `EDGEVISOR_NESTED_KERNEL_PKG`),
    /// from the cache under [`cache_dir`], downloading and unpacking it the first time.
    pub fn ensure() -> Result<DebianKernel> {
        DebianKernel::ensure_in(&cache_dir())
    }

    /// Like [`DebianKernel::ensure`] with the cache at `cache`. Safe to call from several
    /// processes at once: each unpacks into its own scratch directory and renames it into place.
    pub fn ensure_in(cache: &Path) -> Result<DebianKernel> {
        let (package, version) = match choose_package() {
            Ok(chosen) => chosen,
            // Offline or without apt lists, unless a package was named: the newest kernel
            // already in the cache will do.
            Err(err) if std::env::var_os("EDGEVISOR_NESTED_KERNEL_PKG").is_none() => {
                return DebianKernel::newest_cached(cache).ok_or(err);
            }
            Err(err) => return Err(err),
        };
        let entry = cache.join(entry_name(&package, &version));
        if let Some(found) = DebianKernel::load(&entry, &package, &version) {
            return Ok(found);
        }
        std::fs::create_dir_all(cache).map_err(|e| NestedError::io(cache, e))?;
        let scratch = ScratchDir::new_in(cache, "download")?;
        let staged = unpack(scratch.path(), &package)?;
        // An entry that exists but does not load was made by an older edgevisor that staged
        // fewer files: replace it.
        if entry.exists() && DebianKernel::load(&entry, &package, &version).is_none() {
            std::fs::remove_dir_all(&entry).map_err(|e| NestedError::io(&entry, e))?;
        }
        if let Err(err) = std::fs::rename(&staged, &entry) {
            // Another process may have finished first; its copy is as good as ours.
            if DebianKernel::load(&entry, &package, &version).is_none() {
                return Err(NestedError::io(&entry, err));
            }
        }
        DebianKernel::load(&entry, &package, &version).ok_or_else(|| {
            NestedError::MissingInPackage {
                package,
                what: format!("complete cache entry at {}", entry.display()),
            }
        })
    }

    /// The kernel cached in `entry`, if that entry was completed.
    fn load(entry: &Path, package: &str, version: &str) -> Option<DebianKernel> {
        if !entry.join(COMPLETE).is_file() {
            return None;
        }
        let release = std::fs::read_to_string(entry.join("release")).ok()?;
        let staged = |list: &[&str]| -> Vec<PathBuf> {
            list.iter()
                .map(|m| entry.join(format!("{}.ko", module_name(m))))
                .collect()
        };
        let modules = staged(&MODULES);
        let guest_modules = staged(&GUEST_MODULES);
        let vfio_modules = staged(&VFIO_MODULES);
        let vmlinuz = entry.join("vmlinuz");
        let all_there = modules
            .iter()
            .chain(&guest_modules)
            .chain(&vfio_modules)
            .all(|m| m.is_file());
        if !vmlinuz.is_file() || !all_there {
            return None;
        }
        Some(DebianKernel {
            package: package.to_string(),
            version: version.to_string(),
            release: release.trim().to_string(),
            vmlinuz,
            modules,
            guest_modules,
            vfio_modules,
        })
    }

    /// The newest complete kernel in the cache, whatever apt says.
    fn newest_cached(cache: &Path) -> Option<DebianKernel> {
        let dir = std::fs::read_dir(cache).ok()?;
        let mut entries: Vec<(u32, String, String, PathBuf)> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (package, version) = name.split_once('_')?;
                Some((
                    abi_of(package)?,
                    package.to_string(),
                    version.to_string(),
                    e.path(),
                ))
            })
            .collect();
        entries.sort_by_key(|(abi, ..)| std::cmp::Reverse(*abi));
        entries
            .iter()
            .find_map(|(_, package, version, path)| DebianKernel::load(path, package, version))
    }
}

/// `arch/x86/kvm/kvm-amd` -> `kvm-amd`.
fn module_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Downloads `package` into `work`, unpacks it and stages vmlinuz, the modules and the release
/// name in `work/out`, which it returns.
fn unpack(work: &Path, package: &str) -> Result<PathBuf> {
    let missing = |what: String| NestedError::MissingInPackage {
        package: package.to_string(),
        what,
    };
    run(Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(work))?;
    let deb = std::fs::read_dir(work)
        .map_err(|e| NestedError::io(work, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| missing(".deb file after apt-get download".to_string()))?;
    let root = work.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;

    let modules_root = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.is_dir())
        .ok_or_else(|| missing("lib/modules directory".to_string()))?;
    let release = std::fs::read_dir(&modules_root)
        .map_err(|e| NestedError::io(&modules_root, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| missing("kernel release under lib/modules".to_string()))?;

    let out = work.join("out");
    std::fs::create_dir(&out).map_err(|e| NestedError::io(&out, e))?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        return Err(missing(format!("boot/vmlinuz-{release}")));
    }
    copy(&vmlinuz, &out.join("vmlinuz"))?;
    let kernel_dir = modules_root.join(&release).join("kernel");
    for module in MODULES.iter().chain(&GUEST_MODULES).chain(&VFIO_MODULES) {
        let target = out.join(format!("{}.ko", module_name(module)));
        let plain = kernel_dir.join(format!("{module}.ko"));
        let packed = kernel_dir.join(format!("{module}.ko.xz"));
        if plain.is_file() {
            copy(&plain, &target)?;
        } else if packed.is_file() {
            unxz(&packed, &target)?;
        } else {
            return Err(missing(format!("{module}.ko or {module}.ko.xz")));
        }
    }
    let write = |name: &str, text: &str| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| NestedError::io(&path, e))
    };
    write("release", &release)?;
    let deb_name = deb.file_name().map(|n| n.to_string_lossy().into_owned());
    write("package", &format!("{}\n", deb_name.unwrap_or_default()))?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    write(COMPLETE, &format!("{stamp}\n"))?;
    Ok(out)
}

/// Decompresses the xz file `from` into `to`.
fn unxz(from: &Path, to: &Path) -> Result<()> {
    let output = run(Command::new("xz").args(["-d", "-c"]).arg(from))?;
    std::fs::write(to, output.stdout).map_err(|e| NestedError::io(to, e))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| NestedError::io(from, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_cloud_kernel_wins_by_abi_number_not_by_text() {
        let names = [
            "linux-image-6.1.0-9-cloud-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.1.0-56-cloud-amd64-dbg",
            "linux-image-6.1.0-57-cloud-amd64-unsigned",
            "linux-image-6.1.0-60-amd64",
            "linux-image-6.1.0-55-cloud-amd64",
        ];
        assert_eq!(
            newest_cloud_kernel(names),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            newest_cloud_kernel(["linux-image-6.1.0--cloud-amd64"]),
            None
        );
    }

    #[test]
    fn xz_compressed_modules_are_unpacked() {
        let scratch = ScratchDir::new_in(&std::env::temp_dir(), "xz-unit").expect("scratch");
        let module = scratch.path().join("m.ko");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 13) as u8).collect();
        std::fs::write(&module, &bytes).expect("write");
        run(Command::new("xz").arg(&module)).expect("xz compresses");
        let packed = scratch.path().join("m.ko.xz");
        assert!(packed.is_file() && !module.exists());
        let out = scratch.path().join("out.ko");
        unxz(&packed, &out).expect("unxz");
        assert_eq!(std::fs::read(&out).expect("read"), bytes);
        let err = unxz(&out, &scratch.path().join("bad")).expect_err("not xz");
        assert!(matches!(err, NestedError::CommandFailed { .. }), "{err}");
    }

    #[test]
    fn cache_entry_names_have_no_epoch_colon() {
        assert_eq!(
            entry_name("linux-image-x", "1:6.1-2"),
            "linux-image-x_1_6.1-2"
        );
    }
}
