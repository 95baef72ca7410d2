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
lab_l2_cmdline() {
    local c="console=ttyS0 panic=-1"
    [[ ${LAB_GUEST_VERBOSE:-0} == 1 ]] || c+=" quiet"
    c+=" iovirt.shutdown=${LAB_GUEST_SHUTDOWN:-poweroff} iovirt.expect_cpus=$1"
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

# Reads a console, timestamps each line on arrival; records the first marker line.
_lab_console_reader() {
    local tag=$1 log=$2 start=$3 line now seen=
    exec 3>>"$log"
    while IFS= read -r line || [[ -n $line ]]; do
        now=${EPOCHREALTIME/./}
        line=${line//$'\r'/}
        printf '%s\n' "$line" >&3
        printf '%s| %s\n' "$tag" "$line"
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
