#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build, test and run iovirt (and its lab).
# Idempotent: packages already present are skipped; apt-get update runs only when something is missing.
set -euo pipefail

PKGS=(
  build-essential g++ cmake ninja-build pkg-config clang libclang-rt-14-dev
  # libFuzzer: clang 19 is the first whose C++20 concepts level lets libstdc++ 12 offer std::expected
  clang-19 libclang-rt-19-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  liburing-dev libcivetweb-dev civetweb libcli11-dev libfmt-dev
  libnl-route-3-dev # sriov/: VF network settings over rtnetlink
  # iovirt-vhost net --backend dpdk=... (rte_ethdev) and the interop/benchmark peer dpdk-testpmd
  libdpdk-dev dpdk-dev
  # the nested lab: L1 runs under QEMU TCG, its images come from Debian packages
  qemu-system-x86 qemu-utils busybox-static cpio kmod pciutils nvme-cli iproute2 xz-utils zstd
  fio # deploy/bench/vhost-blk-bench.sh: the io_uring limit on the same file
  python3 # lab.sh reads the vCPU state of a hung L1 from QEMU's monitor socket
)

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: must run as root (apt-get); re-run with sudo" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  [[ $p == \#* ]] && continue
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-deps: all packages present"
fi
