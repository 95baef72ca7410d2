#!/bin/bash
# shellcheck disable=SC2034 # the variables set here are read by the scenarios
# Helpers for lab scenarios (sourced; they run inside L1 — see deploy/lab/README.md).
# Environment set by l1/runner.sh: IOVIRT, LAB_CACHE, LAB_RESULTS, LAB_DIR, KDIR, KVER, LAB_TIMEOUT.

MARKER_OK=IOVIRT-BOOT-OK
MARKER_FAIL=IOVIRT-BOOT-FAIL
L2_INITRD=$LAB_CACHE/l2-initramfs.cpio.gz
L2_KERNEL=${LAB_L2_KERNEL:-$LAB_CACHE/vmlinuz}
# Timeout for one VMM run inside L1 (a full L2 boot takes ~6-14 s here).
VMM_TIMEOUT=${LAB_VMM_TIMEOUT:-180}

lab_log() { echo "l1: $*"; }

# lab_modprobe MODULE... — load modules from the unpacked kernel tree shared by the host.
lab_modprobe() {
    local m
    for m in "$@"; do
        modprobe -d "$KDIR" -S "$KVER" "$m" || { lab_log "modprobe $m failed"; return 1; }
    done
}

# lab_need_kvm — load kvm_amd (SVM with NPT comes from QEMU TCG's -cpu max) and check /dev/kvm.
#
# vgif=0: with virtual GIF on, QEMU 7.2's TCG emulation of nested SVM does not let L1's own
# interrupts (its timer) preempt L2, so as soon as an L2 vCPU spins waiting for another one
# (csd_lock_wait, a queued rwlock) the single L1 CPU never runs that other vCPU again and all
# of L1 freezes. It hit QEMU and iovirt alike, in about half of the 2-vCPU boots that print
# the full kernel log; 8 of 8 such boots passed with vgif=0, 4 of them with idle=poll in L2 (see deploy/lab/README.md).
lab_need_kvm() {
    modprobe -d "$KDIR" -S "$KVER" kvm_amd vgif=0 || { lab_log "modprobe kvm_amd failed"; return 1; }
    if [[ ! -c /dev/kvm ]]; then
        lab_log "/dev/kvm missing after loading kvm_amd"
        return 1
    fi
    # VMM-host tuning, as on a production host: let shmem (iovirt's memfd guest RAM) use
    # transparent huge pages where the VMM asks (MADV_HUGEPAGE); QEMU's anonymous RAM already gets
    # them by default. Without it every 4 KiB first touch of guest RAM is a nested fault.
    echo advise >/sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null || true
}

# lab_l2_cmdline NCPUS — the L2 kernel command line, the same for every VMM.
#  - quiet: the 8250 console is the slowest device in the lab (every byte is an exit of L2 to a VMM
#    in L1, itself emulated by TCG): a full boot log adds ~10 s. LAB_GUEST_VERBOSE=1 keeps the log.
#  - iovirt.shutdown=poweroff: the guest's init ends with `poweroff -f` (ACPI S5), on which QEMU
#    and iovirt both exit 0. LAB_GUEST_SHUTDOWN=reboot switches to `reboot -f` (QEMU exits through
#    -no-reboot; iovirt exits 3, "guest reset").
#  - LAB_GUEST_APPEND adds anything else.
#  - EXTRA (optional second argument): the device test's parameters (iovirt.test= ...).
lab_l2_cmdline() {
    local c="console=ttyS0 panic=-1"
    [[ ${LAB_GUEST_VERBOSE:-0} == 1 ]] || c+=" quiet"
    c+=" iovirt.shutdown=${LAB_GUEST_SHUTDOWN:-poweroff} iovirt.expect_cpus=$1"
    c+="${2:+ $2}"
    echo "$c${LAB_GUEST_APPEND:+ $LAB_GUEST_APPEND}"
}

# lab_qemu_l2_cmd NCPUS — the reference VMM: QEMU with KVM, booting the lab kernel and L2 initramfs.
lab_qemu_l2_cmd() {
    QEMU_L2=(qemu-system-x86_64 -accel kvm -cpu "${LAB_L2_CPU:-host}" -smp "$1" -m 512
        -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$(lab_l2_cmdline "$1")"
        -nographic -no-reboot -nic none -vga none)
}

# lab_iovirt_l2_cmd NCPUS — the same boot with iovirt.
lab_iovirt_l2_cmd() {
    IOVIRT_L2=("$IOVIRT" run --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --cpus "$1" --memory 512M
        --cmdline "$(lab_l2_cmdline "$1")")
}

# lab_run_vmm TAG LOG CMD... — run a VMM with a timeout, stream its console prefixed with TAG,
# keep the raw console in LOG. Sets VMM_RC (exit status; 124 on timeout), VMM_MARKER_US (µs from
# start to the line carrying IOVIRT-BOOT-OK, empty if none), VMM_TOTAL_US and VMM_VERDICT
# (ok | fail | none: the marker line seen). Returns 0 iff the VMM exited 0 and printed the marker.
lab_run_vmm() {
    local tag=$1 log=$2
    shift 2
    : >"$log"
    rm -f "$log.marker"
    local start=${EPOCHREALTIME/./}
    timeout -k 5 "$VMM_TIMEOUT" "$@" </dev/null 2>&1 | _lab_console_reader "$tag" "$log" "$start"
    VMM_RC=${PIPESTATUS[0]}
    VMM_TOTAL_US=$((${EPOCHREALTIME/./} - start))
    VMM_MARKER_US=
    VMM_VERDICT=none
    if [[ -f $log.marker ]]; then
        read -r VMM_VERDICT VMM_MARKER_US <"$log.marker"
    fi
    if ((VMM_RC == 124)); then
        lab_log "$tag: TIMEOUT after ${VMM_TIMEOUT}s"
    fi
    [[ $VMM_RC -eq 0 && $VMM_VERDICT == ok ]]
}

# Reads a console, timestamps each line on arrival; records the first marker line. If
# LAB_LINE_HOOK names a function, it is called with each line as it arrives (in this reader's
# subshell: it reports through files), e.g. to sample KVM's counters at a guest's markers.
_lab_console_reader() {
    local tag=$1 log=$2 start=$3 line now seen=
    exec 3>>"$log"
    while IFS= read -r line || [[ -n $line ]]; do
        now=${EPOCHREALTIME/./}
        line=${line//$'\r'/}
        printf '%s\n' "$line" >&3
        printf '%s| %s\n' "$tag" "$line"
        [[ -z ${LAB_LINE_HOOK:-} ]] || "$LAB_LINE_HOOK" "$line"
        if [[ -z $seen ]]; then
            if [[ $line == *"$MARKER_OK"* ]]; then
                seen=1
                echo "ok $((now - start))" >"$log.marker"
            elif [[ $line == *"$MARKER_FAIL"* ]]; then
                seen=1
                echo "fail $((now - start))" >"$log.marker"
            fi
        fi
    done
    exec 3>&-
}

# lab_us_to_s MICROSECONDS — "12.345"
lab_us_to_s() { printf '%d.%03d' $(($1 / 1000000)) $((($1 % 1000000) / 1000)); }

# ---------------------------------------------------------------------------------------------
# Device scenarios (virtio-blk, virtio-net, blk-exits): the same scenario drives either VMM.
#
# Knobs (--env), the same for both VMMs and every device:
#   LAB_VMM=qemu|iovirt   the VMM (default: iovirt when --iovirt was given, else QEMU)
#   LAB_RING=split|packed the virtqueue format offered (virtio 1.2 sections 2.7 / 2.8)
#   LAB_EVENT_IDX=on|off  VIRTIO_RING_F_EVENT_IDX offered
#   LAB_QUEUES=N          request queues (blk) / queue pairs (net), default 1
#   LAB_NET_VHOST=on|off  the net data path in the host kernel (vhost-net), default off
#   LAB_BLK_DIRECT=on|off the disk opened O_DIRECT (QEMU: cache=none,aio=io_uring); the image then
#                         sits behind a loop device, because L1's tmpfs (Linux 6.1) refuses O_DIRECT
#   LAB_BLK_BACKEND=file|qsd|iovirt-vhost
#                         who serves the virtio-blk rings: the VMM itself (file), or a vhost-user
#                         back-end process in L1 — qemu-storage-daemon's vhost-user-blk export or
#                         iovirt-vhost blk (next to the iovirt binary) — that the VMM connects to
#                         (iovirt --disk vhost-user=SOCK; QEMU vhost-user-blk-pci on memfd RAM)
#   LAB_BLK_KILL=on|off   with a vhost-user back-end: kill it (SIGKILL) while the guest writes
#                         and start it again; the guest's write must still complete and verify
#   LAB_NET_BACKEND=tap|iovirt-vhost|testpmd
#                         who serves the virtio-net rings: the VMM itself on tap0 (tap), or a
#                         vhost-user back-end process in L1 that the VMM connects to (iovirt
#                         --net vhost-user=SOCK; QEMU -netdev vhost-user on memfd RAM):
#                         iovirt-vhost net --backend tap=tap0 (next to the iovirt binary), or
#                         DPDK's dpdk-testpmd forwarding (io) between net_vhost and a net_tap
#                         that then owns tap0. No LAB_NET_VHOST; LAB_QUEUES > 1 with
#                         iovirt-vhost only (it gets --queues N on a multi-queue tap0).
#   LAB_NET_KILL=on|off   with LAB_NET_BACKEND=iovirt-vhost and iovirt as the VMM: kill the back-end
#                         (SIGKILL) while the guest sends and start it again; the front-end
#                         reconnects, TCP retransmits over the gap, the transfer must verify

LAB_RING=${LAB_RING:-split}
LAB_EVENT_IDX=${LAB_EVENT_IDX:-on}
LAB_QUEUES=${LAB_QUEUES:-1}
LAB_NET_VHOST=${LAB_NET_VHOST:-off}
LAB_BLK_DIRECT=${LAB_BLK_DIRECT:-off}
LAB_BLK_BACKEND=${LAB_BLK_BACKEND:-file}
LAB_BLK_KILL=${LAB_BLK_KILL:-off}
LAB_NET_BACKEND=${LAB_NET_BACKEND:-tap}
LAB_NET_KILL=${LAB_NET_KILL:-off}

# lab_check_knobs — 0 if the knobs above hold valid values, else says which and returns 1.
lab_check_knobs() {
    local bad=
    [[ $LAB_RING == split || $LAB_RING == packed ]] || bad+=" LAB_RING=$LAB_RING (split|packed)"
    [[ $LAB_EVENT_IDX == on || $LAB_EVENT_IDX == off ]] || bad+=" LAB_EVENT_IDX=$LAB_EVENT_IDX (on|off)"
    [[ $LAB_NET_VHOST == on || $LAB_NET_VHOST == off ]] || bad+=" LAB_NET_VHOST=$LAB_NET_VHOST (on|off)"
    [[ $LAB_BLK_DIRECT == on || $LAB_BLK_DIRECT == off ]] || bad+=" LAB_BLK_DIRECT=$LAB_BLK_DIRECT (on|off)"
    [[ $LAB_QUEUES =~ ^[1-8]$ ]] || bad+=" LAB_QUEUES=$LAB_QUEUES (1..8)"
    [[ $LAB_BLK_BACKEND =~ ^(file|qsd|iovirt-vhost)$ ]] || bad+=" LAB_BLK_BACKEND=$LAB_BLK_BACKEND (file|qsd|iovirt-vhost)"
    [[ $LAB_BLK_KILL == on || $LAB_BLK_KILL == off ]] || bad+=" LAB_BLK_KILL=$LAB_BLK_KILL (on|off)"
    [[ $LAB_NET_BACKEND =~ ^(tap|iovirt-vhost|testpmd)$ ]] || bad+=" LAB_NET_BACKEND=$LAB_NET_BACKEND (tap|iovirt-vhost|testpmd)"
    [[ $LAB_NET_KILL == on || $LAB_NET_KILL == off ]] || bad+=" LAB_NET_KILL=$LAB_NET_KILL (on|off)"
    [[ -z ${LAB_VMM:-} || $LAB_VMM == qemu || $LAB_VMM == iovirt ]] || bad+=" LAB_VMM=$LAB_VMM (qemu|iovirt)"
    # Combinations: a vhost-user NIC is served by its back-end process; several queue pairs only
    # by iovirt-vhost (the lab's testpmd forwards one pair).
    if [[ $LAB_NET_BACKEND != tap ]]; then
        [[ $LAB_NET_VHOST == off ]] || bad+=" LAB_NET_VHOST=on with LAB_NET_BACKEND=$LAB_NET_BACKEND (vhost-net and vhost-user are two back-ends: pick one)"
    fi
    if [[ $LAB_NET_BACKEND == testpmd ]]; then
        [[ $LAB_QUEUES == 1 ]] || bad+=" LAB_QUEUES=$LAB_QUEUES with LAB_NET_BACKEND=testpmd (the lab's testpmd forwards one queue pair; iovirt-vhost takes several)"
    fi
    if [[ $LAB_NET_KILL == on ]]; then
        [[ $LAB_NET_BACKEND == iovirt-vhost ]] || bad+=" LAB_NET_KILL=on with LAB_NET_BACKEND=$LAB_NET_BACKEND (needs iovirt-vhost)"
        [[ $(lab_vmm) == iovirt ]] || bad+=" LAB_NET_KILL=on with LAB_VMM=$(lab_vmm) (needs iovirt's front-end, which reconnects)"
    fi
    if [[ $LAB_NET_BACKEND == iovirt-vhost || $LAB_BLK_BACKEND == iovirt-vhost ]] && [[ -z ${IOVIRT:-} ]]; then
        bad+=" iovirt-vhost back-end without --iovirt (iovirt-vhost is taken from next to the iovirt binary)"
    fi
    [[ -z $bad ]] && return 0
    lab_log "bad knob value:$bad"
    return 1
}

# lab_vmm — prints the VMM a device scenario drives.
lab_vmm() {
    if [[ -n ${LAB_VMM:-} ]]; then
        echo "$LAB_VMM"
    elif [[ -n ${IOVIRT:-} ]]; then
        echo iovirt
    else
        echo qemu
    fi
}

# lab_l2_cmd VMM NCPUS [EXTRA-CMDLINE] — sets L2_CMD to the VMM booting the lab kernel and the L2
# initramfs with NCPUS vCPUs and 512 MiB; lab_l2_add_disk / lab_l2_add_net append devices.
lab_l2_cmd() {
    local vmm=$1 ncpus=$2 extra=${3:-}
    L2_NDISKS=0
    L2_NNETS=0
    L2_SHARED_RAM=0
    case $vmm in
        qemu)
            L2_CMD=(qemu-system-x86_64 -accel kvm -cpu "${LAB_L2_CPU:-host}" -smp "$ncpus" -m "${LAB_L2_MIB:-512}"
                -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$(lab_l2_cmdline "$ncpus" "$extra")"
                -nographic -no-reboot -nic none -vga none)
            ;;
        iovirt)
            [[ -n ${IOVIRT:-} ]] || { lab_log "LAB_VMM=iovirt needs --iovirt PATH"; return 1; }
            L2_CMD=("$IOVIRT" run --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --cpus "$ncpus" --memory "${LAB_L2_MIB:-512}M"
                --cmdline "$(lab_l2_cmdline "$ncpus" "$extra")")
            ;;
        *) lab_log "unknown VMM '$vmm'"; return 1 ;;
    esac
}

# QEMU's virtio-pci properties for the ring knobs (modern only, like iovirt; no option ROM).
_lab_qemu_virtio_props() {
    printf 'disable-legacy=on,packed=%s,event_idx=%s,romfile=' \
        "$([[ $LAB_RING == packed ]] && echo on || echo off)" "$LAB_EVENT_IDX"
}
# iovirt's ring options: only what differs from its defaults (split ring, EVENT_IDX on, 1 queue).
_lab_iovirt_ring_opts() {
    local o=
    ((LAB_QUEUES == 1)) || o+=",queues=$LAB_QUEUES"
    [[ $LAB_RING != packed ]] || o+=",packed=on"
    [[ $LAB_EVENT_IDX != off ]] || o+=",event_idx=off"
    printf '%s' "$o"
}

# QEMU: vhost-user needs guest RAM the back-end can map, a shared memfd; once per VM, whether a
# vhost-user disk, a vhost-user NIC or both ask for it.
_lab_qemu_shared_ram() {
    ((L2_SHARED_RAM == 0)) || return 0
    L2_SHARED_RAM=1
    L2_CMD+=(-object "memory-backend-memfd,id=mem0,size=${LAB_L2_MIB:-512}M,share=on"
        -machine memory-backend=mem0)
}

# lab_vu_start PATH [ro] — start the LAB_BLK_BACKEND vhost-user back-end serving PATH on
# /tmp/vu/blk.sock (its pid in /tmp/vu/pid, its log in /tmp/vu/log); waits for the socket.
VU_DIR=/tmp/vu
VU_SOCK=$VU_DIR/blk.sock
lab_vu_start() {
    local path=$1 ro=${2:-} pid
    mkdir -p "$VU_DIR"
    rm -f "$VU_SOCK"
    case $LAB_BLK_BACKEND in
        qsd)
            local w=on
            [[ $ro != ro ]] || w=off
            qemu-storage-daemon --blockdev "driver=file,node-name=disk0,filename=$path" \
                --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$VU_SOCK,writable=$w,num-queues=$LAB_QUEUES" \
                >>"$VU_DIR/log" 2>&1 &
            ;;
        iovirt-vhost)
            local args=(blk --socket "$VU_SOCK" --file "$path" --queues "$LAB_QUEUES")
            [[ $ro != ro ]] || args+=(--readonly)
            [[ $LAB_BLK_DIRECT != on ]] || args+=(--direct)
            "$(dirname "$IOVIRT")/iovirt-vhost" "${args[@]}" >>"$VU_DIR/log" 2>&1 &
            ;;
    esac
    pid=$!
    echo "$pid" >"$VU_DIR/pid"
    for _ in $(seq 100); do [[ -S $VU_SOCK ]] && return 0; sleep 0.1; done
    lab_log "vhost-user back-end $LAB_BLK_BACKEND did not create $VU_SOCK: $(tail -n 3 "$VU_DIR/log" 2>/dev/null)"
    return 1
}

# lab_vu_stop — stop the vhost-user back-end (whichever pid is current).
lab_vu_stop() {
    [[ -f $VU_DIR/pid ]] || return 0
    local pid
    pid=$(<"$VU_DIR/pid")
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
    rm -f "$VU_DIR/pid"
}

# lab_vu_crash PATH [ro] — SIGKILL the back-end, wait a second, start it again (LAB_BLK_KILL).
lab_vu_crash() {
    local pid
    pid=$(<"$VU_DIR/pid")
    kill -9 "$pid" 2>/dev/null
    lab_log "vhost-user: killed the $LAB_BLK_BACKEND back-end (pid $pid) with SIGKILL while the guest writes"
    sleep 1
    lab_vu_start "$@" && lab_log "vhost-user: $LAB_BLK_BACKEND back-end started again (pid $(<"$VU_DIR/pid"))"
}

# lab_l2_add_disk VMM PATH [ro] — a virtio-blk disk on PATH (a file, or a block device for
# LAB_BLK_DIRECT=on). iovirt: --disk path=PATH[,readonly=on][,direct=on][,queues=N][,packed=on][,event_idx=off]
# or, served by a back-end: --disk vhost-user=SOCK[,queues=N][,packed=on][,event_idx=off]
lab_l2_add_disk() {
    local vmm=$1 path=$2 ro=${3:-} id=d$L2_NDISKS
    L2_NDISKS=$((L2_NDISKS + 1))
    if [[ $LAB_BLK_BACKEND != file ]]; then
        lab_vu_start "$path" "$ro" || return 1
        case $vmm in
            qemu)
                _lab_qemu_shared_ram
                L2_CMD+=(-chardev "socket,id=vu$id,path=$VU_SOCK"
                    -device "vhost-user-blk-pci,chardev=vu$id,num-queues=$LAB_QUEUES,$(_lab_qemu_virtio_props)")
                ;;
            iovirt) L2_CMD+=(--disk "vhost-user=$VU_SOCK$(_lab_iovirt_ring_opts)") ;;
        esac
        return 0
    fi
    case $vmm in
        qemu)
            local drive="file=$path,if=none,id=$id,format=raw"
            [[ $ro != ro ]] || drive+=",readonly=on"
            [[ $LAB_BLK_DIRECT != on ]] || drive+=",aio=io_uring,cache=none"
            L2_CMD+=(-drive "$drive" -device "virtio-blk-pci,drive=$id,num-queues=$LAB_QUEUES,$(_lab_qemu_virtio_props)")
            ;;
        iovirt)
            local o="path=$path"
            [[ $ro != ro ]] || o+=",readonly=on"
            [[ $LAB_BLK_DIRECT != on ]] || o+=",direct=on"
            L2_CMD+=(--disk "$o$(_lab_iovirt_ring_opts)")
            ;;
    esac
}

# lab_vnet_start TAP MAC — start the LAB_NET_BACKEND vhost-user back-end on /tmp/vu/net.sock
# with its frames on TAP (its pid in /tmp/vu/net.pid, its log in /tmp/vu/net.log); waits for
# the socket (testpmd: and for its tap).
#  - iovirt-vhost: `iovirt-vhost net --backend tap=TAP --queues LAB_QUEUES` opens the existing
#    TAP (multi-queue when LAB_QUEUES > 1; L1's address stays on it, also across a restart).
#  - testpmd: DPDK's net_tap creates its own TAP, so the one lab_tap_create made is deleted and
#    its address moved to DPDK's once it exists. testpmd's forwarding lcore busy-polls L1's one
#    CPU, which the L2 vCPUs and the VMM share: both lcores on that CPU (--lcores 0@0,1@0), at
#    normal priority — the scheduler gives the poller a fair share and no more. (At SCHED_IDLE
#    the transfer ran at half the speed, and a QEMU front-end hung once resetting the device at
#    the guest's poweroff, its vCPU waiting on a back-end that only got the CPU's leftovers.)
#    No hugepages (--no-huge): net_vhost maps the front-end's memfd RAM, and net_tap needs no
#    physical addresses for testpmd's own mbufs; a small mbuf pool.
#    testpmd without -i forwards until its stdin gives a line: a FIFO it holds open itself.
VU_NET_SOCK=$VU_DIR/net.sock
lab_vnet_start() {
    local tap=$1 mac=$2 pid cidr t0=${EPOCHREALTIME/./}
    mkdir -p "$VU_DIR"
    rm -f "$VU_NET_SOCK"
    case $LAB_NET_BACKEND in
        iovirt-vhost)
            "$(dirname "$IOVIRT")/iovirt-vhost" net --socket "$VU_NET_SOCK" --backend "tap=$tap" --mac "$mac" \
                --queues "$LAB_QUEUES" >>"$VU_DIR/net.log" 2>&1 &
            ;;
        testpmd)
            cidr=$(ip -o -4 addr show dev "$tap" 2>/dev/null | awk '{ print $4; exit }')
            [[ -n $cidr ]] || cidr=$(<"$VU_DIR/net.cidr") || { lab_log "testpmd: $tap has no IPv4 address to take over"; return 1; }
            echo "$cidr" >"$VU_DIR/net.cidr"
            ip link del "$tap" 2>/dev/null
            rm -f "$VU_DIR/testpmd.in"
            mkfifo "$VU_DIR/testpmd.in" || return 1
            dpdk-testpmd --lcores 0@0,1@0 --no-huge -m 128 --no-pci --file-prefix lab-net \
                --vdev "net_vhost0,iface=$VU_NET_SOCK" --vdev "net_tap0,iface=$tap" \
                -- --forward-mode=io --no-flush-rx --total-num-mbufs=8192 --nb-cores=1 \
                0<>"$VU_DIR/testpmd.in" >>"$VU_DIR/net.log" 2>&1 &
            ;;
    esac
    pid=$!
    # LAB_NET_KILL kills it from another (sub)shell: no "Killed" job report from this one.
    disown "$pid"
    echo "$pid" >"$VU_DIR/net.pid"
    # testpmd needs 8-16 s to come up here (likely EAL dlopening all 128 PMDs of its plugin
    # directory, 31 MB over 9p, under TCG).
    for _ in $(seq 600); do [[ -S $VU_NET_SOCK ]] || ! kill -0 "$pid" 2>/dev/null && break; sleep 0.1; done
    if [[ ! -S $VU_NET_SOCK ]]; then
        lab_log "vhost-user back-end $LAB_NET_BACKEND did not create $VU_NET_SOCK: $(tail -n 3 "$VU_DIR/net.log" 2>/dev/null)"
        return 1
    fi
    [[ $LAB_NET_BACKEND == testpmd ]] || return 0
    for _ in $(seq 100); do [[ -e /sys/class/net/$tap ]] && break; sleep 0.1; done
    if ! ip addr add "$cidr" dev "$tap" || ! ip link set "$tap" up; then
        lab_log "testpmd: configuring its $tap with $cidr failed: $(tail -n 3 "$VU_DIR/net.log" 2>/dev/null)"
        return 1
    fi
    lab_log "testpmd (pid $pid, up in $(lab_us_to_s $((${EPOCHREALTIME/./} - t0)))s) forwards between net_vhost0 ($VU_NET_SOCK) and net_tap0 ($tap, $cidr)"
}

# lab_vnet_stop — stop the net back-end (SIGTERM, then SIGKILL after 5 s); its log (both print
# their per-queue / per-port totals when they stop) is kept as $LAB_RESULTS/net-backend.log.
lab_vnet_stop() {
    [[ -f $VU_DIR/net.pid ]] || return 0
    local pid
    pid=$(<"$VU_DIR/net.pid")
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
    rm -f "$VU_DIR/net.pid"
    cp "$VU_DIR/net.log" "$LAB_RESULTS/net-backend.log" 2>/dev/null
}

# lab_vnet_crash TAP MAC — SIGKILL the net back-end, wait a second, start it again (LAB_NET_KILL).
lab_vnet_crash() {
    local pid
    pid=$(<"$VU_DIR/net.pid")
    kill -9 "$pid" 2>/dev/null
    lab_log "vhost-user: killed the $LAB_NET_BACKEND net back-end (pid $pid) with SIGKILL while the guest sends"
    sleep 1
    lab_vnet_start "$@" && lab_log "vhost-user: $LAB_NET_BACKEND net back-end started again (pid $(<"$VU_DIR/net.pid"))"
}

# lab_l2_add_net VMM TAP MAC — a virtio-net NIC on the existing tap device TAP; with
# LAB_NET_BACKEND other than tap, served over vhost-user by a back-end on TAP (lab_vnet_start).
# iovirt: --net tap=TAP,mac=MAC[,queues=N][,vhost=on][,packed=on][,event_idx=off]
#         --net vhost-user=SOCK,mac=MAC[,queues=N][,packed=on][,event_idx=off]
lab_l2_add_net() {
    local vmm=$1 tap=$2 mac=$3 id=n$L2_NNETS
    L2_NNETS=$((L2_NNETS + 1))
    if [[ $LAB_NET_BACKEND != tap ]]; then
        lab_vnet_start "$tap" "$mac" || return 1
    fi
    case $vmm in
        qemu)
            local netdev dev
            dev="virtio-net-pci,netdev=$id,mac=$mac,$(_lab_qemu_virtio_props)"
            if [[ $LAB_NET_BACKEND != tap ]]; then
                _lab_qemu_shared_ram
                L2_CMD+=(-chardev "socket,id=vu$id,path=$VU_NET_SOCK")
                netdev="vhost-user,id=$id,chardev=vu$id"
            else
                netdev="tap,id=$id,ifname=$tap,script=no,downscript=no,vhost=$LAB_NET_VHOST"
            fi
            if ((LAB_QUEUES > 1)); then
                netdev+=",queues=$LAB_QUEUES"
                dev+=",mq=on,vectors=$((2 * LAB_QUEUES + 2))"
            fi
            L2_CMD+=(-netdev "$netdev" -device "$dev")
            ;;
        iovirt)
            local o="tap=$tap,mac=$mac"
            if [[ $LAB_NET_BACKEND != tap ]]; then
                o="vhost-user=$VU_NET_SOCK,mac=$mac"
            elif [[ $LAB_NET_VHOST == on ]]; then
                o+=",vhost=on"
            fi
            L2_CMD+=(--net "$o$(_lab_iovirt_ring_opts)")
            ;;
    esac
}

# lab_l2_add_passthrough VMM BDF — pass L1's PCI function BDF (bound to vfio-pci) to the guest.
lab_l2_add_passthrough() {
    case $1 in
        qemu) L2_CMD+=(-device "vfio-pci,host=$2") ;;
        iovirt) L2_CMD+=(--device "path=/sys/bus/pci/devices/$2") ;;
    esac
}

# lab_pci_find VENDOR DEVICE — the address of L1's first PCI function with that ID (hex, no 0x).
lab_pci_find() {
    local d
    for d in /sys/bus/pci/devices/*; do
        [[ $(<"$d/vendor") == "0x$1" && $(<"$d/device") == "0x$2" ]] && { echo "${d##*/}"; return 0; }
    done
    lab_log "no PCI device $1:$2 in L1" >&2
    return 1
}

# lab_pci_driver BDF — the driver BDF is bound to (empty when none).
lab_pci_driver() {
    local l
    l=$(readlink "/sys/bus/pci/devices/$1/driver" 2>/dev/null) || return 0
    echo "${l##*/}"
}

# lab_vfio_bind BDF — bind BDF to vfio-pci (driver_override + drivers_probe) and check it took.
lab_vfio_bind() {
    local dev=/sys/bus/pci/devices/$1 cur
    lab_modprobe vfio-pci || return 1
    cur=$(lab_pci_driver "$1")
    [[ $cur == vfio-pci ]] && return 0
    [[ -z $cur ]] || echo "$1" >"$dev/driver/unbind" || { lab_log "cannot unbind $1 from $cur"; return 1; }
    echo vfio-pci >"$dev/driver_override" || return 1
    echo "$1" >/sys/bus/pci/drivers_probe 2>/dev/null
    cur=$(lab_pci_driver "$1")
    [[ $cur == vfio-pci ]] || { lab_log "$1 did not bind to vfio-pci (driver: ${cur:-none})"; return 1; }
    lab_log "$1 bound to vfio-pci (IOMMU group $(basename "$(readlink "$dev/iommu_group")"))"
}

# lab_host_irqs BDF — L1's interrupt count for BDF's VFIO vectors, "name=count ..." from
# /proc/interrupts (vfio-msi[0](BDF), vfio-intx(BDF) etc.; the lines exist while a VMM has the
# vectors enabled). The name is the action naming BDF: on a shared INTx line the actions are a
# comma-separated list and the device's need not be the last.
lab_host_irqs() {
    awk -v bdf="($1)" 'index($0, bdf) && /vfio/ { n = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) n += $i; else break; name = $NF; for (i = NF; i > 1; i--) if (index($i, bdf)) { name = $i; break }; sub(/,$/, "", name); printf "%s=%d ", name, n }' /proc/interrupts
}

# lab_nvme_vfs NUM — bring up NUM VFs on the lab's SR-IOV NVMe PF (QEMU's nvme with sriov_max_vfs)
# and print the PF's address (logs go to stderr: callers capture stdout). QEMU 7.2 needs the virtualization-management sequence before a VF
# works: the PF gives up its flexible queue/interrupt resources, is reset, VFs are created with
# driver autoprobe off (they stay unbound, ready for vfio-pci), and each secondary controller
# gets 4 VQ + 2 VI resources and is set online. The PF's own namespace node stays in L1.
lab_nvme_vfs() {
    local num=$1 pf dev c n
    pf=$(lab_pci_find 1b36 0010) || return 1
    dev=/sys/bus/pci/devices/$pf
    if [[ $(<"$dev/sriov_numvfs") -ge $num ]]; then echo "$pf"; return 0; fi
    modprobe -d "$KDIR" -S "$KVER" nvme_core multipath=N || { lab_log "modprobe nvme_core failed" >&2; return 1; }
    lab_modprobe nvme >&2 || return 1
    for n in $(seq 50); do [[ -c /dev/nvme0 ]] && break; sleep 0.1; done
    [[ -c /dev/nvme0 ]] || { lab_log "no /dev/nvme0 for the PF $pf" >&2; return 1; }
    {
        nvme virt-mgmt /dev/nvme0 -c 0 -r 1 -a 1 -n 0 &&
            nvme virt-mgmt /dev/nvme0 -c 0 -r 0 -a 1 -n 0 &&
            echo 1 >"$dev/reset" && echo 0 >"$dev/sriov_drivers_autoprobe" &&
            echo "$num" >"$dev/sriov_numvfs"
    } >/dev/null || { lab_log "NVMe PF $pf: releasing flexible resources / enabling $num VFs failed" >&2; return 1; }
    for ((c = 1; c <= num; c++)); do
        {
            nvme virt-mgmt /dev/nvme0 -c "$c" -r 0 -a 8 -n 4 &&
                nvme virt-mgmt /dev/nvme0 -c "$c" -r 1 -a 8 -n 2 &&
                nvme virt-mgmt /dev/nvme0 -c "$c" -r 0 -a 9 -n 0
        } >/dev/null || { lab_log "NVMe PF $pf: bringing secondary controller $c online failed" >&2; return 1; }
    done
    for n in $(seq 50); do [[ -b /dev/nvme0n1 ]] && break; sleep 0.1; done
    lab_log "NVMe PF $pf: $num VFs online: $(cd "$dev" && for v in virtfn*; do basename "$(readlink "$v")"; done | tr '\n' ' ')" >&2
    echo "$pf"
}

# lab_nvme_vf PF INDEX — the address of the PF's VF number INDEX (0-based).
lab_nvme_vf() {
    basename "$(readlink "/sys/bus/pci/devices/$1/virtfn$2")"
}

# lab_hub_nic CIDR — configure L1's virtio-net NIC (on QEMU's hub with the e1000e) with CIDR and
# print its name: the peer a guest pings over the passed-through e1000e.
lab_hub_nic() {
    local d n
    lab_modprobe virtio_net >&2 || return 1
    d=$(lab_pci_find 1af4 1000) || return 1
    for n in $(seq 50); do ls /sys/bus/pci/devices/"$d"/virtio*/net/ >/dev/null 2>&1 && break; sleep 0.1; done
    n=$(ls /sys/bus/pci/devices/"$d"/virtio*/net/ 2>/dev/null | head -n 1)
    [[ -n $n ]] || { lab_log "no netdev for L1's virtio-net $d" >&2; return 1; }
    ip addr flush dev "$n" && ip addr add "$1" dev "$n" && ip link set "$n" up ||
        { lab_log "configuring $n failed" >&2; return 1; }
    echo "$n"
}

# lab_tap_create NAME CIDR — a tap device in L1 with an address (multi-queue when LAB_QUEUES > 1).
lab_tap_create() {
    local name=$1 cidr=$2 mq=
    lab_modprobe tun || return 1
    [[ -c /dev/net/tun ]] || { lab_log "/dev/net/tun missing after loading tun"; return 1; }
    ((LAB_QUEUES == 1)) || mq=multi_queue
    ip link del "$name" 2>/dev/null
    ip tuntap add dev "$name" mode tap $mq || { lab_log "ip tuntap add $name failed"; return 1; }
    if ! ip addr add "$cidr" dev "$name" || ! ip link set "$name" up; then
        lab_log "configuring $name failed"
        return 1
    fi
}

# lab_need_vhost_net — vhost_net loaded and /dev/vhost-net present (for LAB_NET_VHOST=on).
lab_need_vhost_net() {
    lab_modprobe vhost_net || return 1
    [[ -c /dev/vhost-net ]] || { lab_log "/dev/vhost-net missing after loading vhost_net"; return 1; }
}

# lab_loop_attach FILE — prints the loop device now backed by FILE (for O_DIRECT on tmpfs files).
lab_loop_attach() {
    lab_modprobe loop || return 1
    losetup --direct-io=off -f --show "$1"
}

# lab_busybox — the static busybox of the L2 initramfs (the same binary runs in L1): the scenarios
# use its awk to generate the guest's pattern byte for byte, and its nc to talk to the guest.
lab_busybox() {
    local b
    for b in "$LAB_CACHE"/busybox/*/bin/busybox; do
        [[ -x $b ]] && { echo "$b"; return 0; }
    done
    lab_log "no busybox in $LAB_CACHE/busybox"
    return 1
}

# lab_blk_pattern SEED MIB — the guest's blk-write pattern on stdout (the function in l2-init,
# run by the same busybox).
lab_blk_pattern() {
    local bb
    bb=$(lab_busybox) || return 1
    BB=$bb "$bb" sh -c "awk() { \"\$BB\" awk \"\$@\"; }
$(sed -n '/^blk_pattern()/,/^}/p' "$LAB_DIR/initramfs/l2-init")
blk_pattern $1 $2"
}

# lab_guest_result LOG KEY — the value of the guest's last "IOVIRT-RESULT KEY=value" line.
lab_guest_result() {
    grep -a "IOVIRT-RESULT $2=" "$1" | tail -n 1 | sed "s/.*IOVIRT-RESULT $2=//" | tr -d '\r'
}

# lab_guest_verdict LOG TEST — 0 iff the guest printed IOVIRT-TEST-OK TEST; else prints the
# failure line (or that there was none) and returns 1.
lab_guest_verdict() {
    if grep -aq "IOVIRT-TEST-OK $2" "$1"; then
        return 0
    fi
    local f
    f=$(grep -a -m1 "IOVIRT-TEST-FAIL" "$1" | sed 's/.*IOVIRT-TEST-FAIL/IOVIRT-TEST-FAIL/')
    lab_log "guest: ${f:-no IOVIRT-TEST-OK/FAIL line from test $2}"
    return 1
}

# lab_check_rings LOG DEVICE-ID — the guest negotiated what the knobs asked for on every virtio
# device of that type (1 net, 2 block): packed ring iff LAB_RING=packed, EVENT_IDX iff on.
lab_check_rings() {
    local log=$1 id=$2 line n=0 bad=0 want_p want_e p e
    want_p=$([[ $LAB_RING == packed ]] && echo 1 || echo 0)
    want_e=$([[ $LAB_EVENT_IDX == on ]] && echo 1 || echo 0)
    while IFS= read -r line; do
        n=$((n + 1))
        p=$(sed -n 's/.* packed=\([01]\).*/\1/p' <<<"$line")
        e=$(sed -n 's/.* event_idx=\([01]\).*/\1/p' <<<"$line")
        lab_log "guest negotiated: ${line#*IOVIRT-VIRTIO }"
        if [[ $p != "$want_p" || $e != "$want_e" ]]; then
            lab_log "FAIL: asked for LAB_RING=$LAB_RING LAB_EVENT_IDX=$LAB_EVENT_IDX, the guest negotiated packed=$p event_idx=$e"
            bad=1
        fi
    done < <(grep -a "IOVIRT-VIRTIO .*id=0x000$id " "$log" | tr -d '\r')
    if ((n == 0)); then
        lab_log "FAIL: the guest reported no virtio device of type $id"
        return 1
    fi
    return "$bad"
}

# lab_need_debugfs — debugfs mounted in L1 (KVM's per-VM statistics).
lab_need_debugfs() {
    mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug || {
        lab_log "cannot mount debugfs"
        return 1
    }
}

# lab_vm_stats — "exits io_exits mmio_exits halt_exits irq_injections" of the one VM running in
# L1, from KVM's debugfs directory PID-FD (the VM-level files sum the vCPUs). Empty if none.
lab_vm_stats() {
    local d f out='' v pid
    for d in /sys/kernel/debug/kvm/[0-9]*-[0-9]*; do
        pid=${d##*/}
        [[ -r $d/exits && -d /proc/${pid%%-*} ]] || continue
        for f in exits io_exits mmio_exits halt_exits irq_injections; do
            v=0
            [[ -r $d/$f ]] && v=$(<"$d/$f")
            out+="$v "
        done
        echo "${out% }"
        return 0
    done
}
