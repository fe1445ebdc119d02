#!/bin/sh
# Regenerates the recorded sysfs trees next to this folder (sysfs-x710, sysfs-cx5,
# sysfs-noiommu, sysfs-shared-group). See README.md here for where every value comes from.
# The trees are committed; rerun this only to change them. Deterministic, no host access.
set -eu
DATA=$(cd "$(dirname "$0")/.." && pwd)

# fn TREE PARENT BDF VENDOR DEVICE CLASS NUMA DRIVER GROUP
#   PARENT: path under sys/devices (the upstream bridge), DRIVER/GROUP: "-" for none.
fn() {
    tree=$1 parent=$2 bdf=$3 vendor=$4 device=$5 class=$6 numa=$7 driver=$8 group=$9
    d="$DATA/$tree/sys/devices/$parent/$bdf"
    mkdir -p "$d"
    printf '%s\n' "$vendor" >"$d/vendor"
    printf '%s\n' "$device" >"$d/device"
    printf '%s\n' "$class" >"$d/class"
    printf '%s\n' "$numa" >"$d/numa_node"
    printf '(null)\n' >"$d/driver_override"
    # depth of the device dir below sys/: devices/<parent parts>/<bdf>
    up=$(printf '%s/%s' "$parent" "$bdf" | awk -F/ '{s="../"; for(i=0;i<NF;i++) s=s"../"; print s}')
    if [ "$driver" != - ]; then
        mkdir -p "$DATA/$tree/sys/bus/pci/drivers/$driver"
        : >"$DATA/$tree/sys/bus/pci/drivers/$driver/bind"
        : >"$DATA/$tree/sys/bus/pci/drivers/$driver/unbind"
        ln -sfn "${up}bus/pci/drivers/$driver" "$d/driver"
        ln -sfn "../../../../devices/$parent/$bdf" "$DATA/$tree/sys/bus/pci/drivers/$driver/$bdf"
    fi
    if [ "$group" != - ]; then
        g="$DATA/$tree/sys/kernel/iommu_groups/$group"
        mkdir -p "$g/devices"
        printf 'DMA\n' >"$g/type"
        ln -sfn "${up}kernel/iommu_groups/$group" "$d/iommu_group"
        ln -sfn "../../../../devices/$parent/$bdf" "$g/devices/$bdf"
    fi
    mkdir -p "$DATA/$tree/sys/bus/pci/devices"
    ln -sfn "../../../devices/$parent/$bdf" "$DATA/$tree/sys/bus/pci/devices/$bdf"
    : >"$DATA/$tree/sys/bus/pci/drivers_probe"
}

# pf TREE PARENT BDF TOTALVFS NUMVFS VF_DEVICE
pf() {
    d="$DATA/$1/sys/devices/$2/$3"
    printf '%s\n' "$4" >"$d/sriov_totalvfs"
    printf '%s\n' "$5" >"$d/sriov_numvfs"
    printf '%s\n' "$6" >"$d/sriov_vf_device"
}

# vf TREE PARENT PF_BDF INDEX VF_BDF  (VFs sit on the same bus as their PF here)
vf() {
    ln -sfn "../$5" "$DATA/$1/sys/devices/$2/$3/virtfn$4"
    ln -sfn "../$3" "$DATA/$1/sys/devices/$2/$5/physfn"
}

# netif TREE PARENT BDF IFNAME MAC
netif() {
    n="$DATA/$1/sys/devices/$2/$3/net/$4"
    mkdir -p "$n"
    printf '%s\n' "$5" >"$n/address"
}

rm -rf "$DATA/sysfs-x710" "$DATA/sysfs-cx5" "$DATA/sysfs-noiommu" "$DATA/sysfs-shared-group"

# --- sysfs-x710: Intel Ethernet Controller X710 for 10GbE SFP+ (8086:1572), driver i40e,
# NUMA node 0, IOMMU on (one group per function: the root port has ACS).
# PF0 has 4 VFs (Ethernet Virtual Function 700 Series, 8086:154c): two on iavf, two on
# vfio-pci. PF1 has SR-IOV capability but no VFs.
T=sysfs-x710 P=pci0000:3a/0000:3a:00.0
fn $T $P 0000:3b:00.0 0x8086 0x1572 0x020000 0 i40e 40
fn $T $P 0000:3b:00.1 0x8086 0x1572 0x020000 0 i40e 41
pf $T $P 0000:3b:00.0 32 4 154c
pf $T $P 0000:3b:00.1 32 0 154c
netif $T $P 0000:3b:00.0 ens1f0 3c:fd:fe:a1:00:00
netif $T $P 0000:3b:00.1 ens1f1 3c:fd:fe:a1:00:01
fn $T $P 0000:3b:02.0 0x8086 0x154c 0x020000 0 iavf 60
fn $T $P 0000:3b:02.1 0x8086 0x154c 0x020000 0 iavf 61
fn $T $P 0000:3b:02.2 0x8086 0x154c 0x020000 0 vfio-pci 62
fn $T $P 0000:3b:02.3 0x8086 0x154c 0x020000 0 vfio-pci 63
netif $T $P 0000:3b:02.0 ens1f0v0 12:a4:0c:00:00:10
netif $T $P 0000:3b:02.1 ens1f0v1 12:a4:0c:00:00:11
for i in 0 1 2 3; do vf $T $P 0000:3b:00.0 $i 0000:3b:02.$i; done
printf 'vfio-pci\n' >"$DATA/$T/sys/devices/$P/0000:3b:02.2/driver_override"
printf 'vfio-pci\n' >"$DATA/$T/sys/devices/$P/0000:3b:02.3/driver_override"

# --- sysfs-cx5: Mellanox MT27800 Family [ConnectX-5] (15b3:1017), driver mlx5_core,
# NUMA node 1, SR-IOV enabled in firmware for 8 VFs (VF id 15b3:1018) but none created;
# plus an NVMe SSD (144d:a808, class 0x010802) that has no SR-IOV capability.
T=sysfs-cx5
fn $T pci0000:ae/0000:ae:00.0 0000:af:00.0 0x15b3 0x1017 0x020000 1 mlx5_core 80
pf $T pci0000:ae/0000:ae:00.0 0000:af:00.0 8 0 1018
netif $T pci0000:ae/0000:ae:00.0 0000:af:00.0 ens2f0np0 b8:59:9f:c0:11:22
fn $T pci0000:5d/0000:5d:00.0 0000:5e:00.0 0x144d 0xa808 0x010802 0 nvme 30

# --- sysfs-noiommu: Intel 82599ES 10-Gigabit SFI/SFP+ (8086:10fb), driver ixgbe, a host
# booted without intel_iommu=on: no iommu_group links, sys/kernel/iommu_groups empty,
# numa_node -1 (single-node firmware without _PXM). Two VFs (8086:10ed) on ixgbevf.
T=sysfs-noiommu P=pci0000:00/0000:00:01.0
fn $T $P 0000:01:00.0 0x8086 0x10fb 0x020000 -1 ixgbe -
pf $T $P 0000:01:00.0 63 2 10ed
netif $T $P 0000:01:00.0 enp1s0f0 90:e2:ba:00:00:01
fn $T $P 0000:01:10.0 0x8086 0x10ed 0x020000 -1 ixgbevf -
fn $T $P 0000:01:10.2 0x8086 0x10ed 0x020000 -1 ixgbevf -
vf $T $P 0000:01:00.0 0 0000:01:10.0
vf $T $P 0000:01:00.0 1 0000:01:10.2
netif $T $P 0000:01:10.0 enp1s0f0v0 02:00:00:00:01:00
netif $T $P 0000:01:10.2 enp1s0f0v1 02:00:00:00:01:01
mkdir -p "$DATA/$T/sys/kernel/iommu_groups"
: >"$DATA/$T/sys/kernel/iommu_groups/.keep"

# --- sysfs-shared-group: Intel I350 Gigabit (8086:1521), two ports behind a root port
# without ACS, so both functions share IOMMU group 15. Port 0 was bound to vfio-pci, port 1
# is still on igb: group 15 is not viable for VFIO. A PCIe root port on pcieport is fine.
T=sysfs-shared-group P=pci0000:00/0000:00:1c.0
fn $T pci0000:00 0000:00:1c.0 0x8086 0xa110 0x060400 0 pcieport 15
fn $T $P 0000:05:00.0 0x8086 0x1521 0x020000 0 vfio-pci 15
fn $T $P 0000:05:00.1 0x8086 0x1521 0x020000 0 igb 15
pf $T $P 0000:05:00.0 7 0 1520
pf $T $P 0000:05:00.1 7 0 1520
netif $T $P 0000:05:00.1 eno2 a0:36:9f:00:00:02
printf 'vfio-pci\n' >"$DATA/$T/sys/devices/$P/0000:05:00.0/driver_override"
