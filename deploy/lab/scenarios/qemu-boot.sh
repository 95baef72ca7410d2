#!/bin/bash
# Scenario: the reference VMM (QEMU -accel kvm inside L1) boots the lab kernel as L2 with 2 vCPUs;
# passes iff QEMU exits 0 and the guest printed IOVIRT-BOOT-OK (it saw the expected CPU count).
# Validates the lab itself: L1 under TCG, kvm_amd with nested SVM/NPT, the L2 kernel and initramfs.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../l1/lib.sh
source "$LAB_DIR/l1/lib.sh"

lab_need_kvm || exit 1
lab_qemu_l2_cmd 2
lab_log "running: ${QEMU_L2[*]@Q}"
log=/tmp/qemu-boot.console
lab_run_vmm L2 "$log" "${QEMU_L2[@]}"
ok=$?
cp "$log" "$LAB_RESULTS/qemu-boot.console" 2>/dev/null
if ((ok == 0)); then
    lab_log "qemu-boot: PASS (marker after $(lab_us_to_s "$VMM_MARKER_US")s, QEMU exited after $(lab_us_to_s "$VMM_TOTAL_US")s)"
    exit 0
fi
lab_log "qemu-boot: FAIL (QEMU exit status $VMM_RC, guest verdict: $VMM_VERDICT)"
exit 1
