#!/usr/bin/env bash
# Installs the Debian packages edgevisor's test suite needs; safe to run again and again.
#
#   qemu-system-x86  boots the L1 guest (TCG, emulated AMD CPU with SVM) for tests/tests/nested.rs
#   busybox-static   the userland of the L1 and L2 initramfs images
#   cpio             checks the initramfs writer (cpio -t) in the tests crate's unit tests
#   xz-utils         unpacks kernel modules shipped as .ko.xz
#   lz4              unpacks the ELF vmlinux from the Debian bzImage (its PVH and 64-bit ELF boots)
#   binutils         as/ld for the firmware guests; readelf finds the vmlinux's PVH note
#   dpkg             dpkg-deb unpacks the Debian kernel package that apt-get download fetches
#   libc-bin         ldd, to copy edgevisor's shared libraries into the L1 guest
#   acpica-tools     iasl disassembles our DSDT in vmm/tests/acpi_iasl.rs
#   iproute2         ip netns / ip link for the TAP tests in their own network namespaces
#   prometheus       promtool check metrics and a real Prometheus scraping the agent (agent/tests/metrics_*)
#   python3-prometheus-client  a strict OpenMetrics parser for agent/tests/metrics_promtool.rs
#   dpdk-dev         dpdk-testpmd, the real vhost-user back end for net-dpdk/tests
#   openvswitch-switch-dpdk  ovs-vswitchd-dpdk, a real OVS-DPDK bridge for vmm/tests/ovs_dpdk.rs
#
# apt-get update runs first so apt-cache knows the newest linux-image-6.1.0-*-cloud-amd64,
# which the nested tests download once into <target>/nested-cache/.
set -euo pipefail

packages=(qemu-system-x86 busybox-static cpio xz-utils lz4 binutils dpkg libc-bin ca-certificates acpica-tools iproute2 prometheus python3-prometheus-client dpdk-dev openvswitch-switch-dpdk)

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-test-deps: run this as root (or install sudo)" >&2
        exit 1
    fi
    sudo=(sudo)
fi

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

echo "install-test-deps: apt-get update"
if ! "${sudo[@]}" apt-get update -q; then
    if [ ${#missing[@]} -ne 0 ]; then
        echo "install-test-deps: apt-get update failed and ${missing[*]} are missing" >&2
        exit 1
    fi
    echo "install-test-deps: apt-get update failed; the needed packages are installed, going on" >&2
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-test-deps: all of ${packages[*]} are installed"
else
    echo "install-test-deps: installing ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The nested tests need a static busybox (busybox-static replaces the dynamic busybox package).
if ! /bin/busybox --list >/dev/null 2>&1 || ldd /bin/busybox >/dev/null 2>&1; then
    echo "install-test-deps: /bin/busybox is missing or not static after installing busybox-static" >&2
    exit 1
fi
kernels=$(apt-cache pkgnames linux-image-6.1.0- 2>/dev/null || true)
if ! grep -Eq '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' <<<"$kernels"; then
    echo "install-test-deps: warning: apt knows no linux-image-6.1.0-*-cloud-amd64 package;" \
        "the nested tests need Debian 12 (bookworm) package lists" >&2
fi
