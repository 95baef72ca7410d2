#!/bin/bash
# vhost-user-blk benchmark (issue 4): iovirt-vhost blk vs qemu-storage-daemon's vhost-user-blk
# export, both driven by the same client (iovirt-blk-bench: a libblkio-style driver of the ring,
# no VM), and fio --ioengine=io_uring on the same RAM-backed file as the limit.
#
#   sudo deploy/bench/vhost-blk-bench.sh [--build DIR] [--runs N] [--seconds T] [--warmup W]
#        [--size-mib M] [--poll-us N] [--io MODE] [--client-poll] [--client-cpu C] [--server-cpu S]
#
# Build first (an optimised build; the bench program is built with IOVIRT_BUILD_BENCH=ON):
#   cmake -S . -B build-rel -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
#   ninja -C build-rel -j2 iovirt-vhost iovirt-blk-bench
#
# For each of {randread, randwrite} x {QD 1, QD 32}: RUNS runs of T seconds (after W seconds of
# warm-up) alternating iovirt-vhost and qemu-storage-daemon, each server started fresh for its run
# and pinned to --server-cpu, the client pinned to --client-cpu; then fio RUNS times. Prints a
# markdown table of medians. Both servers use the host page cache (the file is on tmpfs, which has
# no O_DIRECT): iovirt-vhost without --direct and --io MODE (default auto, which on tmpfs is sync:
# preadv/pwritev on the queue thread, because tmpfs has no IOCB_NOWAIT and io_uring hands each of
# its requests to an io-wq worker thread; --io io_uring measures that path), qemu-storage-daemon
# with cache.direct=off and its best AIO engine (aio=io_uring) in a dedicated iothread (QEMU's
# default adaptive polling on). --client-poll: the client busy-polls its used ring instead of
# sleeping on the call eventfd (what an SPDK or libblkio poll-queue user does); without it every
# completion batch costs the client a wake-up on its CPU, which bounds QD1.
# Runs as root (as the deploy scripts do); needs SIZE_MIB of free /dev/shm and 2 CPUs for the pinning.
set -euo pipefail

BUILD=build-rel
RUNS=5
SECS=10
WARMUP=1
SIZE_MIB=1024
POLL_US=0
IO_MODE=auto
CLIENT_POLL=0
CLIENT_CPU=0
SERVER_CPU=1
QSD=/usr/bin/qemu-storage-daemon

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    --poll-us) POLL_US=$2; shift 2 ;;
    --io) IO_MODE=$2; shift 2 ;;
    --client-poll) CLIENT_POLL=1; shift ;;
    --client-cpu) CLIENT_CPU=$2; shift 2 ;;
    --server-cpu) SERVER_CPU=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "vhost-blk-bench: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

VHOST=$BUILD/vmm/iovirt-vhost
BENCH=$BUILD/tests/bench/iovirt-blk-bench
for f in "$VHOST" "$BENCH"; do
  [ -x "$f" ] || { echo "vhost-blk-bench: $f not built (ninja -C $BUILD iovirt-vhost iovirt-blk-bench)" >&2; exit 1; }
done
[ -x "$QSD" ] || { echo "vhost-blk-bench: $QSD missing (apt-get install qemu-system-common)" >&2; exit 1; }
command -v fio >/dev/null || { echo "vhost-blk-bench: fio missing (apt-get install fio)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "vhost-blk-bench: python3 missing" >&2; exit 1; }

# RAM-backed: /dev/shm is tmpfs.
WORK=$(mktemp -d /dev/shm/iovirt-blk-bench.XXXXXX)
IMG=$WORK/disk.img
SOCK=$WORK/blk.sock
RES=$WORK/results
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "vhost-blk-bench: filling a $SIZE_MIB MiB image in $WORK (real pages, so reads hit memory)" >&2
dd if=/dev/urandom of="$IMG" bs=1M count="$SIZE_MIB" status=none
: > "$RES"

wait_socket() {
  for _ in $(seq 1 200); do [ -S "$SOCK" ] && return 0; sleep 0.025; done
  echo "vhost-blk-bench: the server did not create $SOCK" >&2
  return 1
}

start_server() {  # iovirt | qsd
  rm -f "$SOCK"
  if [ "$1" = iovirt ]; then
    IOVIRT_LOG=warn taskset -c "$SERVER_CPU" "$VHOST" blk --file "$IMG" --socket "$SOCK" \
      --poll-us "$POLL_US" --io "$IO_MODE" >"$WORK/server.log" 2>&1 &
  else
    taskset -c "$SERVER_CPU" "$QSD" \
      --blockdev "driver=file,node-name=d0,filename=$IMG,aio=io_uring,cache.direct=off" \
      --object iothread,id=io0 \
      --export "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=$SOCK,writable=on,iothread=io0" \
      >"$WORK/server.log" 2>&1 &
  fi
  SERVER_PID=$!
  wait_socket
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

client() {  # server rw qd -> appends "server rw qd iops p50 p99"
  local poll=()
  [ "$CLIENT_POLL" = 1 ] && poll=(--poll)
  local line
  line=$(IOVIRT_LOG=warn taskset -c "$CLIENT_CPU" "$BENCH" --socket "$SOCK" --rw "$2" --qd "$3" \
           --seconds "$SECS" --warmup "$WARMUP" "${poll[@]}" | grep '^RESULT') || {
    echo "vhost-blk-bench: client failed against $1 ($2 QD $3); server log:" >&2
    cat "$WORK/server.log" >&2
    return 1
  }
  # RESULT rw qd iops p50 p99
  echo "$1 $(echo "$line" | cut -d' ' -f2-)" | tee -a "$RES" >&2
}

fio_run() {  # rw qd
  local out
  out=$(taskset -c "$CLIENT_CPU" fio --name=limit --filename="$IMG" --ioengine=io_uring --direct=0 \
          --rw="$1" --bs=4k --iodepth="$2" --numjobs=1 --norandommap --randrepeat=0 \
          --time_based --runtime="$SECS" --ramp_time="$WARMUP" --output-format=json)
  echo "$out" | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
d = j["read"] if sys.argv[1] == "randread" else j["write"]
pc = d["clat_ns"].get("percentile", {})
p50 = pc.get("50.000000", 0) / 1000
p99 = pc.get("99.000000", 0) / 1000
print("fio %s %s %.0f %.1f %.1f" % (sys.argv[1], sys.argv[2], d["iops"], p50, p99))
' "$1" "$2" | tee -a "$RES" >&2
}

for rw in randread randwrite; do
  for qd in 1 32; do
    for r in $(seq 1 "$RUNS"); do
      for srv in iovirt qsd; do
        start_server "$srv"
        client "$srv" "$rw" "$qd"
        stop_server
      done
      fio_run "$rw" "$qd"
    done
  done
done

client_mode=event
[ "$CLIENT_POLL" = 1 ] && client_mode=poll
python3 - "$RES" "$RUNS" "$SECS" "$POLL_US" "$client_mode" "$IO_MODE" <<'EOF'
import statistics, sys
res, runs, secs, poll_us, mode, io = sys.argv[1:]
rows = {}
for line in open(res):
    srv, rw, qd, iops, p50, p99 = line.split()
    rows.setdefault((rw, int(qd), srv), []).append((float(iops), float(p50), float(p99)))
def med(k, i):
    v = rows.get(k, [])
    return statistics.median(x[i] for x in v) if v else float("nan")
print(f"medians of {runs} runs x {secs} s; iovirt-vhost --poll-us {poll_us} --io {io}; client {mode}-driven")
print()
print("| workload | iovirt-vhost IOPS | p50 us | p99 us | qsd IOPS | p50 us | p99 us | iovirt/qsd | fio IOPS | iovirt/fio |")
print("|---|---|---|---|---|---|---|---|---|---|")
for rw in ("randread", "randwrite"):
    for qd in (1, 32):
        i = [med((rw, qd, "iovirt"), n) for n in range(3)]
        q = [med((rw, qd, "qsd"), n) for n in range(3)]
        f = med((rw, qd, "fio"), 0)
        print(f"| 4k {rw} QD{qd} | {i[0]:.0f} | {i[1]:.1f} | {i[2]:.1f} | {q[0]:.0f} | {q[1]:.1f} | "
              f"{q[2]:.1f} | {i[0]/q[0]:.2f}x | {f:.0f} | {100*i[0]/f:.0f}% |")
EOF
