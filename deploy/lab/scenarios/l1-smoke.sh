#!/bin/bash
# Scenario: L1 only (no L2) — checks the lab's own plumbing quickly: kvm_amd gives /dev/kvm, the
# vIOMMU made IOMMU groups, and the devices to pass through (NVMe PF with SR-IOV, edu, e1000e) are
# there; the results share is writable. Prints where each device sits.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../l1/lib.sh
source "$LAB_DIR/l1/lib.sh"

fail=0
check() { # DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@" >/dev/null 2>&1; then lab_log "ok   $what"; else lab_log "FAIL $what"; fail=1; fi
}
lab_log "kernel $(uname -r), $(nproc) CPU, $(awk '/MemTotal/ { print $2 / 1024 " MiB" }' /proc/meminfo)"
check "kvm_amd loads and /dev/kvm appears" lab_need_kvm
params=/sys/module/kvm_amd/parameters
lab_log "kvm_amd: npt=$(cat $params/npt 2>/dev/null) nested=$(cat $params/nested 2>/dev/null) vgif=$(cat $params/vgif 2>/dev/null) avic=$(cat $params/avic 2>/dev/null) pause_filter_count=$(cat $params/pause_filter_count 2>/dev/null)"
check "IOMMU groups exist (intel-iommu, intremap)" test -n "$(ls /sys/kernel/iommu_groups)"
dev_by_id() { # VENDOR:DEVICE -> first BDF
    local d
    for d in /sys/bus/pci/devices/*; do
        if [[ $(<"$d/vendor"):$(<"$d/device") == "$1" ]]; then
            echo "${d##*/}"
            return 0
        fi
    done
    return 1
}
for dev in "NVMe 1b36:0010" "edu 1234:11e8" "e1000e 8086:10d3" "virtio-net 1af4:1000"; do
    name=${dev% *}
    id=${dev#* }
    if bdf=$(dev_by_id "0x${id%:*}:0x${id#*:}"); then
        group=$(basename "$(readlink "/sys/bus/pci/devices/$bdf/iommu_group")")
        lab_log "ok   $name at $bdf, IOMMU group $group"
    else
        lab_log "FAIL $name ($id) not found"
        fail=1
    fi
done
nvme=$(dev_by_id 0x1b36:0x0010) &&
    check "NVMe PF offers SR-IOV (sriov_totalvfs = 2)" test "$(cat "/sys/bus/pci/devices/$nvme/sriov_totalvfs")" = 2
check "vfio-pci, tun and vhost_net load" lab_modprobe vfio-pci tun vhost_net
check "results share is writable" touch "$LAB_RESULTS/l1-smoke.ok"
exit "$fail"
