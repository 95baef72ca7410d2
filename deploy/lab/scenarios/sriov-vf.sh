#!/bin/bash
# Scenario: VFs of the SR-IOV NVMe taken from iovirt's pool with `iovirt run --vf pf=PF`, two VMs
# at once, and reclaim after kill -9 (issue 6). Steps:
#   1. 2 VFs on the NVMe PF with the NVMe virtualization-management sequence: by
#      `iovirt sriov enable PF 2` (LAB_SRIOV_ENABLE=iovirt, the default) or by the lab's own
#      `nvme virt-mgmt` commands (LAB_SRIOV_ENABLE=lab: lab_nvme_vfs); `iovirt sriov list` shows
#      the PF and its VFs.
#   2. VM B with --vf runs the nvme test (its own seeded 8 MiB O_DIRECT write + read back) and
#      then stays up (iovirt.hold=1); once it passed and its lease is alive it is frozen with
#      SIGSTOP, so it keeps its VF (and its lock) while A runs.
#   3. VM A (the nvme test: seeded 8 MiB O_DIRECT write + read back in the guest) with --vf: it
#      must get the other VF; `iovirt sriov leases --json`, sampled meanwhile, must show two live
#      leases on different VFs; A passes its test, and afterwards its lease is gone.
#   4. kill -9 B: its lease must show as stale.
#   5. VM C (nvme test again) with --vf: it must reclaim B's VF (iovirt logs the reclaim), pass,
#      and leave no lease behind.
# lab-requires: iovirt
# lab-retries-on-hang: 1
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../l1/lib.sh
source "$LAB_DIR/l1/lib.sh"

MIB=8
lab_need_kvm || exit 1
lab_modprobe vfio-pci || exit 1
fail=0
LAB_SRIOV_ENABLE=${LAB_SRIOV_ENABLE:-iovirt}
case $LAB_SRIOV_ENABLE in
    lab) pf=$(lab_nvme_vfs 2) || exit 1 ;;
    iovirt)
        pf=$(lab_pci_find 1b36 0010) || exit 1
        modprobe -d "$KDIR" -S "$KVER" nvme_core multipath=N || { lab_log "modprobe nvme_core failed"; exit 1; }
        lab_modprobe nvme || exit 1
        for n in $(seq 50); do [[ -c /dev/nvme0 ]] && break; sleep 0.1; done
        lab_log "\$ iovirt sriov enable $pf 2"
        "$IOVIRT" sriov enable "$pf" 2 2>&1 | sed 's/^/l1|   /'
        rc=${PIPESTATUS[0]}
        if ((rc != 0)); then
            lab_log "FAIL: iovirt sriov enable $pf 2: exit $rc"
            exit 1
        fi
        for n in $(seq 50); do [[ -b /dev/nvme0n1 ]] && break; sleep 0.1; done
        ;;
    *) lab_log "LAB_SRIOV_ENABLE: '$LAB_SRIOV_ENABLE' is not iovirt or lab"; exit 2 ;;
esac
leases_json() { "$IOVIRT" sriov leases --json 2>&1; }
lab_log "sriov-vf: PF $pf"
"$IOVIRT" sriov list 2>&1 | sed 's/^/l1|   /'

# B: the nvme test on its VF, then it holds the VF (frozen) while A runs.
seed_b=$((RANDOM * 32768 + RANDOM + 1))
lab_l2_cmd iovirt 1 "iovirt.test=nvme iovirt.blk_seed=$seed_b iovirt.blk_mib=$MIB iovirt.hold=1" || exit 2
B_CMD=("${L2_CMD[@]}" --vf "pf=$pf")
"${B_CMD[@]}" </dev/null >/tmp/sriov-b.console 2>&1 &
b=$!
vf_b=""
for n in $(seq 300); do
    j=$(leases_json)
    vf_b=$(grep -oE "\"vf\":\"[0-9a-f:.]+\",\"pf\":\"$pf\",\"vm\":\"iovirt-$b\",\"pid\":$b,\"alive\":true" <<<"$j" |
        sed -E 's/"vf":"([^"]+)".*/\1/')
    [[ -n $vf_b ]] && break
    kill -0 "$b" 2>/dev/null || break
    sleep 0.1
done
if [[ -z $vf_b ]]; then
    lab_log "FAIL: VM B (pid $b) never showed a live lease; its output:"
    sed 's/^/l1| B  /' /tmp/sriov-b.console
    kill -9 "$b" 2>/dev/null
    exit 1
fi
# B's own I/O on its VF must pass before it is frozen.
for n in $(seq 1800); do
    grep -aq 'IOVIRT-TEST-\(OK\|FAIL\)' /tmp/sriov-b.console && break
    kill -0 "$b" 2>/dev/null || break
    sleep 0.1
done
if ! lab_guest_verdict /tmp/sriov-b.console nvme; then
    lab_log "FAIL: VM B's nvme test on $vf_b did not pass; its output:"
    sed 's/^/l1| B  /' /tmp/sriov-b.console | tail -n 20
    kill -9 "$b" 2>/dev/null
    exit 1
fi
kill -STOP "$b"
lab_log "sriov-vf: VM B (pid $b) read/wrote its namespace on $vf_b and holds it; frozen"

# A: the nvme test on the other VF, with the leases sampled meanwhile.
seed=$((RANDOM * 32768 + RANDOM + 1))
lab_l2_cmd iovirt 1 "iovirt.test=nvme iovirt.blk_seed=$seed iovirt.blk_mib=$MIB" || exit 2
T_CMD=("${L2_CMD[@]}" --vf "pf=$pf")
samples=/tmp/sriov-leases.jsonl
: >"$samples"
(while :; do leases_json | tr -d '\n' >>"$samples"; echo >>"$samples"; sleep 0.5; done) &
sampler=$!
lab_run_vmm "L2 A" /tmp/sriov-a.console "${T_CMD[@]}"
a_rc=$VMM_RC
kill "$sampler" 2>/dev/null
wait "$sampler" 2>/dev/null
cp /tmp/sriov-a.console /tmp/sriov-b.console "$samples" "$LAB_RESULTS/" 2>/dev/null
if ((a_rc != 0)) || ! lab_guest_verdict /tmp/sriov-a.console nvme; then
    lab_log "FAIL: VM A: exit $a_rc, verdict $VMM_VERDICT"
    fail=1
fi
two=$(grep -E '"alive":true.*"alive":true' "$samples" | head -n 1)
vf_a=$(grep -oE '"vf":"[0-9a-f:.]+","pf":"[0-9a-f:.]+","vm":"iovirt-[0-9]+","pid":[0-9]+,"alive":true' <<<"$two" |
    grep -v "\"pid\":$b," | sed -E 's/"vf":"([^"]+)".*/\1/' | head -n 1)
if [[ -z $two || -z $vf_a ]]; then
    lab_log "FAIL: iovirt sriov leases never showed two live leases while A ran (samples in $samples)"
    fail=1
elif [[ $vf_a == "$vf_b" ]]; then
    lab_log "FAIL: A and B both got $vf_a"
    fail=1
else
    lab_log "sriov-vf: while A ran: A on $vf_a, B on $vf_b (two live leases)"
fi
if leases_json | grep -q "\"vf\":\"$vf_a\""; then
    lab_log "FAIL: A's lease on $vf_a is still there after A exited"
    fail=1
fi
lab_log "sriov-vf: after A, $vf_a is on '$(lab_pci_driver "$vf_a")'"

# kill -9 B: its lease must be stale.
kill -9 "$b"
wait "$b" 2>/dev/null
"$IOVIRT" sriov leases 2>&1 | sed 's/^/l1|   /'
if ! leases_json | grep -q "\"vf\":\"$vf_b\",\"pf\":\"$pf\",\"vm\":\"iovirt-$b\",\"pid\":$b,\"alive\":false"; then
    lab_log "FAIL: after kill -9 of B, its lease on $vf_b is not shown as stale"
    fail=1
fi

# C: takes the first VF no live process holds: B's, reclaimed.
seed=$((RANDOM * 32768 + RANDOM + 1))
lab_l2_cmd iovirt 1 "iovirt.test=nvme iovirt.blk_seed=$seed iovirt.blk_mib=$MIB" || exit 2
T_CMD=("${L2_CMD[@]}" --vf "pf=$pf")
lab_run_vmm "L2 C" /tmp/sriov-c.console "${T_CMD[@]}"
c_rc=$VMM_RC
cp /tmp/sriov-c.console "$LAB_RESULTS/" 2>/dev/null
if ((c_rc != 0)) || ! lab_guest_verdict /tmp/sriov-c.console nvme; then
    lab_log "FAIL: VM C: exit $c_rc, verdict $VMM_VERDICT"
    fail=1
fi
if ! grep -aq "VF $vf_b: lease of pid $b (vm 'iovirt-$b') is stale, its holder died" /tmp/sriov-c.console; then
    lab_log "FAIL: C did not log reclaiming $vf_b from the killed B"
    fail=1
fi
if leases_json | grep -q '"vf"'; then
    lab_log "FAIL: leases left after C: $(leases_json)"
    fail=1
fi
"$IOVIRT" sriov list 2>&1 | sed 's/^/l1|   /'
((fail == 0)) && lab_log "PASS: sriov-vf: two VMs on different VFs from the pool, reclaim after kill -9"
exit $fail
