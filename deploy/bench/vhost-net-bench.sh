#!/bin/bash
# vhost-user-net benchmark (issue 4): iovirt-vhost net vs DPDK's own vhost back-end (dpdk-testpmd
# --vdev net_vhost0), both driven by the same front-end: dpdk-testpmd --vdev net_virtio_user0
# (DPDK's virtio-net driver in user space), 64-byte frames, 1 queue pair.
#
#   sudo deploy/bench/vhost-net-bench.sh [--build DIR] [--runs N] [--seconds T] [--warmup W]
#        [--modes "tx rx fwd rtt"] [--backends "iovirt iovirt-gap dpdk"] [--poll-us N] [--poll-gap-ns G]
#        [--pkt-len L] [--gen-cpu C] [--backend-cpu S] [--no-huge] [--fwd-bursts B] [--packed]
#
# Environment overrides: BENCH_RUNS, BENCH_SECONDS (e.g. BENCH_RUNS=1 BENCH_SECONDS=3 for a quick
# check), BENCH_WARMUP, BENCH_MODES, BENCH_BACKENDS, BENCH_POLL_US, BENCH_POLL_GAP_NS.
# Back-ends: iovirt (iovirt-vhost as it starts by default: --poll-gap-ns 0, polling back to back
# as testpmd does), iovirt-gap (iovirt-vhost --poll-gap-ns G, default 4000: after a run of 32 frames
# or more it waits G ns between empty polls; see its --help) and dpdk; the tables give every one
# present and each iovirt-vhost's ratio to DPDK. Compare rtt too: a gap can add up to G to a
# frame's latency under load (a frame at a time gets no gap).
#
# Build first (an optimised build): cmake -S . -B build-rel -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
#   && ninja -C build-rel -j2 iovirt-vhost iovirt-cpu-distance
#
# Modes (each: RUNS runs of T seconds after W seconds of warm-up, alternating the back-ends, every
# process started fresh; the generator pinned to --gen-cpu, the back-end to --backend-cpu):
#   tx   the front-end sends: virtio-user txonly -> back-end drops every frame after copying it out of
#        guest memory (iovirt-vhost --backend sink; testpmd net_vhost rxonly, whose dequeue copies into
#        mbufs). Figure: frames the front-end got into the tx ring per second; the ring is full all
#        the time (the generator is faster), so that is the rate the back-end takes them out (the
#        difference is at most one ring, 256 frames, per window).
#   rx   the back-end generates: iovirt-vhost --backend source=LEN vs testpmd net_vhost txonly,
#        virtio-user rxonly. Figure: frames the front-end received per second.
#   fwd  the back-end forwards the frames back: iovirt-vhost --backend ring-loopback vs testpmd
#        net_vhost io forward; virtio-user io-forwards what it receives back out, primed with
#        B bursts of 32 frames (start tx_first B), so B*32 frames circulate. Figure: frames per
#        second through the front-end's rx (each crossed the back-end once). A closed loop: the
#        figure is bound by the round trip of both sides, so it is the one most disturbed by other
#        load on the two CPUs (a descheduled side stalls the loop); on a shared machine compare
#        only figures taken together, and raise --fwd-bursts (at most 7: 224 frames in a 256 ring).
#   rtt  fwd with one frame circulating (virtio-user --burst=1, start tx_first 1): a latency figure.
#        Each frame crosses the front-end's tx ring, the back-end, and its rx ring, and the front-end
#        sends it straight back, so 1 / (frames per second) is one round trip through the back-end
#        and the front-end, including four cross-CPU cache-line transfers (the CPU round trip
#        column, twice). Not in the default modes: --modes "tx rx fwd rtt".
# Rates are testpmd's own "show port stats" Rx-pps/Tx-pps of the virtio-user port: the second
# "show" prints the counters' change divided by the TSC time since the first, i.e. exactly the T
# second window. Both back-ends are measured by the same code in the same process.
# Which side sets the pace: the generator runs with --record-burst-stats, and the table gives, per
# back-end, the share of the front-end's tx bursts that went into the ring whole (tx; near 100%:
# the ring was never full, so the back-end kept up and the figure is the generator's own limit)
# or of its rx polls that found nothing (rx, fwd; near 100%: the front-end waited for the back-end).
# A second table gives each back-end's cost: busy TSC cycles per frame, i.e. the cycles of the
# polling rounds (iovirt-vhost's worker, its exit line) or bursts (testpmd --record-core-cycles)
# that moved frames, over the frames moved. Where the generator sets the pace (tx) the Mpps ratio
# is 1 whatever the back-ends cost; this figure still tells them apart (a back-end that polls
# faster than frames arrive finds smaller bursts, and pays its per-burst costs over fewer frames,
# so it is if anything against the faster one).
#
# --packed: virtio-user drives packed rings (packed_vq=1, virtio 1.2 section 2.8) instead of split
# ones, against both back-ends.
# Before each run the script measures how far apart the two CPUs are (iovirt-cpu-distance, a
# cache line's round trip; built with the benchmarks), and the table gives its range over each
# back-end's runs: figures taken at different distances do not compare (on a VM, the host may
# move the vCPUs between runs: 60 ns and 340 ns were both seen on one machine in one hour).
#
# Memory: hugepages by default (2 MiB, --in-memory: no files left in /dev/hugepages; the script
# raises vm.nr_hugepages if fewer than 512 are free and mounts hugetlbfs if absent), so the guest
# memory virtio-user shares with the back-end is hugepage-backed for both back-ends; --no-huge uses
# 4 KiB pages for everything. Runs as root; needs 2 CPUs for the pinning.
set -euo pipefail

BUILD=build-rel
RUNS=${BENCH_RUNS:-5}
SECS=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-1}
MODES=${BENCH_MODES:-"tx rx fwd"}
BACKENDS=${BENCH_BACKENDS:-"iovirt iovirt-gap dpdk"}
POLL_US=${BENCH_POLL_US:-1000}
POLL_GAP_NS=${BENCH_POLL_GAP_NS:-4000}
PKT_LEN=64
GEN_CPU=0
BACKEND_CPU=1
HUGE=1
FWD_BURSTS=4
PACKED=0
TESTPMD=/usr/bin/dpdk-testpmd

usage() { sed -n '2,50p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --modes) MODES=$2; shift 2 ;;
    --backends) BACKENDS=$2; shift 2 ;;
    --poll-us) POLL_US=$2; shift 2 ;;
    --poll-gap-ns) POLL_GAP_NS=$2; shift 2 ;;
    --pkt-len) PKT_LEN=$2; shift 2 ;;
    --gen-cpu) GEN_CPU=$2; shift 2 ;;
    --backend-cpu) BACKEND_CPU=$2; shift 2 ;;
    --no-huge) HUGE=0; shift ;;
    --fwd-bursts) FWD_BURSTS=$2; shift 2 ;;
    --packed) PACKED=1; shift ;;
    -h|--help) usage ;;
    *) echo "vhost-net-bench: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

VHOST=$BUILD/vmm/iovirt-vhost
[ -x "$TESTPMD" ] || { echo "vhost-net-bench: $TESTPMD missing (apt-get install dpdk-dev)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "vhost-net-bench: python3 missing" >&2; exit 1; }
for be in $BACKENDS; do
  case $be in iovirt|iovirt-gap|dpdk) ;; *) echo "vhost-net-bench: unknown back-end '$be' (iovirt, iovirt-gap, dpdk)" >&2; exit 2 ;; esac
done
case " $BACKENDS " in
  *" iovirt "*|*" iovirt-gap "*)
    [ -x "$VHOST" ] || { echo "vhost-net-bench: $VHOST not built (ninja -C $BUILD iovirt-vhost), or pass --backends dpdk" >&2; exit 1; }
    "$VHOST" net --help >/dev/null 2>&1 || { echo "vhost-net-bench: $VHOST has no 'net' command (too old a build?)" >&2; exit 1; } ;;
esac
[ "$(id -u)" = 0 ] || { echo "vhost-net-bench: run as root (hugepages, CPU pinning)" >&2; exit 1; }

# DPDK EAL memory options shared by both testpmd instances.
if [ "$HUGE" = 1 ]; then
  mountpoint -q /dev/hugepages || { mkdir -p /dev/hugepages; mount -t hugetlbfs nodev /dev/hugepages; }
  free_pages=$(awk '/^HugePages_Free/ {print $2}' /proc/meminfo)
  if [ "$free_pages" -lt 512 ]; then
    total=$(cat /proc/sys/vm/nr_hugepages)
    echo $((total + 512 - free_pages)) > /proc/sys/vm/nr_hugepages
    free_pages=$(awk '/^HugePages_Free/ {print $2}' /proc/meminfo)
    [ "$free_pages" -ge 512 ] || { echo "vhost-net-bench: only $free_pages free 2 MiB hugepages after raising vm.nr_hugepages (need 512); free memory or use --no-huge" >&2; exit 1; }
  fi
  MEM_ARGS=(-m 512 --in-memory)
else
  MEM_ARGS=(-m 512 --no-huge)
fi

WORK=$(mktemp -d /tmp/iovirt-net-bench.XXXXXX)
SOCK=$WORK/net.sock
RES=$WORK/results
PREFIX=iovirt-net-bench-$$
BACKEND_PID=
cleanup() {
  if [ -n "$BACKEND_PID" ]; then kill "$BACKEND_PID" 2>/dev/null || true; wait "$BACKEND_PID" 2>/dev/null || true; fi
  rm -rf "$WORK" "/var/run/dpdk/$PREFIX-be" "/var/run/dpdk/$PREFIX-gen"
}
trap cleanup EXIT
: > "$RES"

# The back-end's DPDK (testpmd) or iovirt role per mode.
dpdk_mode() { case $1 in tx) echo rxonly ;; rx) echo txonly ;; fwd|rtt) echo io ;; esac; }
iovirt_backend() { case $1 in tx) echo sink ;; rx) echo "source=$PKT_LEN" ;; fwd|rtt) echo ring-loopback ;; esac; }
gen_mode() { case $1 in tx) echo txonly ;; rx) echo rxonly ;; fwd|rtt) echo io ;; esac; }

start_backend() {  # backend mode
  rm -f "$SOCK"
  if [ "$1" != dpdk ]; then
    local gap=0
    [ "$1" = iovirt-gap ] && gap=$POLL_GAP_NS
    IOVIRT_LOG=warn taskset -c "$BACKEND_CPU" "$VHOST" net --socket "$SOCK" --backend "$(iovirt_backend "$2")" \
      --poll-us "$POLL_US" --poll-gap-ns "$gap" >"$WORK/backend.log" 2>&1 &
  else
    # --stats-period: runs until SIGINT without reading stdin; the period is longer than any run.
    stdbuf -oL "$TESTPMD" --lcores "0@$BACKEND_CPU,1@$BACKEND_CPU" "${MEM_ARGS[@]}" --no-pci --no-telemetry \
      --file-prefix "$PREFIX-be" --vdev "net_vhost0,iface=$SOCK" -- --forward-mode="$(dpdk_mode "$2")" \
      --txpkts="$PKT_LEN" --auto-start --nb-cores=1 --total-num-mbufs=8192 --stats-period 86400 --record-core-cycles \
      >"$WORK/backend.log" 2>&1 </dev/null &
  fi
  BACKEND_PID=$!
  # net_vhost binds the socket when the port is created but listens only once it has started, and
  # virtio-user does not retry: for testpmd, wait for forwarding to have started.
  local ready="[ -S $SOCK ]"
  [ "$1" = dpdk ] && ready="grep -q 'forwards packets on' $WORK/backend.log"
  for _ in $(seq 1 400); do eval "$ready" && return 0; sleep 0.025; done
  echo "vhost-net-bench: the $1 back-end is not serving $SOCK after 10 s; its log:" >&2
  cat "$WORK/backend.log" >&2
  return 1
}

stop_backend() {
  kill -INT "$BACKEND_PID" 2>/dev/null || true
  wait "$BACKEND_PID" 2>/dev/null || true
  BACKEND_PID=
  rm -rf "/var/run/dpdk/$PREFIX-be"
}

# The generator: interactive testpmd fed a timed script; prints the window's pps.
generate() {  # backend mode
  local mode=$2 start=start field=Tx-pps burst=32
  [ "$mode" = fwd ] && start="start tx_first $FWD_BURSTS"
  [ "$mode" = rtt ] && { start="start tx_first 1"; burst=1; }
  [ "$mode" != tx ] && field=Rx-pps
  {
    echo "$start"
    sleep "$WARMUP"
    echo "show port stats 0"
    sleep "$SECS"
    echo "show port stats 0"
    echo "stop"
    sleep 0.3
    echo "quit"
  } | taskset -c "$GEN_CPU" "$TESTPMD" --lcores "0@$GEN_CPU,1@$GEN_CPU" "${MEM_ARGS[@]}" --single-file-segments \
        --no-pci --no-telemetry --file-prefix "$PREFIX-gen" \
        --vdev "net_virtio_user0,path=$SOCK,queues=1,queue_size=256$([ "$PACKED" = 1 ] && echo ,packed_vq=1)" -- -i --forward-mode="$(gen_mode "$mode")" \
        --burst="$burst" --txpkts="$PKT_LEN" --nb-cores=1 --total-num-mbufs=8192 --record-burst-stats >"$WORK/gen.log" 2>&1 || true
  rm -rf "/var/run/dpdk/$PREFIX-gen"
  local pps
  pps=$(grep -o "$field: *[0-9]*" "$WORK/gen.log" | tail -n 1 | grep -o '[0-9]*$' || true)
  if [ -z "$pps" ] || [ "$(grep -c "$field" "$WORK/gen.log")" -lt 2 ]; then
    echo "vhost-net-bench: no $field from the generator against $1 ($mode); generator log:" >&2
    tail -n 30 "$WORK/gen.log" >&2
    echo "back-end log:" >&2
    tail -n 30 "$WORK/backend.log" >&2
    return 1
  fi
  # testpmd's burst record at "stop": "TX-bursts : N [99% of 32 pkts + 1% of 0 pkts]".
  local bursts share
  if [ "$mode" = tx ]; then
    bursts=$(grep -o 'TX-bursts : .*' "$WORK/gen.log" | tail -n 1 || true)
    share=$(echo "$bursts" | grep -o "[0-9]*% of 32 pkts" | grep -o '^[0-9]*' || true)
  else
    bursts=$(grep -o 'RX-bursts : .*' "$WORK/gen.log" | tail -n 1 || true)
    share=$(echo "$bursts" | grep -o '[0-9]*% of 0 pkts' | grep -o '^[0-9]*' || true)
  fi
  RESULT="$1 $mode $pps ${share:-0} ${DIST:--}"
}

# The back-end's busy TSC cycles per frame, from its log once it has stopped: iovirt-vhost's exit
# lines (its worker's cycles in rounds that moved frames, and the queues' chain counts); testpmd's
# --record-core-cycles line ("CPU cycles/packet=..."), which counts the cycles of the bursts that
# received something. '-' for testpmd txonly (rx mode), which counts every burst, also those the
# full ring refused, so its figure is not the same measure.
busy_cycles() {  # backend mode
  local log=$WORK/backend.log v
  if [ "$1" = dpdk ]; then
    [ "$2" = rx ] && { echo -; return; }
    v=$(grep -o 'CPU cycles/packet=[0-9.]*' "$log" | tail -n 1 | cut -d= -f2 || true)
  else
    # Frames per mode: received from the front-end (tx, fwd: queue 1) or delivered to it (rx: queue 0).
    local q=1
    [ "$2" = rx ] && q=0
    v=$(awk -v q="$q" '/net0 queue / && $4 == q { chains = $6 }
                       /net0 pair 0 worker:/ { busy = $6 }
                       END { if (chains > 0 && busy != "") printf "%.1f", busy / chains }' "$log")
  fi
  echo "${v:--}"
}

# How far apart the two CPUs are right now (ns per cache-line round trip), measured before each
# run with nothing else running: on a VM the host may move the vCPUs, and every figure moves with
# it. '-' without the tool (ninja -C $BUILD iovirt-cpu-distance).
DISTANCE_BIN=$BUILD/tests/bench/iovirt-cpu-distance
cpu_distance() {
  if [ -x "$DISTANCE_BIN" ]; then
    "$DISTANCE_BIN" --cpus "$GEN_CPU,$BACKEND_CPU" --rounds 20000 2>/dev/null || echo -
  else
    echo -
  fi
}

echo "vhost-net-bench: modes [$MODES], back-ends [$BACKENDS], $RUNS runs x $SECS s (+$WARMUP s warm-up)," \
     "$PKT_LEN-byte frames, $([ "$PACKED" = 1 ] && echo packed || echo split) rings, generator on CPU $GEN_CPU, back-end on CPU $BACKEND_CPU," \
     "$([ "$HUGE" = 1 ] && echo hugepages || echo 4 KiB pages)" >&2
for mode in $MODES; do
  for r in $(seq 1 "$RUNS"); do
    for be in $BACKENDS; do
      DIST=$(cpu_distance)
      echo "vhost-net-bench: $mode run $r/$RUNS: $be (CPUs $GEN_CPU and $BACKEND_CPU: $DIST ns round trip)" >&2
      start_backend "$be" "$mode"
      generate "$be" "$mode" || { stop_backend; exit 1; }
      stop_backend
      echo "$RESULT $(busy_cycles "$be" "$mode")" | tee -a "$RES" >&2
    done
  done
done

python3 - "$RES" "$RUNS" "$SECS" "$POLL_US" "$PKT_LEN" "$FWD_BURSTS" "$PACKED" "$POLL_GAP_NS" <<'EOF'
import statistics, sys
res, runs, secs, poll_us, pkt_len, bursts, packed, gap_ns = sys.argv[1:]
rows, share, dist, cyc = {}, {}, {}, {}
for line in open(res):
    be, mode, pps, sh, d, c = line.split()
    if c != "-":
        cyc.setdefault((mode, be), []).append(float(c))
    rows.setdefault((mode, be), []).append(float(pps))
    share.setdefault((mode, be), []).append(float(sh))
    if d != "-":
        dist.setdefault((mode, be), []).append(float(d))
names = {"iovirt": "iovirt-vhost", "iovirt-gap": f"iovirt-vhost gap {gap_ns} ns", "dpdk": "DPDK net_vhost"}
bes = [b for b in ("iovirt", "iovirt-gap", "dpdk") if any(k[1] == b for k in rows)]
ours = [b for b in bes if b != "dpdk"]
has_dpdk = "dpdk" in bes
modes = [m for m in ("tx", "rx", "fwd", "rtt") if any(k[0] == m for k in rows)]
def med(k):
    v = rows.get(k, [])
    return statistics.median(v) / 1e6 if v else float("nan")
def f2(v):
    return f"{v:.2f}" if v == v else "n/a"
def ratio(a, b):
    return f"{a / b:.2f}x" if a == a and b == b and b > 0 else "n/a"
what = {
    "tx": "front-end txonly -> back-end drop (sink / rxonly)",
    "rx": "back-end generates (source / txonly) -> front-end rxonly",
    "fwd": f"back-end forwards back (ring-loopback / io), {int(bursts) * 32} frames circulating",
    "rtt": "fwd with one frame circulating",
}
ring = "packed" if packed == "1" else "split"
print(f"medians of {runs} runs x {secs} s; {pkt_len}-byte frames, 1 queue pair, {ring} rings; "
      f"front-end: DPDK virtio-user (testpmd); iovirt-vhost --poll-us {poll_us}")
print()
ratio_cols = [f"{names[b]}/DPDK" for b in ours] if has_dpdk else []
print("| mode | " + " | ".join(f"{names[b]} Mpps" for b in bes) + "".join(f" | {c}" for c in ratio_cols) +
      " | front-end bursts (" + " / ".join(names[b] for b in bes) + ") | CPU round trip ns (runs) |")
print("|---" * (1 + len(bes) + len(ratio_cols) + 2) + "|")
for mode in modes:
    def sh(be):
        v = share.get((mode, be), [])
        return f"{statistics.median(v):.0f}%" if v else "n/a"
    def dd(be):
        v = dist.get((mode, be), [])
        return f"{min(v):.0f}-{max(v):.0f}" if v else "n/a"
    kind = "tx bursts whole" if mode == "tx" else "rx polls empty"
    cells = [f2(med((mode, b))) for b in bes]
    if has_dpdk:
        cells += [ratio(med((mode, b)), med((mode, "dpdk"))) for b in ours]
    cells.append(f"{kind}: " + " / ".join(sh(b) for b in bes))
    cells.append(" / ".join(dd(b) for b in bes))
    print(f"| {mode}: {what[mode]} | " + " | ".join(cells) + " |")
print()
print("Back-end cost: busy TSC cycles per frame (median), counted the same way on both sides: the cycles")
print("of the polling rounds (iovirt-vhost's worker) or bursts (testpmd --record-core-cycles) that moved")
print("frames, over the frames moved (fwd: each frame once). Where the generator sets the pace (tx), the")
print("Mpps ratio is 1 by construction and this is the figure that tells the back-ends apart.")
print()
ratio_cols = [f"DPDK/{names[b]}" for b in ours] if has_dpdk else []
print("| mode | " + " | ".join(f"{names[b]} cycles/frame" for b in bes) + "".join(f" | {c}" for c in ratio_cols) + " |")
print("|---" * (1 + len(bes) + len(ratio_cols)) + "|")
for mode in modes:
    def mc(be):
        v = cyc.get((mode, be), [])
        return statistics.median(v) if v else float("nan")
    cells = []
    for b in bes:
        v = mc(b)
        cells.append(f"{v:.1f}" if v == v else ("n/a (txonly counts every burst)" if b == "dpdk" and mode == "rx" else "n/a"))
    if has_dpdk:
        cells += [ratio(mc("dpdk"), mc(b)) for b in ours]
    print(f"| {mode} | " + " | ".join(cells) + " |")
if "rtt" in modes:
    print()
    print("Round trip with one frame circulating (rtt): 1 / frames per second, median of the runs.")
    print()
    us = {b: (1 / med(("rtt", b)) if med(("rtt", b)) > 0 else float("nan")) for b in bes}
    ratio_cols = [f"DPDK/{names[b]}" for b in ours] if has_dpdk else []
    print("| " + " | ".join(f"{names[b]} us" for b in bes) + "".join(f" | {c}" for c in ratio_cols) + " |")
    print("|---" * (len(bes) + len(ratio_cols)) + "|")
    cells = [f2(us[b]) for b in bes]
    if has_dpdk:
        cells += [ratio(us["dpdk"], us[b]) for b in ours]
    print("| " + " | ".join(cells) + " |")
EOF
