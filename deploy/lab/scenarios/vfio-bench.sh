#!/bin/bash
# Benchmark: 4 KiB O_DIRECT reads and writes at queue depth 1 (busybox dd, LAB_BENCH_N requests
# per phase) on the lab's NVMe VF, three ways in one L1:
#   L1      the VF bound to L1's own nvme driver: the limit (no second level of virtualization);
#   QEMU    the VF passed to an L2 guest by QEMU 7.2 (-device vfio-pci);
#   iovirt  the VF passed to an L2 guest by iovirt (--device path=...), when --iovirt is given.
# LAB_BENCH_RUNS rounds (default 3), the VMMs interleaved; prints a table of medians and the
# ratios to the L1 limit. A program that prints figures, not a test: it fails only when a run
# breaks. Under the lab's nested TCG the absolute numbers say little about hardware; the ratios
# between the three say how much each VMM's passthrough path costs on top of the device.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../l1/lib.sh
source "$LAB_DIR/l1/lib.sh"

N=${LAB_BENCH_N:-3000}
RUNS=${LAB_BENCH_RUNS:-3}
lab_need_kvm || exit 1
pf=$(lab_nvme_vfs 1) || exit 1
vf=$(lab_nvme_vf "$pf" 0)
bb=$(lab_busybox) || exit 1
lab_log "vfio-bench: VF $vf, $N requests per phase, $RUNS rounds"

l1_direct() { # prints "READ_IOPS WRITE_IOPS"
    local dev=/sys/bus/pci/devices/$vf blk t0 t1 t2
    [[ -z $(lab_pci_driver "$vf") ]] || echo "$vf" >"$dev/driver/unbind"
    echo nvme >"$dev/driver_override"
    echo "$vf" >/sys/bus/pci/drivers_probe
    for _ in $(seq 100); do
        blk=$(ls -d "$dev"/nvme/nvme*/nvme*n1 2>/dev/null | head -n 1)
        [[ -n $blk && -b /dev/${blk##*/} ]] && break
        sleep 0.1
    done
    [[ -n $blk ]] || { lab_log "vfio-bench: $vf did not come up under L1's nvme driver" >&2; return 1; }
    blk=/dev/${blk##*/}
    "$bb" dd if="$blk" of=/dev/null bs=4k count=200 iflag=direct 2>/dev/null
    t0=${EPOCHREALTIME/./}
    "$bb" dd if="$blk" of=/dev/null bs=4k count="$N" iflag=direct 2>/dev/null || return 1
    t1=${EPOCHREALTIME/./}
    "$bb" dd if=/dev/zero of="$blk" bs=4k count="$N" seek=$((64 * 256)) oflag=direct 2>/dev/null || return 1
    t2=${EPOCHREALTIME/./}
    echo "$vf" >"$dev/driver/unbind"
    echo $((N * 1000000 / (t1 - t0))) $((N * 1000000 / (t2 - t1)))
}

in_guest() { # VMM — prints "READ_IOPS WRITE_IOPS"
    local vmm=$1 log=/tmp/vfio-bench-$1.console
    lab_vfio_bind "$vf" >&2 || return 1
    lab_l2_cmd "$vmm" 1 "iovirt.test=nvme-bench iovirt.bench_n=$N iovirt.bench_wofs_mib=64" || return 1
    lab_l2_add_passthrough "$vmm" "$vf"
    lab_run_vmm "L2 $vmm" "$log" "${L2_CMD[@]}" >/dev/null
    cp "$log" "$LAB_RESULTS/" 2>/dev/null
    lab_guest_verdict "$log" nvme-bench >&2 || return 1
    echo "$(lab_guest_result "$log" nvme_read_iops) $(lab_guest_result "$log" nvme_write_iops)"
}

declare -A reads writes
ways=(L1 qemu)
[[ -n ${IOVIRT:-} ]] && ways+=(iovirt)
for ((r = 1; r <= RUNS; r++)); do
    for w in "${ways[@]}"; do
        if [[ $w == L1 ]]; then res=$(l1_direct) || exit 1; else res=$(in_guest "$w") || exit 1; fi
        read -r rd wr <<<"$res"
        lab_log "vfio-bench: round $r $w: read $rd IOPS, write $wr IOPS"
        reads[$w]+="$rd "
        writes[$w]+="$wr "
    done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
lab_log "vfio-bench: medians of $RUNS, 4 KiB O_DIRECT QD1, $N requests per phase"
printf 'l1: | %-7s | %10s | %10s | %8s | %8s |\n' path "read IOPS" "write IOPS" "read/L1" "write/L1"
printf 'l1: | ------- | ---------- | ---------- | -------- | -------- |\n'
lr=$(median "${reads[L1]}")
lw=$(median "${writes[L1]}")
for w in "${ways[@]}"; do
    mr=$(median "${reads[$w]}")
    mw=$(median "${writes[$w]}")
    printf 'l1: | %-7s | %10s | %10s | %8s | %8s |\n' "$w" "$mr" "$mw" \
        "$(awk -v a="$mr" -v b="$lr" 'BEGIN { printf "%.2f", a / b }')" \
        "$(awk -v a="$mw" -v b="$lw" 'BEGIN { printf "%.2f", a / b }')"
done
