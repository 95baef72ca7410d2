#!/bin/bash
# Scenario: `iovirt sriov config` against a real kernel object, with no NIC: netdevsim (the
# kernel's simulated netdev, CONFIG_NETDEVSIM=m in Debian's kernel) with SR-IOV VFs. Its VFs are
# not PCI functions, only VF entries on the PF netdev, so they are addressed as PF-NETDEV:vfN.
# What it proves: the rtnetlink path (IFLA_VFINFO_LIST set, RTEXT_FILTER_VF read back and
# verified) sets MAC, VLAN + QoS, spoofchk, trust, link state and tx rates on a real driver, and
# `ip -d link show` (iproute2, independent of iovirt) reports exactly those values; errors for a
# VF past sriov_numvfs and for a netdev without VFs are one line, exit 1.
# What it cannot prove: a NIC that applies them in hardware (no SR-IOV NIC in the lab: the
# e1000e has no SR-IOV), nor the PCI-address form of a VF (the NVMe PF has no netdev).
# lab-requires: iovirt
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../l1/lib.sh
source "$LAB_DIR/l1/lib.sh"

ID=10
if ! modprobe -d "$KDIR" -S "$KVER" netdevsim 2>/dev/null; then
    # Debian's kernels are built without it (CONFIG_NETDEVSIM is not set in 6.1.0-*-amd64), and
    # QEMU 7.2 emulates no SR-IOV NIC (igb VFs arrived in QEMU 8.0): nothing in this lab gives
    # a netdev with VFs. Skip, saying so.
    lab_log "SKIP: no netdevsim module in kernel $KVER (CONFIG_NETDEVSIM is not set); no SR-IOV netdev to configure"
    exit 77
fi
dev=/sys/bus/netdevsim/devices/netdevsim$ID
[[ -d $dev ]] || echo "$ID 1" >/sys/bus/netdevsim/new_device || { lab_log "FAIL: creating netdevsim$ID"; exit 1; }
nd=""
for n in $(seq 50); do
    nd=$(ls "$dev/net/" 2>/dev/null | head -n 1)
    [[ -n $nd ]] && break
    sleep 0.1
done
[[ -n $nd ]] || { lab_log "FAIL: netdevsim$ID has no netdev"; exit 1; }
if ! echo 2 >"$dev/sriov_numvfs" 2>/dev/null; then
    # Some kernels cap netdevsim's VFs with a debugfs knob (default 0 on a few versions).
    mkdir -p /sys/kernel/debug && mount -t debugfs none /sys/kernel/debug 2>/dev/null
    mv=/sys/kernel/debug/netdevsim/netdevsim$ID/max_vfs
    [[ -w $mv ]] && echo 2 >"$mv"
    echo 2 >"$dev/sriov_numvfs" || { lab_log "FAIL: enabling 2 VFs on netdevsim$ID"; exit 1; }
fi
ip link set "$nd" up
lab_log "sriov-netlink: netdevsim$ID netdev $nd, sriov_numvfs $(<"$dev/sriov_numvfs")"

fail=0
run() { # EXPECTED_RC ARGS... — runs $IOVIRT sriov ARGS, prints its output, checks its status
    local want=$1 rc
    shift
    lab_log "\$ iovirt sriov $*"
    out=$("$IOVIRT" sriov "$@" 2>&1)
    rc=$?
    printf '%s\n' "$out" | sed 's/^/l1|   /'
    if ((rc != want)); then
        lab_log "FAIL: exit status $rc, expected $want"
        fail=1
    fi
}
vf_line() { # INDEX — the VF's line in `ip -d link show`
    ip -d link show "$nd" | grep -E "^[[:space:]]+vf $1 "
}
expect_ip() { # INDEX REGEX... — every REGEX must match the VF's line
    local i=$1 line r
    shift
    line=$(vf_line "$i")
    lab_log "ip -d link show $nd: ${line#"${line%%[![:space:]]*}"}"
    for r in "$@"; do
        if ! grep -qE -- "$r" <<<"$line"; then
            lab_log "FAIL: vf $i: '$r' not in ip's report"
            fail=1
        fi
    done
}

run 0 config "$nd:vf0" mac=52:54:00:12:34:56,vlan=100,qos=3,spoofchk=off,trust=on,state=disable,min_tx_rate=10,max_tx_rate=100
expect_ip 0 'link/ether 52:54:00:12:34:56' 'vlan 100' 'qos 3' 'max_tx_rate 100Mbps' 'min_tx_rate 10Mbps' \
    'spoof checking off' 'link-state disable' 'trust on'
run 0 config "$nd:vf1" mac=52:54:00:65:43:21,state=enable
expect_ip 1 'link/ether 52:54:00:65:43:21' 'link-state enable'
# vf0 untouched by the vf1 change
expect_ip 0 'link/ether 52:54:00:12:34:56' 'vlan 100'

# Read back through iovirt (no settings = show), JSON.
run 0 --json config "$nd:vf0"
for kv in '"mac":"52:54:00:12:34:56"' '"vlan":100' '"qos":3' '"spoofchk":false' '"trust":true' \
    '"state":"disable"' '"min_tx_rate":10' '"max_tx_rate":100'; do
    grep -qF -- "$kv" <<<"$out" || { lab_log "FAIL: $kv not in iovirt's JSON read-back"; fail=1; }
done

# Only max_tx_rate given: min_tx_rate is kept (the kernel sets the pair together).
run 0 config "$nd:vf0" max_tx_rate=200
expect_ip 0 'max_tx_rate 200Mbps' 'min_tx_rate 10Mbps'
# Clearing: VLAN 0 removes the tag, state auto, trust off, rates unlimited.
run 0 config "$nd:vf0" vlan=0,state=auto,trust=off,spoofchk=on,min_tx_rate=0,max_tx_rate=0
expect_ip 0 'link-state auto' 'trust off' 'spoof checking on'
if vf_line 0 | grep -qE 'vlan [1-9]'; then lab_log "FAIL: vf 0 still has a VLAN"; fail=1; fi

# Refusals: one line, exit 1.
run 1 config "$nd:vf2" trust=on
grep -q "has 2 VFs enabled (sriov_numvfs): there is no vf2" <<<"$out" || { lab_log "FAIL: vf2 error text"; fail=1; }
run 1 config lo:vf0 trust=on
run 1 config nosuchdev0:vf0 trust=on
grep -q "no network interface nosuchdev0" <<<"$out" || { lab_log "FAIL: unknown netdev error text"; fail=1; }
run 2 config "$nd:vf0" vlan=5000

echo "$ID" >/sys/bus/netdevsim/del_device
if ((fail)); then
    lab_log "sriov-netlink: FAIL"
    exit 1
fi
lab_log "sriov-netlink: PASS (VF settings set over rtnetlink, verified by iovirt's read-back and by ip)"
exit 0
