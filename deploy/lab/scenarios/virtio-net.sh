#!/bin/bash
# Scenario: virtio-net end to end. L1 makes a tap device (tap0, 192.168.100.1/24) and gives it to
# the VMM (iovirt with --iovirt, or QEMU; LAB_VMM picks) as a modern virtio-net NIC; the L2 guest
# (eth0 = 192.168.100.2/24):
#   1. pings L1 (ARP + ICMP both ways);
#   2. sends LAB_NET_MIB (16) MiB of random bytes to L1's port 5001 over TCP (busybox nc);
#   3. listens on port 5002; L1 connects and sends its own LAB_NET_MIB MiB of random bytes.
# Both ends hash what they sent and received. Passes iff the VMM exits 0, the guest reports OK,
# both digests match across the two ends, and the guest negotiated the ring format and EVENT_IDX
# the knobs asked for. Knobs: LAB_RING, LAB_EVENT_IDX, LAB_QUEUES, LAB_NET_VHOST, LAB_NET_MIB,
# LAB_NET_BACKEND, LAB_NET_KILL (l1/lib.sh).
# LAB_NET_BACKEND=iovirt-vhost|testpmd: the NIC is served over vhost-user by a back-end process in
# L1 on tap0 (iovirt-vhost net --backend tap=tap0, or dpdk-testpmd forwarding between net_vhost
# and net_tap); the same guest test runs through it. LAB_NET_KILL=on (iovirt-vhost, iovirt's
# front-end): the back-end is killed with SIGKILL half a second into the guest's send and started
# again a second later; the VMM must log the loss before the guest's OK and reconnect, and both
# digests must still match (TCP retransmits over the gap).
# LAB_NET_DISK=on also gives the guest a virtio disk (a 64 MiB image in L1's tmpfs): before the
# network part it writes an 8 MiB pattern there, flushes and reads it back; the scenario then
# checks that L1's image holds exactly that pattern (deploy/run.sh: both devices in one guest).
# Kernel vhost-net (6.1) has no packed ring: LAB_NET_VHOST=on with LAB_RING=packed cannot pass.
# lab-retries-on-hang: 3
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../l1/lib.sh
source "$LAB_DIR/l1/lib.sh"

CPUS=${LAB_L2_CPUS:-2}
MIB=${LAB_NET_MIB:-16}
DISK=${LAB_NET_DISK:-off}
DISK_MIB=8
TAP=tap0
L1_IP=192.168.100.1
L2_IP=192.168.100.2
MAC=52:54:00:12:34:56
lab_check_knobs || exit 2
[[ $MIB =~ ^[1-9][0-9]*$ ]] || { lab_log "LAB_NET_MIB=$MIB is not a positive number"; exit 2; }
[[ $DISK == on || $DISK == off ]] || { lab_log "LAB_NET_DISK=$DISK is not on or off"; exit 2; }
# The guest's sends crawl at times (0.15-4 MiB/s measured, no drops, no retransmissions: L1's one
# CPU shared by the L2 vCPUs and the VMM's I/O thread): give one VMM run room for that.
[[ -n ${LAB_VMM_TIMEOUT:-} ]] || VMM_TIMEOUT=$((180 + 8 * MIB))
vmm=$(lab_vmm)
lab_need_kvm || exit 1
bb=$(lab_busybox) || exit 1
lab_tap_create "$TAP" "$L1_IP/24" || exit 1
if [[ $LAB_NET_VHOST == on ]]; then
    lab_need_vhost_net || exit 1
fi
# L1 has one CPU: a burst the VMM writes into the tap waits in the per-CPU backlog for L1's
# softirq; a longer backlog than the default 1000 packets keeps overflows (drops, then TCP
# retransmission timeouts in L2) out of the picture. Both are reported below.
sysctl -qw net.core.netdev_max_backlog=30000
softnet_drops() {
    local b rest d=0
    while read -r _ b rest; do d=$((d + 16#$b)); done </proc/net/softnet_stat
    echo "$d"
}
drops0=$(softnet_drops)
lab_log "virtio-net: VMM $vmm, ring $LAB_RING, event_idx $LAB_EVENT_IDX, queues $LAB_QUEUES, vhost $LAB_NET_VHOST, backend $LAB_NET_BACKEND (kill $LAB_NET_KILL), $MIB MiB each way"

work=/tmp/virtio-net
rm -rf "$work"
mkdir -p "$work"
head -c $((MIB * 1048576)) /dev/urandom >"$work/l1-tx" || exit 1
l1_tx_sha=$(sha256sum "$work/l1-tx" | cut -d' ' -f1)

# guest -> L1: busybox nc ends a connection as soon as its stdin ends, so the listener's stdin
# is a FIFO held open read-write (never ends).
mkfifo "$work/hold"
exec 3<>"$work/hold"
("$bb" nc -l -p 5001 <&3 | sha256sum | cut -d' ' -f1 >"$work/l1-rx.sha") &
listener=$!

# L1 -> guest: when the guest says it listens, connect and send (a few tries: it may print the
# line just before its nc has bound the port).
# shellcheck disable=SC2317 # called through LAB_LINE_HOOK
on_line() {
    if [[ $LAB_NET_KILL == on && $1 == *"IOVIRT-RESULT net_tx_sha="* ]]; then
        # The guest starts sending right after this line.
        (sleep 0.5; lab_vnet_crash "$TAP" "$MAC") &
        return 0
    fi
    [[ $1 == *IOVIRT-NET-LISTENING* ]] || return 0
    (
        for ((i = 0; i < 25; i++)); do
            if "$bb" nc -w 5 "$L2_IP" 5002 <"$work/l1-tx" 2>>"$work/sender.err"; then
                echo ok >"$work/sender.status"
                exit 0
            fi
            sleep 0.2
        done
        echo "failed" >"$work/sender.status"
    ) &
}

log=$work/net.console
extra=
if [[ $DISK == on ]]; then
    seed=$((RANDOM * 32768 + RANDOM + 1))
    img=$work/disk.img
    truncate -s 64M "$img" || exit 1
    disk_want=$(lab_blk_pattern "$seed" "$DISK_MIB" | sha256sum | cut -d' ' -f1)
    extra=" iovirt.net_disk=1 iovirt.blk_seed=$seed iovirt.blk_mib=$DISK_MIB"
fi
lab_l2_cmd "$vmm" "$CPUS" "iovirt.test=net iovirt.ip=$L2_IP/24 iovirt.peer=$L1_IP iovirt.net_mib=$MIB$extra" || exit 2
lab_l2_add_net "$vmm" "$TAP" "$MAC" || { lab_vnet_stop; exit 1; }
[[ $DISK == off ]] || lab_l2_add_disk "$vmm" "$img" "" || { lab_vnet_stop; exit 1; }
lab_log "running: ${L2_CMD[*]@Q}"
LAB_LINE_HOOK=on_line lab_run_vmm "L2 net" "$log" "${L2_CMD[@]}"
rc=$?
cp "$log" "$LAB_RESULTS/virtio-net.console" 2>/dev/null
lab_log "virtio-net: $vmm exited $VMM_RC after $(lab_us_to_s "$VMM_TOTAL_US")s"
[[ $DISK == off ]] || lab_vu_stop # a vhost-user disk's back-end (LAB_BLK_BACKEND)
if [[ $LAB_NET_BACKEND != tap ]]; then
    lab_vnet_stop
    lab_log "virtio-net: the $LAB_NET_BACKEND back-end's log (last lines; all of it in net-backend.log):"
    grep -av '^ *$' "$VU_DIR/net.log" | tail -n 25 | sed 's/^/l1: | /'
fi

fail=0
# The listener ends with the guest's connection; a guest that never connected leaves it waiting.
for ((i = 0; i < 50; i++)); do
    [[ ! -s $work/l1-rx.sha ]] || break
    sleep 0.1
done
kill "$listener" 2>/dev/null
exec 3>&-
if ((rc != 0)); then
    lab_log "FAIL $vmm exit status $VMM_RC, boot verdict $VMM_VERDICT"
    fail=1
elif ! lab_guest_verdict "$log" net; then
    fail=1
else
    lab_check_rings "$log" 1 || fail=1
    g_tx=$(lab_guest_result "$log" net_tx_sha)
    g_rx=$(lab_guest_result "$log" net_rx_sha)
    l1_rx=$(cat "$work/l1-rx.sha" 2>/dev/null)
    if [[ -n $g_tx && $g_tx == "$l1_rx" ]]; then
        lab_log "ok   guest -> L1: $MIB MiB, sha256 $g_tx on both ends"
    else
        lab_log "FAIL guest -> L1: the guest sent sha256 ${g_tx:-?}, L1 received ${l1_rx:-nothing}"
        fail=1
    fi
    if [[ -n $g_rx && $g_rx == "$l1_tx_sha" ]]; then
        lab_log "ok   L1 -> guest: $MIB MiB, sha256 $g_rx on both ends"
    else
        lab_log "FAIL L1 -> guest: L1 sent sha256 $l1_tx_sha, the guest received ${g_rx:-?} (L1's sender: $(cat "$work/sender.status" 2>/dev/null || echo never started) $(tail -n 1 "$work/sender.err" 2>/dev/null))"
        fail=1
    fi
    if [[ $DISK == on ]]; then
        g_blk=$(lab_guest_result "$log" blk_sha)
        on_disk=$(head -c $((DISK_MIB * 1048576)) "$img" | sha256sum | cut -d' ' -f1)
        if [[ $g_blk == "$disk_want" && $on_disk == "$disk_want" ]]; then
            lab_log "ok   disk: the guest wrote, flushed and read back $DISK_MIB MiB; L1's image holds exactly that pattern (sha256 $on_disk)"
        else
            lab_log "FAIL disk: pattern sha256 $disk_want, the guest reported ${g_blk:-nothing}, L1's image has $on_disk"
            fail=1
        fi
    fi
    if ((LAB_QUEUES > 1)) && [[ $(lab_guest_result "$log" net_queues) != "$LAB_QUEUES" ]]; then
        lab_log "FAIL asked for $LAB_QUEUES queue pairs, the guest has $(lab_guest_result "$log" net_queues)"
        fail=1
    fi
    if [[ $LAB_NET_KILL == on ]]; then
        # The VMM's "lost" line must come before the guest's OK (the crash hit the transfer), and
        # it must have reconnected.
        lost=$(grep -an 'vhost-user back-end .* lost' "$log" | head -n 1 | cut -d: -f1)
        back=$(grep -an 'reconnected to the vhost-user back-end' "$log" | head -n 1 | cut -d: -f1)
        txl=$(grep -an 'IOVIRT-RESULT net_tx_cs=' "$log" | head -n 1 | cut -d: -f1)
        okl=$(grep -an 'IOVIRT-TEST-OK net' "$log" | head -n 1 | cut -d: -f1)
        if [[ -z $lost || -z $back || -z $okl ]] || ((lost > okl || back > okl)); then
            lab_log "FAIL the back-end was not killed and reconnected while the guest transferred (lost at console line ${lost:-none}, reconnected at ${back:-none}, OK at ${okl:-none})"
            fail=1
        else
            lab_log "ok   the back-end died mid-transfer (console line $lost, $( ((lost < txl)) && echo "guest -> L1" || echo "L1 -> guest") phase), the front-end reconnected (line $back), the transfer completed (line $okl)"
        fi
    fi
    mibs() { awk -v m="$MIB" -v cs="$1" 'BEGIN { if (cs > 0) printf "%.1f MiB/s", m * 100 / cs; else print "?" }'; }
    lab_log "L1 backlog drops during the run: $(($(softnet_drops) - drops0)); the guest's TCP retransmitted $(lab_guest_result "$log" net_tcp_retrans) segments"
    lab_log "guest timings: ping $(lab_guest_result "$log" ping); guest -> L1 $(mibs "$(lab_guest_result "$log" net_tx_cs)"), L1 -> guest $(mibs "$(lab_guest_result "$log" net_rx_cs)") (incl. connection set-up)"
fi
ip link del "$TAP" 2>/dev/null
rm -rf "$work"
((fail == 0)) && lab_log "virtio-net: PASS ($vmm, ring $LAB_RING, event_idx $LAB_EVENT_IDX, queues $LAB_QUEUES, vhost $LAB_NET_VHOST, backend $LAB_NET_BACKEND, kill $LAB_NET_KILL)"
exit "$fail"
