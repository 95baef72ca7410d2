#!/usr/bin/env bash
# The nested passthrough lab: L1 = a Debian kernel under QEMU TCG (-cpu max: SVM + NPT, so kvm_amd
# works inside), with an intel-iommu, an SR-IOV NVMe, edu and an e1000e to pass through; inside L1
# a VMM (QEMU -accel kvm or iovirt) boots an L2 Linux guest. See deploy/lab/README.md.
#
#   lab.sh setup                       download + unpack the kernel and busybox, build initramfses
#   lab.sh run SCENARIO [options]      boot L1, run deploy/lab/scenarios/SCENARIO.sh inside it
#   lab.sh list                        list the scenarios
#
# Exit status of `run`: the scenario's; 124 on timeout; 2 on a usage error; 77 when this machine
# cannot run the lab at all (not root, QEMU or kmod missing, no kernel package reachable).
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${IOVIRT_LAB_CACHE:-/var/cache/iovirt-lab}
RESULTS_BASE=${IOVIRT_LAB_RESULTS:-$CACHE/results}
QEMU=${IOVIRT_LAB_QEMU:-qemu-system-x86_64}
NVME_IMAGE_SIZE=${IOVIRT_LAB_NVME_SIZE:-128M}
# L1 counts as hung after this many seconds without a sign of life; a hung run is retried this often.
STALL=${IOVIRT_LAB_STALL:-30}
RETRIES_ON_HANG=${IOVIRT_LAB_RETRIES:-1}
HAVE_PYTHON=0 # python3 reads a hung L1's vCPU state from the QEMU monitor
command -v python3 >/dev/null 2>&1 && HAVE_PYTHON=1
# L1's vCPUs: 1 is the tested setting (README: stalls; 2 boots L2 slower here).
L1_CPUS=${IOVIRT_LAB_L1_CPUS:-1}
# More parameters for L1's kernel command line (experiments: nohz=off, kvm_amd.* ...).
L1_APPEND=${IOVIRT_LAB_L1_APPEND:-}
# The 9p/virtio chain the L1 initramfs insmods to mount the host root; all else loads later.
L1_INITRD_MODULES=(9p 9pnet_virtio virtio_pci)
# The L2 guest's drivers for the device tests: virtio (modern virtio-pci, blk, net) and the stock
# drivers of the devices passed through from L1 (the NVMe VF, the e1000e).
L2_MODULES=(virtio_pci virtio_blk virtio_net nvme e1000e)
# Paths that L1 covers with its own mounts (tmpfs, proc ...): host files there are invisible to it.
HIDDEN_IN_L1=(/tmp /var/tmp /run /dev /proc /sys)
EX_SKIP=77
EX_USAGE=2
RUN_LOCK_HELD= # set by `run`, which holds $CACHE/.run.lock while it sets up and runs

log() { echo "lab: $*"; }
die() {
    echo "lab: error: $*" >&2
    exit 1
}
usage_error() {
    echo "lab: $*" >&2
    echo "usage: lab.sh setup | lab.sh run SCENARIO [--iovirt PATH] [--timeout SECS] [--env KEY=VALUE]... [--quiet] | lab.sh list" >&2
    exit "$EX_USAGE"
}
skip() {
    echo "lab: cannot run here: $*" >&2
    exit "$EX_SKIP"
}

need_root() { [[ $(id -u) -eq 0 ]] || skip "must run as root (dpkg -x, device nodes in the initramfs, /var/cache)"; }
need_tools() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || skip "'$t' is not installed (run deploy/install-deps.sh)"
    done
}

# ---------------------------------------------------------------------------------------------
# setup

# Newest linux-image-6.1.0-N-amd64 (full flavour; the cloud one lacks 9p and e1000e) in apt's lists.
newest_kernel_pkg() {
    apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null |
        awk '{ print $1 }' | sort -V | tail -n 1
}

resolve_kernel() {
    local pkg
    if [[ -n ${IOVIRT_LAB_KVER:-} ]]; then
        KVER=$IOVIRT_LAB_KVER
        return
    fi
    pkg=$(newest_kernel_pkg)
    if [[ -z $pkg ]]; then
        log "no kernel package in apt's lists: running apt-get update"
        apt-get update -qq >/dev/null 2>&1 || true
        pkg=$(newest_kernel_pkg)
    fi
    if [[ -z $pkg ]]; then
        if [[ -s $CACHE/kver ]]; then
            KVER=$(<"$CACHE/kver")
            log "apt knows no linux-image-6.1.0-*-amd64; using the cached kernel $KVER"
            return
        fi
        skip "apt-cache finds no linux-image-6.1.0-*-amd64 package and nothing is cached"
    fi
    KVER=${pkg#linux-image-}
}

# apt_fetch PACKAGE GLOB — make sure a .deb matching GLOB is in $CACHE/debs; prints its path.
apt_fetch() {
    local pkg=$1 glob=$2 deb
    deb=$(find "$CACHE/debs" -maxdepth 1 -name "$glob" | sort -V | tail -n 1)
    if [[ -z $deb ]]; then
        log "downloading $pkg" >&2
        if ! (cd "$CACHE/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2); then
            skip "apt-get download $pkg failed (no reachable package registry?)"
        fi
        deb=$(find "$CACHE/debs" -maxdepth 1 -name "$glob" | sort -V | tail -n 1)
        [[ -n $deb ]] || die "apt-get download $pkg left no $glob in $CACHE/debs"
    fi
    echo "$deb"
}

# extract_vmlinux BZIMAGE OUT — the uncompressed ELF kernel inside a bzImage (as the kernel's
# scripts/extract-vmlinux does). QEMU boots it through its PVH entry point, skipping the in-guest
# decompression that costs ~3 s under TCG. Returns 1 if no compressed ELF payload is found.
extract_vmlinux() {
    local img=$1 out=$2 magic off cmd
    for magic in $'\xfd7zXZ:xz -dc --single-stream' $'\x28\xb5\x2f\xfd:zstd -dcq' $'\x1f\x8b\x08:gzip -dc'; do
        cmd=${magic#*:}
        command -v "${cmd%% *}" >/dev/null 2>&1 || continue
        for off in $(LC_ALL=C grep -aboF -- "${magic%%:*}" "$img" | cut -d: -f1 | head -n 5); do
            # shellcheck disable=SC2086 # cmd is a command line
            tail -c +$((off + 1)) "$img" | $cmd >"$out.tmp" 2>/dev/null
            if [[ $(head -c 4 "$out.tmp" | od -An -c | tr -d ' ') == 177ELF ]]; then
                mv "$out.tmp" "$out"
                return 0
            fi
        done
    done
    rm -f "$out.tmp"
    return 1
}

# build_cpio DIR OUT [gz] — newc archive of DIR owned by root, reproducible order.
build_cpio() {
    local dir=$1 out=$2 gz=${3:-}
    (cd "$dir" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
        cpio --null --create --format=newc --owner=0:0 --quiet) >"$out.tmp"
    if [[ -n $gz ]]; then
        gzip -9n <"$out.tmp" >"$out.tmp.gz"
        mv "$out.tmp.gz" "$out.tmp"
    fi
    mv "$out.tmp" "$out"
}

# populate_busybox ROOT — a static busybox at ROOT/bin with all its applets as symlinks.
populate_busybox() {
    local root=$1 a
    mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys"
    ln -s bin "$root/sbin"
    cp "$BUSYBOX" "$root/bin/busybox"
    for a in $("$BUSYBOX" --list); do
        [[ $a == busybox ]] || ln -s busybox "$root/bin/$a"
    done
    # The kernel opens /dev/console from the initramfs before init runs: without it init has no
    # stdout (devtmpfs is not auto-mounted on an initramfs).
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
}

build_l1_initramfs() {
    local out=$CACHE/l1-initramfs.cpio key stamp=$CACHE/stamps/l1-initramfs mods work p
    mods=$(module_paths "${L1_INITRD_MODULES[@]}")
    key=$(printf '%s\n' "$KVER" "$BUSYBOX_DEB" "$mods" | cat - "$LAB_DIR/initramfs/l1-init" | sha256sum)
    if [[ -f $out && -f $stamp && $(<"$stamp") == "$key" ]]; then
        return
    fi
    log "building l1 initramfs ($KVER)"
    work=$(mktemp -d "$CACHE/l1-initramfs.XXXXXX")
    populate_busybox "$work"
    mkdir -p "$work/modules" "$work/newroot"
    : >"$work/modules.list"
    for p in $mods; do
        cp "$p" "$work/modules/"
        echo "${p##*/}" >>"$work/modules.list"
    done
    install -m 755 "$LAB_DIR/initramfs/l1-init" "$work/init"
    printf 'KVER=%s\n' "$KVER" >"$work/lab.conf"
    # modprobe helper for the kernel's own module requests (see initramfs/l1-init).
    cat >"$work/lab-modprobe" <<EOF
#!/bin/sh
exec /bin/chroot /newroot /sbin/modprobe -d /run/lab/cache/kernel/$KVER -S $KVER "\$@"
EOF
    chmod 755 "$work/lab-modprobe"
    # Uncompressed: the L1 kernel runs under TCG, where gunzip costs more than reading fw_cfg.
    build_cpio "$work" "$out"
    rm -rf "$work"
    echo "$key" >"$stamp"
}

# module_paths MODULE... — the .ko files that MODULEs need, dependencies first, each once.
module_paths() {
    local m
    for m in "$@"; do
        modprobe -d "$KTREE" -S "$KVER" --show-depends "$m" || die "no module chain for $m in $KVER"
    done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }'
}

# build_guest_modules — the lab's own guest drivers (deploy/lab/guest: iovirt_edu, the edu test
# driver) built against the lab kernel's headers, which need Debian's linux-headers-$KVER
# installed on this host (kbuild's Makefiles use absolute /usr/src and /usr/lib paths).
build_guest_modules() {
    local out=$CACHE/guest-modules key stamp=$CACHE/stamps/guest-modules work
    key=$(cat "$LAB_DIR"/guest/* | cat - <(echo "$KVER") | sha256sum)
    if [[ -f $out/iovirt_edu.ko && -f $stamp && $(<"$stamp") == "$key" ]]; then
        return
    fi
    if [[ ! -f /usr/src/linux-headers-$KVER/Makefile ]]; then
        log "installing linux-headers-$KVER (to build the lab's guest test driver)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "linux-headers-$KVER" >/dev/null || die "apt-get install linux-headers-$KVER failed"
    fi
    log "building the guest test driver (iovirt_edu.ko for $KVER)"
    work=$(mktemp -d "$CACHE/guest-modules.XXXXXX")
    cp "$LAB_DIR"/guest/* "$work/"
    make -s -C "/usr/src/linux-headers-$KVER" M="$work" modules >"$work/build.log" 2>&1 ||
        die "building deploy/lab/guest against linux-headers-$KVER failed: $(tail -n 3 "$work/build.log")"
    rm -rf "$out"
    mkdir -p "$out"
    cp "$work/iovirt_edu.ko" "$out/"
    rm -rf "$work"
    echo "$key" >"$stamp"
}

build_l2_initramfs() {
    local out=$CACHE/l2-initramfs.cpio.gz key stamp=$CACHE/stamps/l2-initramfs work mods p
    mods=$(module_paths "${L2_MODULES[@]}")
    key=$(printf '%s\n' "$KVER" "$BUSYBOX_DEB" "$mods" | cat - "$LAB_DIR/initramfs/l2-init" \
        "$CACHE/guest-modules/iovirt_edu.ko" | sha256sum)
    if [[ -f $out && -f $stamp && $(<"$stamp") == "$key" ]]; then
        return
    fi
    log "building l2 initramfs ($KVER)"
    work=$(mktemp -d "$CACHE/l2-initramfs.XXXXXX")
    populate_busybox "$work"
    # The virtio drivers, insmodded in this order by /init only when a test asks for devices
    # (a plain boot does not pay for them).
    mkdir -p "$work/modules"
    : >"$work/modules.list"
    for p in $mods; do
        cp "$p" "$work/modules/"
        echo "${p##*/}" >>"$work/modules.list"
    done
    # The lab's own test drivers, insmodded by the tests that use them.
    mkdir -p "$work/guest"
    cp "$CACHE/guest-modules/iovirt_edu.ko" "$work/guest/"
    install -m 755 "$LAB_DIR/initramfs/l2-init" "$work/init"
    build_cpio "$work" "$out" gz
    rm -rf "$work"
    echo "$key" >"$stamp"
}

cmd_setup() {
    need_root
    need_tools apt-get apt-cache dpkg depmod modprobe cpio gzip sha256sum flock make
    mkdir -p "$CACHE/debs" "$CACHE/kernel" "$CACHE/busybox" "$CACHE/stamps"
    local lockfd
    exec {lockfd}>"$CACHE/.setup.lock"
    flock "$lockfd"

    resolve_kernel
    local kdeb bdeb tmp
    KTREE=$CACHE/kernel/$KVER
    if [[ ! -f $CACHE/stamps/unpack-$KVER ]]; then
        kdeb=$(apt_fetch "linux-image-$KVER" "linux-image-${KVER}_*.deb")
        log "unpacking $(basename "$kdeb")"
        rm -rf "$KTREE" "$KTREE.tmp"
        dpkg -x "$kdeb" "$KTREE.tmp"
        [[ -f $KTREE.tmp/boot/vmlinuz-$KVER && -d $KTREE.tmp/lib/modules/$KVER ]] ||
            die "$(basename "$kdeb") has no boot/vmlinuz-$KVER or lib/modules/$KVER"
        depmod -b "$KTREE.tmp" "$KVER"
        mv "$KTREE.tmp" "$KTREE"
        touch "$CACHE/stamps/unpack-$KVER"
    fi
    # Keep one kernel: older trees (400 MB each) and their packages go — but not under a running
    # L1, which loads its modules from its tree.
    local old runfd=
    [[ -n $RUN_LOCK_HELD ]] || exec {runfd}>"$CACHE/.run.lock"
    if [[ -n $RUN_LOCK_HELD ]] || flock -n "$runfd"; then
        for old in "$CACHE"/kernel/*; do
            [[ $old == "$KTREE" || $old == *.tmp ]] && continue
            log "removing the older kernel tree $(basename "$old")"
            rm -rf "$old" "$CACHE/stamps/unpack-$(basename "$old")" "$CACHE/stamps/vmlinux-$(basename "$old")"
        done
        find "$CACHE/debs" -maxdepth 1 -name 'linux-image-*.deb' ! -name "linux-image-${KVER}_*" -delete
    fi
    [[ -z $runfd ]] || exec {runfd}>&-
    ln -sfn "kernel/$KVER/boot/vmlinuz-$KVER" "$CACHE/vmlinuz"
    if [[ ! -f $CACHE/stamps/vmlinux-$KVER ]]; then
        log "extracting vmlinux ($KVER)"
        if extract_vmlinux "$KTREE/boot/vmlinuz-$KVER" "$KTREE/vmlinux"; then
            ln -sfn "kernel/$KVER/vmlinux" "$CACHE/vmlinux"
        else
            log "no ELF vmlinux found in the bzImage: L1 boots the bzImage (about 3 s slower)"
            rm -f "$CACHE/vmlinux"
        fi
        touch "$CACHE/stamps/vmlinux-$KVER"
    fi
    echo "$KVER" >"$CACHE/kver.tmp"
    mv "$CACHE/kver.tmp" "$CACHE/kver"

    bdeb=$(apt_fetch busybox-static 'busybox-static_*.deb')
    BUSYBOX_DEB=$(basename "$bdeb")
    BUSYBOX=$CACHE/busybox/$BUSYBOX_DEB/bin/busybox
    if [[ ! -x $BUSYBOX ]]; then
        tmp=$CACHE/busybox/$BUSYBOX_DEB.tmp
        rm -rf "$tmp"
        dpkg -x "$bdeb" "$tmp"
        [[ -x $tmp/bin/busybox ]] || die "$BUSYBOX_DEB has no bin/busybox"
        mv "$tmp" "$CACHE/busybox/$BUSYBOX_DEB"
    fi

    build_l1_initramfs
    build_guest_modules
    build_l2_initramfs
    exec {lockfd}>&-
}

# ---------------------------------------------------------------------------------------------
# run

# qemu_opt VALUE — escape a value for a QEMU -option list (a comma is written twice).
qemu_opt() { printf '%s' "${1//,/,,}"; }

hidden_in_l1() {
    local p=$1 h
    for h in "${HIDDEN_IN_L1[@]}"; do
        [[ $p == "$h" || $p == "$h"/* ]] && return 0
    done
    return 1
}

# Reads the console: strips CRs and terminal escapes, drops empty lines, stamps seconds since start.
console_filter() {
    local start=$1 line now
    sed -u -e 's/\r//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1b[()][0-9A-Za-z]//g' -e 's/\x1b[c78=>]//g' |
        grep --line-buffered -av -e '^[[:space:]]*$' |
        while IFS= read -r line || [[ -n $line ]]; do
            now=${EPOCHREALTIME/./}
            now=$(((now - start) / 10000))
            printf '[%4d.%02d] %s\n' $((now / 100)) $((now % 100)) "$line"
        done
}

cmd_run() {
    local scenario=${1:-} iovirt="" timeout=600 quiet="" envs=()
    [[ -n $scenario && $scenario != -* ]] || usage_error "run: which scenario? ($(list_scenarios | tr '\n' ' '))"
    shift
    while (($#)); do
        case $1 in
            --iovirt) iovirt=${2:?--iovirt needs a path}; shift 2 ;;
            --iovirt=*) iovirt=${1#*=}; shift ;;
            --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
            --timeout=*) timeout=${1#*=}; shift ;;
            --env) envs+=("${2:?--env needs KEY=VALUE}"); shift 2 ;;
            --env=*) envs+=("${1#*=}"); shift ;;
            -q | --quiet) quiet=1; shift ;;
            *) usage_error "run: unknown option '$1'" ;;
        esac
    done
    local script=$LAB_DIR/scenarios/$scenario.sh
    [[ $scenario =~ ^[A-Za-z0-9_.-]+$ && -f $script ]] ||
        usage_error "run: no scenario '$scenario' (have: $(list_scenarios | tr '\n' ' '))"
    [[ $timeout =~ ^[0-9]+$ && $timeout -gt 0 ]] || usage_error "run: --timeout wants a positive number of seconds"
    local e
    for e in "${envs[@]}"; do
        [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_error "run: --env wants KEY=VALUE, got '$e'"
    done

    # The iovirt binary must be visible inside L1, which chroots into the host root over 9p: same
    # absolute path, except under the paths L1 mounts over (/tmp ...): those get their own export.
    local exports=() append=""
    if [[ -n $iovirt ]]; then
        [[ -e $iovirt ]] || usage_error "run: --iovirt '$iovirt' does not exist"
        iovirt=$(realpath -e "$iovirt")
        [[ -f $iovirt && -x $iovirt ]] || usage_error "run: --iovirt '$iovirt' is not an executable file"
        [[ $iovirt != *[[:space:],:]* ]] || usage_error "run: --iovirt path must not contain spaces, commas or colons: '$iovirt'"
        if hidden_in_l1 "$iovirt"; then
            exports+=("iovirtdir:$(dirname "$iovirt")")
            log "sharing $(dirname "$iovirt") with L1 at the same path (L1 hides it with its own mounts)"
        fi
    elif grep -q '^# lab-requires: iovirt' "$script"; then
        usage_error "run: scenario '$scenario' needs --iovirt PATH (the iovirt binary to test)"
    fi

    need_root
    need_tools "$QEMU" timeout flock realpath sed grep

    # One lab run at a time: the runs share the NVMe image, and two TCG guests on 2 cores only slow
    # each other into timeouts. Setup runs under the lock too: another checkout's lab.sh may rebuild
    # the shared initramfses from its own init scripts, and must not do so under a running L1.
    local runfd
    mkdir -p "$CACHE"
    exec {runfd}>"$CACHE/.run.lock"
    if ! flock -n "$runfd"; then
        log "waiting for another lab run to finish"
        flock "$runfd"
    fi
    RUN_LOCK_HELD=1
    cmd_setup

    mkdir -p "$RESULTS_BASE"
    local res
    res=$RESULTS_BASE/$scenario-$(date +%Y%m%d-%H%M%S)-$$
    mkdir -p "$res"
    # Keep the 20 newest result folders (under the lock: the running one is the newest).
    find "$RESULTS_BASE" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +21 |
        cut -d' ' -f2- | xargs -r rm -rf
    {
        printf 'export LAB_SCENARIO=%q KVER=%q LAB_TIMEOUT=%q IOVIRT=%q\n' "$scenario" "$KVER" "$timeout" "$iovirt"
        printf 'export LAB_HOST_LOADAVG=%q\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
        for e in "${envs[@]}"; do
            printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"
        done
    } >"$res/env"

    [[ -f $CACHE/nvm.img ]] || truncate -s "$NVME_IMAGE_SIZE" "$CACHE/nvm.img"

    # The uncompressed ELF kernel boots through PVH: no decompression under TCG.
    local l1_kernel=$CACHE/vmlinuz
    [[ -f $CACHE/vmlinux ]] && l1_kernel=$CACHE/vmlinux
    # shellcheck disable=SC2054 # the commas are QEMU option syntax
    local qemu=("$QEMU" -accel tcg -cpu max -machine q35 -smp "$L1_CPUS" -m 2048
        -nographic -no-reboot -nic none -vga none
        -monitor "unix:$(qemu_opt "$res/monitor.sock"),server=on,wait=off"
        -device intel-iommu,intremap=on
        -kernel "$l1_kernel" -initrd "$CACHE/l1-initramfs.cpio"
        -virtfs "local,path=/,mount_tag=hostfs,security_model=none,readonly=on,multidevs=remap"
        -virtfs "local,path=$(qemu_opt "$res"),mount_tag=lab,security_model=none"
        -virtfs "local,path=$(qemu_opt "$CACHE"),mount_tag=labcache,security_model=none,readonly=on"
        -virtfs "local,path=$(qemu_opt "$LAB_DIR"),mount_tag=labscripts,security_model=none,readonly=on"
        -device pcie-root-port,id=rp1,chassis=1,slot=1
        -drive "file=$(qemu_opt "$CACHE/nvm.img"),if=none,id=nvm1,format=raw"
        -device nvme-subsys,id=subsys0,nqn=labsubsys
        -device nvme,id=nvme0,bus=rp1,serial=deadbeef,subsys=subsys0,sriov_max_vfs=2,sriov_vq_flexible=8,sriov_vi_flexible=4
        -device nvme-ns,drive=nvm1,nsid=1,bus=nvme0
        -device pcie-root-port,id=rp2,chassis=2,slot=2 -device edu,bus=rp2
        -device pcie-root-port,id=rp3,chassis=3,slot=3
        -netdev hubport,id=hp0,hubid=0 -device e1000e,bus=rp3,netdev=hp0,romfile=
        -netdev hubport,id=hp1,hubid=0 -device virtio-net-pci,netdev=hp1,romfile=)
    for e in "${exports[@]}"; do
        qemu+=(-virtfs "local,path=$(qemu_opt "${e#*:}"),mount_tag=${e%%:*},security_model=none,readonly=on,multidevs=remap")
        append+=" iovirt.export=$e"
    done
    # mitigations=off: L1 runs under TCG, where the speculation barriers are pure cost.
    qemu+=(-append "console=ttyS0 panic=-1 quiet mitigations=off intel_iommu=on iommu=pt ${L1_APPEND:+$L1_APPEND }iovirt.scenario=$scenario$append")

    # A scenario may ask for more retries ("# lab-retries-on-hang: N"), e.g. one that boots L2 many
    # times and resumes where it stopped.
    local retries=$RETRIES_ON_HANG n
    n=$(sed -n 's/^# lab-retries-on-hang: *\([0-9]\+\).*/\1/p' "$script" | head -n 1)
    [[ -z $n || -n ${IOVIRT_LAB_RETRIES:-} ]] || retries=$n
    local attempt=1 attempts=$((1 + retries)) rc
    while :; do
        boot_l1 "$res" "$timeout" "$quiet" "$iovirt" "${qemu[@]}" && rc=0 || rc=$?
        ((rc == 75 && attempt < attempts)) || break
        attempt=$((attempt + 1))
        log "retrying: attempt $attempt of $attempts (set IOVIRT_LAB_RETRIES=0 to never retry)"
        for e in console.log console.raw heartbeat hung hang-cpu-state.txt; do
            [[ ! -e $res/$e ]] || mv "$res/$e" "$res/$e.$((attempt - 1))"
        done
    done
    exec {runfd}>&-
    ((rc != 75)) || rc=1
    exit "$rc"
}

# monitor SOCKET COMMAND... — run human-monitor commands on L1's QEMU, print their output.
monitor() {
    python3 - "$@" <<'PY'
import re, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
s.connect(sys.argv[1])
for c in sys.argv[2:]:
    s.sendall(c.encode() + b"\n")
    time.sleep(0.5)
out = b""
try:
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
except OSError:
    pass
sys.stdout.write(re.sub(r"\x1b\[[0-9;]*[A-Za-z]|\(qemu\) [^\n]*", "", out.decode(errors="replace")))
PY
}

# Signs of life: l1/runner.sh touches heartbeat in the results share every 2 s. With none for
# STALL seconds L1 is wedged — the nested-SVM-under-TCG stall described in README.md: L1's vCPU
# sits in a spinning L2 vCPU with L1's timer interrupt pending, and not even an NMI gets it out.
# The watchdog then saves the vCPU state and stops QEMU; cmd_run retries the run.
l1_watchdog() {
    local res=$1 t0 now age pid
    t0=$(date +%s)
    while sleep 2; do
        now=$(date +%s)
        if [[ -f $res/heartbeat ]]; then
            age=$((now - $(stat -c %Y "$res/heartbeat")))
        else
            age=$((now - t0))
        fi
        ((age > STALL)) || continue
        echo "$age" >"$res/hung"
        if [[ $HAVE_PYTHON == 1 ]]; then
            monitor "$res/monitor.sock" "info cpus" "info registers" "info lapic" >"$res/hang-cpu-state.txt" 2>&1 || true
        fi
        pid=$(cat "$res/qemu.pid" 2>/dev/null) && kill "$pid" 2>/dev/null
        return 0
    done
}

# boot_l1 RES TIMEOUT QUIET IOVIRT QEMU-COMMAND... — one boot of L1; returns the scenario's exit
# status, 124 on timeout, 75 when L1 hung (the caller may retry), 1 when L1 ended without a status.
boot_l1() {
    local res=$1 timeout=$2 quiet=$3 iovirt=$4
    shift 4
    rm -f "$res/status" "$res/init-error" "$res/heartbeat" "$res/hung" "$res/qemu.pid"
    log "running scenario '$scenario' (kernel $KVER, timeout ${timeout}s${iovirt:+, iovirt $iovirt}); results in $res"
    printf '%q ' "$@" >"$res/qemu-l1.cmd"
    local start=${EPOCHREALTIME/./} qemu_rc wd
    l1_watchdog "$res" &
    wd=$!
    set +e
    if [[ -z $quiet ]]; then
        timeout --foreground -k 10 "$timeout" "$@" -pidfile "$res/qemu.pid" </dev/null 2>&1 |
            tee "$res/console.raw" | console_filter "$start" | tee "$res/console.log"
    else
        timeout --foreground -k 10 "$timeout" "$@" -pidfile "$res/qemu.pid" </dev/null 2>&1 |
            tee "$res/console.raw" | console_filter "$start" >"$res/console.log"
    fi
    qemu_rc=${PIPESTATUS[0]}
    kill "$wd" 2>/dev/null
    wait "$wd" 2>/dev/null
    set -e
    local took=$(((${EPOCHREALTIME/./} - start) / 1000000)) rc
    if [[ -s $res/status ]]; then
        rc=$(<"$res/status")
        if [[ $rc == 0 ]]; then
            log "scenario '$scenario' PASSED in ${took}s"
        elif [[ $rc == "$EX_SKIP" ]]; then
            log "scenario '$scenario' SKIPPED itself (exit $EX_SKIP) after ${took}s"
        else
            log "scenario '$scenario' FAILED (exit status $rc) after ${took}s; console: $res/console.log"
            [[ -z $quiet ]] || tail -n 40 "$res/console.log" | sed 's/^/  | /'
        fi
        return "$rc"
    fi
    if [[ -f $res/hung ]]; then
        log "L1 HUNG: no sign of life for $(<"$res/hung")s, stopped after ${took}s (vCPU state in $res/hang-cpu-state.txt); console tail ($res/console.log):"
        rc=75
    elif ((qemu_rc == 124 || qemu_rc == 137)); then
        log "scenario '$scenario' TIMED OUT after ${timeout}s; console tail ($res/console.log):"
        rc=124
    elif [[ -s $res/init-error ]]; then
        log "L1 init failed: $(<"$res/init-error"); console tail ($res/console.log):"
        rc=1
    else
        log "L1 stopped without a scenario status (QEMU exit status $qemu_rc) after ${took}s; console tail ($res/console.log):"
        rc=1
    fi
    tail -n 40 "$res/console.log" | sed 's/^/  | /'
    return "$rc"
}

list_scenarios() {
    local f
    for f in "$LAB_DIR"/scenarios/*.sh; do
        f=${f##*/}
        echo "${f%.sh}"
    done
}

case ${1:-} in
    setup)
        shift
        (($# == 0)) || usage_error "setup takes no arguments"
        cmd_setup
        log "ready: kernel $KVER, cache $CACHE"
        ;;
    run)
        shift
        cmd_run "$@"
        ;;
    list) list_scenarios ;;
    -h | --help | help)
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
        ;;
    *) usage_error "unknown command '${1:-}'" ;;
esac
