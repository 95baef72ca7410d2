#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine (as root): installs what is missing, builds iovirt,
# fetches a Debian kernel and builds a busybox initramfs, and boots it with iovirt (2 vCPUs),
# showing the guest's console. On a host whose KVM has hardware virtualization (vmx/svm) the
# guest runs right here; otherwise (as on the paravirtual KVM of these build machines) it runs
# inside the nested lab: L1 under QEMU TCG with SVM, iovirt as the L1 VMM.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/deploy/install-deps.sh"
"$ROOT/deploy/build.sh" "$ROOT/build"
"$ROOT/deploy/lab/lab.sh" setup
CACHE=${IOVIRT_LAB_CACHE:-/var/cache/iovirt-lab}
if grep -qwE 'vmx|svm' /proc/cpuinfo && [[ -c /dev/kvm ]]; then
  echo "run: this host has hardware virtualization: booting the guest directly"
  exec "$ROOT/build/vmm/iovirt" run --kernel "$CACHE/vmlinuz" --initrd "$CACHE/l2-initramfs.cpio.gz" \
    --cpus 2 --memory 512M --cmdline "console=ttyS0 panic=-1 iovirt.expect_cpus=2"
fi
echo "run: no vmx/svm on this host: booting the guest with iovirt inside the nested lab"
exec "$ROOT/deploy/lab/lab.sh" run boot --iovirt "$ROOT/build/vmm/iovirt" --env LAB_GUEST_VERBOSE=1
