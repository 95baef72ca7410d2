#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine (as root): installs what is missing, builds iovirt,
# fetches a Debian kernel and builds a busybox initramfs, and boots it with iovirt (2 vCPUs) with a
# virtio disk and a virtio NIC, showing the guest's console: the guest writes a pattern to the
# disk, reads it back, pings the host side of its tap and moves 16 MiB each way over TCP, checked
# by sha256 on both ends. On a host whose KVM has hardware virtualization (vmx/svm) the guest runs
# right here; otherwise (as on the paravirtual KVM of these build machines) it runs inside the
# nested lab: L1 under QEMU TCG with SVM, iovirt as the L1 VMM (scenario virtio-net with
# LAB_NET_DISK=on, which also checks the disk image's bytes after the guest powers off), and then
# a second guest gets two of L1's PCI functions passed through with VFIO (scenario vfio with
# LAB_VFIO=edu+nvme LAB_VFIO_POOL=on): QEMU's edu device, exercised by a test driver in the guest
# (BAR0, 10! by MSI, DMA both ways), and an SR-IOV NVMe VF taken from iovirt's VF pool with
# `--vf pf=...` (leased, bound to vfio-pci, given back after the VM) under the stock nvme driver
# (a pattern written, read back, and found by L1 through the PF). On a host with VT-x/AMD-V, IOVIRT_RUN_DEVICE=BDF
# (a function already bound to vfio-pci) is passed through to the directly booted guest too.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/deploy/install-deps.sh"
"$ROOT/deploy/build.sh" "$ROOT/build"
"$ROOT/deploy/lab/lab.sh" setup
CACHE=${IOVIRT_LAB_CACHE:-/var/cache/iovirt-lab}
if grep -qwE 'vmx|svm' /proc/cpuinfo && [[ -c /dev/kvm ]]; then
  # Here the guest gets a scratch disk and a tap (iovirt-run0, 192.168.231.1/24 on the host side)
  # and checks its disk; the network part needs a peer, so it only pings the host.
  echo "run: this host has hardware virtualization: booting the guest directly"
  work=$(mktemp -d /var/tmp/iovirt-run.XXXXXX)
  truncate -s 64M "$work/disk.img"
  ip tuntap add iovirt-run0 mode tap vnet_hdr
  trap 'ip link del iovirt-run0 2>/dev/null; rm -rf "$work"' EXIT
  ip addr add 192.168.231.1/24 dev iovirt-run0
  ip link set iovirt-run0 up
  dev=()
  [[ -z ${IOVIRT_RUN_DEVICE:-} ]] || dev=(--device "path=/sys/bus/pci/devices/$IOVIRT_RUN_DEVICE")
  "$ROOT/build/vmm/iovirt" run --kernel "$CACHE/vmlinuz" --initrd "$CACHE/l2-initramfs.cpio.gz" \
    --cpus 2 --memory 512M --disk "path=$work/disk.img" --net tap=iovirt-run0 "${dev[@]}" \
    --cmdline "console=ttyS0 panic=-1 iovirt.expect_cpus=2 iovirt.test=net iovirt.net_disk=1 iovirt.ip=192.168.231.2/24 iovirt.peer=192.168.231.1 iovirt.net_mib=0"
  exit
fi
echo "run: no vmx/svm on this host: booting the guest with iovirt inside the nested lab"
"$ROOT/deploy/lab/lab.sh" run virtio-net --iovirt "$ROOT/build/vmm/iovirt" --env LAB_GUEST_VERBOSE=1 \
  --env LAB_NET_DISK=on
echo "run: passing L1's edu device and an NVMe VF through to a second guest with VFIO"
exec "$ROOT/deploy/lab/lab.sh" run vfio --iovirt "$ROOT/build/vmm/iovirt" --env LAB_GUEST_VERBOSE=1 \
  --env LAB_VFIO=edu+nvme --env LAB_VFIO_POOL=on
