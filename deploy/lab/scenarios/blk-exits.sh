#!/bin/bash
# Scenario (measurement): what a virtio-blk request costs in VM exits and interrupts, QEMU vs
# iovirt, in the same lab run. Each VMM boots L2 (2 vCPUs, 512 MiB) with a 128 MiB disk opened
# O_DIRECT (a loop device over an image in L1's tmpfs: QEMU -drive ...,aio=io_uring,cache=none;
# iovirt --disk path=...,direct=on) and the guest's blk-bench test: LAB_BENCH_REQUESTS (10000)
# 4 KiB O_DIRECT reads (dd iflag=direct), the same number of writes to a scratch area, and an idle
# phase of the same shape without I/O. Around each phase the guest prints IOVIRT-BENCH-BEGIN/END;
# as those lines arrive, L1 samples KVM's counters for the VM (debugfs kvm/PID-FD/: exits,
# io_exits, mmio_exits, halt_exits — the VM-level files sum the vCPUs); the guest reports its
# virtio request-queue interrupt deltas (/proc/interrupts). A phase's window includes one second
# of guest idle before the I/O (the guest lets L1 sample first): the idle row shows what that is.
# Prints a table (also $LAB_RESULTS/blk-exits.txt); figures are printed, never asserted: exit 0
# unless a VMM or the guest failed. Without --iovirt measures QEMU only. Knobs: LAB_RING,
# LAB_EVENT_IDX, LAB_QUEUES (l1/lib.sh), LAB_BENCH_REQUESTS.
# lab-retries-on-hang: 2
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../l1/lib.sh
source "$LAB_DIR/l1/lib.sh"

N=${LAB_BENCH_REQUESTS:-10000}
CPUS=${LAB_L2_CPUS:-2}
LAB_BLK_DIRECT=on
# A request takes 5-10 ms here (L2 -> L1's KVM -> L1's VMM, all under TCG): 10000 reads and 10000
# writes are 2-4 minutes per VMM; give each VMM run room (and lab.sh run --timeout 1800).
[[ -n ${LAB_VMM_TIMEOUT:-} ]] || VMM_TIMEOUT=$((180 + ${N//[^0-9]/} * 50 / 1000))
lab_check_knobs || exit 2
[[ $N =~ ^[1-9][0-9]*$ && $N -le 16000 ]] || { lab_log "LAB_BENCH_REQUESTS=$N: want 1..16000 (the reads stay in the first 64 MiB)"; exit 2; }
lab_need_kvm || exit 1
lab_need_debugfs || exit 1
work=/tmp/blk-exits
rm -rf "$work"
mkdir -p "$work"
img=$work/disk.img
truncate -s 128M "$img" || exit 1
# Real data to read (a hole reads back without touching the page cache the same way).
dd if=/dev/urandom of="$img" bs=1M count=64 conv=notrunc status=none || exit 1
dev=$(lab_loop_attach "$img") || { lab_log "blk-exits: cannot attach $img to a loop device"; exit 1; }

vmms=(qemu)
[[ -z ${IOVIRT:-} ]] || vmms+=(iovirt)
lab_log "blk-exits: VMMs ${vmms[*]}, $N requests per phase, disk $dev (O_DIRECT), ring $LAB_RING, event_idx $LAB_EVENT_IDX, queues $LAB_QUEUES"

samples=
# shellcheck disable=SC2317 # called through LAB_LINE_HOOK
on_line() { # the guest's phase markers: sample the VM's counters
    local l=$1
    [[ $l =~ IOVIRT-BENCH-(BEGIN|END)\ ([a-z]+) ]] || return 0
    echo "${BASH_REMATCH[2]} ${BASH_REMATCH[1]} $(lab_vm_stats)" >>"$samples"
}

fail=0
table=$work/table
: >"$table"
for vmm in "${vmms[@]}"; do
    log=$work/$vmm.console
    samples=$work/$vmm.samples
    : >"$samples"
    lab_l2_cmd "$vmm" "$CPUS" "iovirt.test=blk-bench iovirt.bench_n=$N iovirt.bench_wofs_mib=64" || exit 2
    lab_l2_add_disk "$vmm" "$dev"
    lab_log "running: ${L2_CMD[*]@Q}"
    LAB_LINE_HOOK=on_line lab_run_vmm "L2 $vmm" "$log" "${L2_CMD[@]}"
    rc=$?
    cp "$log" "$samples" "$LAB_RESULTS/" 2>/dev/null
    if ((rc != 0)); then
        lab_log "FAIL $vmm: exit status $VMM_RC, boot verdict $VMM_VERDICT"
        fail=1
        continue
    fi
    if ! lab_guest_verdict "$log" blk-bench; then
        fail=1
        continue
    fi
    lab_check_rings "$log" 2 || fail=1
    if ! grep -q . "$samples" || [[ $(awk 'NF < 3' "$samples") ]]; then
        lab_log "FAIL $vmm: no KVM counters sampled (is /sys/kernel/debug/kvm/PID-FD/exits there?): $(tr '\n' ';' <"$samples")"
        fail=1
        continue
    fi
    for phase in read write idle; do
        req=$(lab_guest_result "$log" "bench_${phase}_requests")
        irqs=$(lab_guest_result "$log" "bench_${phase}_irqs")
        cs=$(lab_guest_result "$log" "bench_${phase}_cs")
        # BEGIN/END rows: phase kind exits io_exits mmio_exits halt_exits irq_injections
        awk -v vmm="$vmm" -v phase="$phase" -v req="${req:-0}" -v irqs="${irqs:-?}" -v cs="${cs:-0}" '
            $1 == phase && $2 == "BEGIN" { for (i = 3; i <= NF; i++) b[i] = $i }
            $1 == phase && $2 == "END"   { for (i = 3; i <= NF; i++) e[i] = $i }
            END {
                for (i = 3; i <= 7; i++) d[i] = e[i] - b[i]
                if (req > 0) {
                    printf "%-7s %-6s %8d %10d %9.2f %9.2f %9.2f %9.2f %9.2f %9s\n", vmm, phase, req, d[3],
                        d[3] / req, d[4] / req, d[5] / req, d[6] / req, irqs / req,
                        (cs > 0 ? sprintf("%.0f", req * 100 / cs) : "?")
                } else {
                    printf "%-7s %-6s %8s %10d %9s %9s %9s %9s %9s %9s   (2 s, no I/O: %d io, %d mmio, %d hlt exits, %s irqs)\n",
                        vmm, phase, "-", d[3], "-", "-", "-", "-", "-", "-", d[4], d[5], d[6], irqs
                }
            }' "$samples" >>"$table"
    done
done
losetup -d "$dev"
{
    echo "blk-exits: kernel $KVER, L2 = $CPUS vCPUs, 512 MiB; virtio-blk on $dev (loop over tmpfs, O_DIRECT), ring $LAB_RING, event_idx $LAB_EVENT_IDX, queues $LAB_QUEUES"
    echo "per phase: $N sequential 4 KiB O_DIRECT requests (dd); exits = KVM exits of the whole VM (all vCPUs) in the window, incl. ~1 s of idle before the I/O"
    echo "host load average when the run started: ${LAB_HOST_LOADAVG:-?}"
    printf '%-7s %-6s %8s %10s %9s %9s %9s %9s %9s %9s\n' VMM phase requests exits exits/req io/req mmio/req hlt/req irqs/req req/s
    cat "$table"
} | tee "$LAB_RESULTS/blk-exits.txt"
rm -rf "$work"
exit "$fail"
