#!/usr/bin/env bash
# Builds the whole edgevisor workspace for aarch64 (Raspberry Pi 4/5 and other arm64 edge
# boxes) and runs its unit tests under qemu-user. There is no arm64 machine with KVM here, so
# tests that need /dev/kvm or x86 guests are compiled out on aarch64 with
# #[cfg(target_arch = "x86_64")].
#
# rustup on this machine has only the x86_64 target and cannot download more, but Debian's
# own Rust toolchain ships the arm64 standard library as a package:
#
#   rustc-web, cargo-web             rustc/cargo 1.96 in /usr (linked as the `debian` toolchain)
#   libstd-rust-web-dev:arm64        the aarch64-unknown-linux-gnu standard library
#   gcc-aarch64-linux-gnu            the linker
#   libc6-dev-arm64-cross            arm64 glibc to link against
#   qemu-user-static                 qemu-aarch64-static runs the test binaries
#   rust-web-clippy                  clippy for the debian toolchain: lints the aarch64-only code
#
# The runner is qemu-aarch64-static WITHOUT `-L /usr/aarch64-linux-gnu`: with -L, threaded test
# binaries spin forever (QEMU_LD_PREFIX is the same thing, so it is not set either). The arm64
# loader and libc come from libc6:arm64, which libstd-rust-web-dev:arm64 pulls in.
#
# Usage: scripts/test-arm64.sh [extra cargo test args]
#   ARM64_BOOT=1      also boot a real arm64 Debian kernel with the aarch64 edgevisor, nested:
#                     qemu-system-aarch64 (TCG, virtualization=on, so its guest kernel has KVM)
#                     runs edgevisor, which boots the same kernel with 2 vCPUs, a virtio disk
#                     and rng, once on a GICv3 and once on a GICv2 (about 2 minutes each)
#   ARM64_RELEASE=1   test the release profile instead of debug
#   ARM64_CLIPPY=0    skip clippy
#   CARGO_TARGET_DIR_ARM64=dir   target dir (default target/arm64)
# Safe to run again and again; the last line is `test-arm64: PASS` or `test-arm64: FAIL`.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "test-arm64: run this as root (or install sudo)" >&2
        exit 1
    fi
    sudo=(sudo)
fi

started=$(date +%s)
packages=(rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu
    libc6-dev-arm64-cross qemu-user-static rust-web-clippy)

if [ "${ARM64_BOOT:-0}" = 1 ]; then
    packages+=(qemu-system-arm cpio)
fi
missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -ne 0 ]; then
    echo "test-arm64: installing ${missing[*]}"
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        "${sudo[@]}" dpkg --add-architecture arm64
    fi
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends \
        "${packages[@]}"
else
    echo "test-arm64: packages already installed"
fi

if ! rustup toolchain list | grep -q '^debian'; then
    echo "test-arm64: rustup toolchain link debian /usr"
    rustup toolchain link debian /usr
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_ARM64:-$PWD/target/arm64}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static
unset QEMU_LD_PREFIX
# The debug profile: measured faster end to end here (2 cores, cold target dir): clippy and
# test in debug took 3 min 15 s, `test --release` alone 10 min 20 s (thin LTO, one codegen
# unit); the unit tests themselves take seconds either way.
profile_args=()
if [ "${ARM64_RELEASE:-0}" = 1 ]; then
    profile_args=(--release)
fi

# Tests that need a real arm64 kernel under them, not qemu-user: they pass on a Pi, but here
# qemu-user has no mbind(2) and no MAP_HUGETLB at a fixed address (numa's host tests), the
# host's ldd / ld.so cannot list an arm64 binary's libraries (the jail and nested ELF helpers
# run them on the test binary itself), qemu-user's /proc/PID/stat has no CPU time for the
# process (agent metrics) and it does not translate KVM ioctls (the agent's capabilities on
# this host's /dev/kvm). Skipped by exact name (--exact), listed here.
qemu_user_skips=(
    failure_midway_unmaps_what_was_mapped
    normal_pages_bound_and_prefaulted
    hugepage_memory_is_2m_bound_to_node_0_and_prefaulted
    shared_hugepage_memfd_is_bound_and_prefaulted
    without_prefault_hugepages_stay_unfaulted
    jail::layout::tests::libraries_include_libc_and_the_interpreter
    nested::elf::tests::a_host_dynamic_executable_has_an_interpreter_and_libc
    metrics::tests::read_own_process
    real_host
)
skip_args=(--exact)
for t in "${qemu_user_skips[@]}"; do
    skip_args+=(--skip "$t")
done

status=0
if [ "${ARM64_CLIPPY:-1}" = 1 ]; then
    # Lints the code only aarch64 builds (arch/aarch64's KVM parts, its vm.rs).
    echo "test-arm64: cargo +debian clippy --workspace --all-targets --target aarch64-unknown-linux-gnu"
    cargo +debian clippy --workspace --all-targets --target aarch64-unknown-linux-gnu \
        "${profile_args[@]}" -- -D warnings || status=$?
fi

if [ "$status" -eq 0 ]; then
    echo "test-arm64: cargo +debian test --workspace --target aarch64-unknown-linux-gnu ${profile_args[*]}"
    cargo +debian test --workspace --no-fail-fast --target aarch64-unknown-linux-gnu \
        "${profile_args[@]}" "$@" -- --test-threads=2 "${skip_args[@]}" || status=$?
fi

# The boot check: see ARM64_BOOT above. Everything lives in $CARGO_TARGET_DIR/boot-check.
boot_check() {
    local dir="$CARGO_TARGET_DIR/boot-check"
    rm -rf "$dir/inner" "$dir/outer" "$dir/k" "$dir/bb"
    mkdir -p "$dir"
    cargo +debian build -p vmm --bin edgevisor --target aarch64-unknown-linux-gnu "${profile_args[@]}"
    local profile=debug
    [ "${ARM64_RELEASE:-0}" = 1 ] && profile=release
    local kpkg
    kpkg=$(apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-cloud-arm64$' |
        awk '{print $1}' | sort -V | tail -1)
    if [ -z "$kpkg" ]; then
        echo "test-arm64: boot check: apt knows no linux-image-*-cloud-arm64 package" >&2
        return 1
    fi
    (cd "$dir" && rm -f ./*.deb && apt-get download "$kpkg:arm64" busybox-static:arm64 2>&1 | tail -1)
    dpkg-deb -x "$dir"/linux-image-*.deb "$dir/k"
    dpkg-deb -x "$dir"/busybox-static_*.deb "$dir/bb"
    local kernel
    kernel=$(ls "$dir"/k/boot/vmlinuz-*)
    local mods
    mods=$(ls -d "$dir"/k/lib/modules/*/kernel)

    local d
    for d in inner outer; do
        mkdir -p "$dir/$d"/{bin,proc,sys,dev,tmp,lib,mod}
        cp "$dir/bb/bin/busybox" "$dir/$d/bin/"
        for a in sh mount echo cat poweroff sleep uname insmod head dd grep od basename; do
            ln -sf busybox "$dir/$d/bin/$a"
        done
    done
    cp "$mods"/drivers/virtio/{virtio_ring,virtio,virtio_mmio}.ko "$mods"/drivers/block/virtio_blk.ko \
        "$mods"/drivers/char/hw_random/virtio-rng.ko "$dir/inner/mod/"
    cat > "$dir/inner/init" <<'INNER'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "INNER-GUEST: up on $(uname -m), cpus: $(grep -c ^processor /proc/cpuinfo)"
for m in virtio_ring virtio virtio_mmio virtio_blk virtio-rng; do insmod /mod/$m.ko; done
sleep 1
for d in /sys/bus/virtio/devices/*; do echo "INNER-GUEST: virtio device id $(cat $d/device)"; done
echo "INNER-GUEST: disk says: $(head -c 17 /dev/vda)"
echo "INNER-GUEST: hwrng: $(cat /sys/class/misc/hw_random/rng_current)"
read -t 120 LINE
echo "INNER-GUEST: read '$LINE'"
poweroff -f
INNER
    cat > "$dir/outer/init" <<'OUTER'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
dd if=/dev/zero of=/tmp/disk.img bs=1k count=1024 2>/dev/null
echo EDGEVISOR-DISK-OK | dd of=/tmp/disk.img conv=notrunc 2>/dev/null
(sleep 70; echo hello-from-host) | /bin/edgevisor run --kernel /Image --initrd /inner.cpio.gz \
    --mem 256M --vcpus 2 --disk path=/tmp/disk.img --rng --cmdline "console=ttyAMA0 rdinit=/init"
echo "OUTER: edgevisor exit code $?"
poweroff -f
OUTER
    chmod +x "$dir/inner/init" "$dir/outer/init"
    (cd "$dir/inner" && find . | cpio -o -H newc 2>/dev/null | gzip > "$dir/outer/inner.cpio.gz")
    cp "$kernel" "$dir/outer/Image"
    cp "$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/$profile/edgevisor" "$dir/outer/bin/"
    for l in ld-linux-aarch64.so.1 libc.so.6 libgcc_s.so.1 libm.so.6; do
        cp -L "/usr/lib/aarch64-linux-gnu/$l" "$dir/outer/lib/"
    done
    (cd "$dir/outer" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$dir/outer.cpio.gz")

    local gic ok=0
    for gic in 3 2; do
        local log="$dir/boot-gicv$gic.log"
        echo "test-arm64: boot check on a GICv$gic (log: $log)"
        timeout 900 qemu-system-aarch64 -M "virt,virtualization=on,gic-version=$gic" -cpu max \
            -smp 2 -m 1536 -nographic -no-reboot -kernel "$kernel" -initrd "$dir/outer.cpio.gz" \
            -append "console=ttyAMA0 rdinit=/init panic=-1" > "$log" 2>&1 || true
        local want
        for want in "booting /Image (Linux, arm64 Image) via linux-arm64 (GICv$gic)" \
            "INNER-GUEST: up on aarch64, cpus: 2" "INNER-GUEST: virtio device id 0x0002" \
            "INNER-GUEST: virtio device id 0x0004" "INNER-GUEST: disk says: EDGEVISOR-DISK-OK" \
            "INNER-GUEST: hwrng: virtio_rng" "INNER-GUEST: read 'hello-from-host'" \
            "OUTER: edgevisor exit code 0"; do
            if grep -qF -- "$want" "$log"; then
                echo "test-arm64:   ok: $want"
            else
                echo "test-arm64:   MISSING: $want"
                ok=1
            fi
        done
    done
    return "$ok"
}

if [ "$status" -eq 0 ] && [ "${ARM64_BOOT:-0}" = 1 ]; then
    boot_check || status=$?
fi

elapsed=$(($(date +%s) - started))
if [ "$status" -eq 0 ]; then
    echo "test-arm64: PASS (${elapsed}s)"
else
    echo "test-arm64: FAIL (cargo exit $status, ${elapsed}s)"
fi
exit "$status"
