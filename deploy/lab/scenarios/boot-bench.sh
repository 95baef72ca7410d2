#!/bin/bash
# Scenario (benchmark): boot-to-init time of iovirt vs QEMU (-accel kvm), same kernel, initramfs,
# 2 vCPUs, 512 MiB. A run's figure is the wall time from starting the VMM to the guest's
# IOVIRT-BOOT-OK console line arriving (lines are timestamped as they are read). Runs are
# interleaved (QEMU, iovirt, QEMU, ...). Prints every run and a table of medians; the table also
# goes to $LAB_RESULTS/boot-bench.txt. Figures are printed, never asserted: exit 0 unless a VMM
# failed to boot (iovirt failing still prints QEMU's figures; no --iovirt measures QEMU only).
#
# Each finished run is recorded in $LAB_RESULTS/boot-bench.runs; when lab.sh retries after an L1
# hang (a nested-SVM-under-TCG flake, see README), the retry resumes from there.
# lab-retries-on-hang: 3
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../l1/lib.sh
source "$LAB_DIR/l1/lib.sh"

RUNS=${LAB_BENCH_RUNS:-5}
out=$LAB_RESULTS/boot-bench.txt
state=$LAB_RESULTS/boot-bench.runs # lines: VMM RUN ok MICROSECONDS TOTAL | VMM RUN fail RC VERDICT
lab_need_kvm || exit 1
lab_qemu_l2_cmd 2
[[ -z ${IOVIRT:-} ]] || lab_iovirt_l2_cmd 2
touch "$state"
[[ ! -s $state ]] || lab_log "resuming after $(wc -l <"$state") recorded runs"

done_before() { grep -q "^$1 $2 " "$state"; }
iovirt_failed() { grep -q "^iovirt [0-9]* fail " "$state"; }

bench_one() { # VMM RUN COMMAND...
    local vmm=$1 i=$2
    shift 2
    local log=/tmp/bench-$vmm-$i.console
    if lab_run_vmm "L2 $vmm#$i" "$log" "$@"; then
        echo "$vmm $i ok $VMM_MARKER_US $VMM_TOTAL_US" >>"$state"
        lab_log "run $i $vmm: boot-to-init $(lab_us_to_s "$VMM_MARKER_US") s (exit after $(lab_us_to_s "$VMM_TOTAL_US") s)"
    else
        echo "$vmm $i fail $VMM_RC $VMM_VERDICT" >>"$state"
        lab_log "run $i $vmm: FAILED (exit status $VMM_RC, guest verdict $VMM_VERDICT; its console is ${log##*/} in the results folder)"
        cp "$log" "$LAB_RESULTS/" 2>/dev/null
    fi
    sync
}

for ((i = 1; i <= RUNS; i++)); do
    done_before qemu "$i" || bench_one qemu "$i" "${QEMU_L2[@]}"
    if [[ -n ${IOVIRT:-} ]] && ! iovirt_failed; then
        done_before iovirt "$i" || bench_one iovirt "$i" "${IOVIRT_L2[@]}"
        iovirt_failed && lab_log "iovirt failed: no further iovirt runs"
    fi
done

figures() { awk -v v="$1" '$1 == v && $3 == "ok" { print $4 }' "$state"; }
median() { # µs values on stdin -> median in µs (mean of the middle two for an even count)
    sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else printf "%d\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
nq=$(figures qemu | wc -l)
ni=$(figures iovirt | wc -l)
mq=$(figures qemu | median)
mi=$(figures iovirt | median)
fmt() { if [[ -n $1 ]]; then echo "$(lab_us_to_s "$1") s"; else echo "n/a"; fi; }
ratio=n/a
if [[ -n $mq && -n $mi ]]; then
    ratio=$(awk -v a="$mi" -v b="$mq" 'BEGIN { printf "%.2f", a / b }')
fi
if [[ -z ${IOVIRT:-} ]]; then
    iovirt_note="iovirt: not measured (no --iovirt given)"
elif iovirt_failed; then
    iovirt_note="iovirt: FAILED — $(awk '$1 == "iovirt" && $3 == "fail" { printf "run %s exited with status %s, guest verdict %s", $2, $4, $5; exit }' "$state")"
else
    iovirt_note=""
fi
{
    echo "boot-bench: kernel $KVER, L2 = 2 vCPUs, 512 MiB, cmdline: $(lab_l2_cmdline 2)"
    echo "figure: wall time from VMM start to the guest's $MARKER_OK console line (L2 inside L1 = QEMU TCG)"
    echo "host load average when the run started: ${LAB_HOST_LOADAVG:-?} (L1 itself is one busy core: figures compare only on an otherwise idle host)"
    sort -k2,2n -k1,1 "$state" | awk '$3 == "ok" { printf "run %s %-7s %d.%03d s\n", $2, $1 ":", $4 / 1000000, ($4 % 1000000) / 1000 }
                                     $3 == "fail" { printf "run %s %-7s FAILED (exit %s, guest %s)\n", $2, $1 ":", $4, $5 }'
    echo
    printf '%-20s %s\n' "VMM" "median boot-to-init (successful runs)"
    printf '%-20s %s\n' "iovirt" "$(fmt "$mi") ($ni)"
    printf '%-20s %s\n' "QEMU -accel kvm" "$(fmt "$mq") ($nq of $RUNS)"
    printf '%-20s %s\n' "ratio iovirt/QEMU" "$ratio"
    [[ -z $iovirt_note ]] || echo "$iovirt_note"
} | tee "$out"

rc=0
if ((nq < RUNS)); then
    lab_log "boot-bench: QEMU failed $((RUNS - nq)) of $RUNS runs"
    rc=1
fi
if [[ -n ${IOVIRT:-} ]] && iovirt_failed; then
    lab_log "boot-bench: iovirt did not boot; see above"
    rc=1
fi
exit "$rc"
