#!/bin/bash
# Scenario: virtio-blk end to end. A disk image in L1's tmpfs (64 MiB) is given to the VMM (iovirt
# with --iovirt, or QEMU; LAB_VMM picks) as a modern virtio-blk device; two L2 boots:
#   1. blk-write: the guest writes a 16 MiB pattern generated from a random seed to /dev/vda with
#      O_DIRECT, fsyncs (a FLUSH request) and prints the pattern's sha256;
#   2. blk-read: a fresh boot of the same image, read-only (readonly=on): the guest reads the 16 MiB
#      back with O_DIRECT and compares with the sha256 L1 expects.
# Passes iff both guests report OK, the read-only boot saw a read-only disk, the guest negotiated
# the ring format and EVENT_IDX the knobs asked for, and the image's first 16 MiB in L1 are exactly
# the pattern (L1 generates it with the same busybox awk). Knobs: LAB_RING, LAB_EVENT_IDX,
# LAB_QUEUES, LAB_BLK_DIRECT, LAB_BLK_BACKEND (vhost-user back-ends), LAB_BLK_KILL (l1/lib.sh).
# lab-retries-on-hang: 3
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../l1/lib.sh
source "$LAB_DIR/l1/lib.sh"

MIB=16
CPUS=${LAB_L2_CPUS:-2}
lab_check_knobs || exit 2
vmm=$(lab_vmm)
lab_need_kvm || exit 1
seed=$((RANDOM * 32768 + RANDOM + 1))
lab_log "virtio-blk: VMM $vmm, ring $LAB_RING, event_idx $LAB_EVENT_IDX, queues $LAB_QUEUES, direct $LAB_BLK_DIRECT, backend $LAB_BLK_BACKEND (kill $LAB_BLK_KILL), pattern seed $seed, $MIB MiB"

img=/tmp/virtio-blk.img
rm -f "$img"
truncate -s 64M "$img" || exit 1
disk=$img
if [[ $LAB_BLK_DIRECT == on ]]; then
    disk=$(lab_loop_attach "$img") || { lab_log "virtio-blk: cannot attach $img to a loop device"; exit 1; }
    lab_log "virtio-blk: O_DIRECT on $disk (loop device over $img)"
fi
t0=${EPOCHREALTIME/./}
want=$(lab_blk_pattern "$seed" "$MIB" | sha256sum | cut -d' ' -f1)
lab_log "virtio-blk: L1's pattern sha256 $want (generated in $(lab_us_to_s $((${EPOCHREALTIME/./} - t0)))s)"

fail=0
# LAB_BLK_KILL=on: the guest writes in 4 KiB requests (thousands of them, seconds of I/O) and
# prints its pattern timing right before dd starts; the back-end dies 0.3 s later and comes back
# a second after that. The run then checks the kill landed before the guest finished writing.
kill_hook() {
    [[ $1 == *"IOVIRT-RESULT pattern_cs="* ]] || return 0
    (sleep 0.3; lab_vu_crash "$disk") &
}

boot() { # NAME RO EXTRA-CMDLINE — one L2 boot; its console in /tmp/virtio-blk-NAME.console
    local name=$1 ro=$2 log=/tmp/virtio-blk-$1.console
    lab_l2_cmd "$vmm" "$CPUS" "$3" || exit 2
    lab_l2_add_disk "$vmm" "$disk" "$ro" || exit 1
    lab_log "running: ${L2_CMD[*]@Q}"
    if [[ $LAB_BLK_KILL == on && $name == blk-write ]]; then LAB_LINE_HOOK=kill_hook; else LAB_LINE_HOOK=; fi
    lab_run_vmm "L2 $name" "$log" "${L2_CMD[@]}"
    local rc=$?
    LAB_LINE_HOOK=
    lab_vu_stop
    cp "$log" "$LAB_RESULTS/" 2>/dev/null
    lab_log "virtio-blk: $name: $vmm exited $VMM_RC after $(lab_us_to_s "$VMM_TOTAL_US")s"
    if ((rc != 0)); then
        lab_log "FAIL $name: $vmm exit status $VMM_RC, boot verdict $VMM_VERDICT"
        return 1
    fi
    lab_guest_verdict "$log" "$name" || return 1
    lab_check_rings "$log" 2 || return 1
    if [[ $(lab_guest_result "$log" blk_queues) != "$LAB_QUEUES" ]]; then
        lab_log "FAIL $name: asked for $LAB_QUEUES request queues, the guest has $(lab_guest_result "$log" blk_queues)"
        return 1
    fi
}

write_args="iovirt.test=blk-write iovirt.blk_seed=$seed iovirt.blk_mib=$MIB"
[[ $LAB_BLK_KILL != on ]] || write_args+=" iovirt.blk_bs=4k"
if boot blk-write "" "$write_args"; then
    log=/tmp/virtio-blk-blk-write.console
    if [[ $LAB_BLK_KILL == on ]]; then
        # The VMM's "lost" line must come before the guest's OK: the crash hit the transfer.
        lost=$(grep -an 'vhost-user back-end .* lost' "$log" | head -n 1 | cut -d: -f1)
        okl=$(grep -an 'IOVIRT-TEST-OK blk-write' "$log" | head -n 1 | cut -d: -f1)
        if [[ -z $lost || -z $okl ]] || ((lost > okl)); then
            lab_log "FAIL blk-write: the back-end was not killed while the guest was writing (lost at line ${lost:-none}, OK at ${okl:-none})"
            fail=1
        else
            lab_log "ok   the back-end died mid-transfer (console line $lost), the guest's write completed after the restart (line $okl)"
        fi
    fi
    got=$(lab_guest_result "$log" blk_sha)
    lab_log "guest timings (1/100 s): modules $(lab_guest_result "$log" modules_cs), pattern $(lab_guest_result "$log" pattern_cs), write+flush $(lab_guest_result "$log" write_cs)"
    if [[ $got != "$want" ]]; then
        lab_log "FAIL blk-write: the guest's pattern sha256 is $got, L1's is $want (the guest's and L1's awk disagree?)"
        fail=1
    fi
else
    fail=1
fi
if ((fail == 0)); then
    [[ $disk == "$img" ]] || blockdev --flushbufs "$disk"
    have=$(head -c $((MIB * 1048576)) "$img" | sha256sum | cut -d' ' -f1)
    if [[ $have == "$want" ]]; then
        lab_log "ok   the image's first $MIB MiB in L1 are exactly the pattern"
    else
        lab_log "FAIL the image's first $MIB MiB in L1 have sha256 $have, the pattern $want"
        # Where do they differ? First differing 512-byte sector.
        lab_blk_pattern "$seed" "$MIB" | cmp - <(head -c $((MIB * 1048576)) "$img") | head -n 1 | sed 's/^/l1: /'
        fail=1
    fi
fi
if ((fail == 0)); then
    if boot blk-read ro "iovirt.test=blk-read iovirt.blk_mib=$MIB iovirt.blk_sha=$want"; then
        log=/tmp/virtio-blk-blk-read.console
        lab_log "guest timings (1/100 s): read $(lab_guest_result "$log" read_cs)"
        if [[ $(lab_guest_result "$log" blk_ro) != 1 ]]; then
            lab_log "FAIL blk-read: the disk was given read-only but the guest sees ro=$(lab_guest_result "$log" blk_ro)"
            fail=1
        fi
    else
        fail=1
    fi
fi
[[ $disk == "$img" ]] || losetup -d "$disk"
rm -f "$img"
if ((fail == 0)); then
    lab_log "virtio-blk: PASS ($vmm, ring $LAB_RING, event_idx $LAB_EVENT_IDX, queues $LAB_QUEUES, direct $LAB_BLK_DIRECT, backend $LAB_BLK_BACKEND, kill $LAB_BLK_KILL)"
fi
exit "$fail"
