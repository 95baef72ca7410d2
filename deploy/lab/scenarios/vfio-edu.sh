#!/bin/bash
# Scenario: VFIO passthrough of QEMU's edu device. L1 binds edu to vfio-pci and the VMM (iovirt with
# --iovirt, or QEMU with LAB_VMM=qemu) passes it to an L2 guest, whose test driver
# (deploy/lab/guest/iovirt_edu.c) maps BAR0, checks the identification and liveness registers,
# computes 10! on the device with the completion signalled by MSI, raises an interrupt by hand, and
# DMAs a random page from guest RAM into the device and back into another page, comparing bytes.
# Passes iff the guest's driver passed (4 interrupts taken), L1 counted at least those 4 on the
# device's vfio-msi vector while the VM ran (the interrupts went through L1's VFIO -> the VMM's
# eventfd -> KVM irqfd), the VMM exited 0, and edu is back on vfio-pci afterwards.
# lab-retries-on-hang: 2
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../l1/lib.sh
source "$LAB_DIR/l1/lib.sh"

vmm=$(lab_vmm)
lab_need_kvm || exit 1
bdf=$(lab_pci_find 1234 11e8) || exit 1
lab_vfio_bind "$bdf" || exit 1
lab_log "vfio-edu: VMM $vmm, edu at $bdf"

log=/tmp/vfio-edu.console
lab_l2_cmd "$vmm" 1 "iovirt.test=edu" || exit 2
lab_l2_add_passthrough "$vmm" "$bdf"
lab_log "running: ${L2_CMD[*]@Q}"

# L1's count of the device's interrupts: its vfio-msi line exists only while the VMM has MSI on.
irqs=/tmp/vfio-edu.host-irqs
: >"$irqs"
(while :; do
    s=$(lab_host_irqs "$bdf")
    [[ -z $s ]] || echo "$s" >"$irqs"
    sleep 0.5
done) &
sampler=$!
lab_run_vmm "L2 edu" "$log" "${L2_CMD[@]}"
rc=$?
kill "$sampler" 2>/dev/null
wait "$sampler" 2>/dev/null
cp "$log" "$LAB_RESULTS/" 2>/dev/null
lab_log "vfio-edu: $vmm exited $VMM_RC after $(lab_us_to_s "$VMM_TOTAL_US")s"

fail=0
if ((rc != 0)); then
    lab_log "FAIL: $vmm exit status $VMM_RC, boot verdict $VMM_VERDICT"
    fail=1
fi
lab_guest_verdict "$log" edu || fail=1
guest=$(lab_guest_result "$log" edu_guest_interrupts)
host=$(<"$irqs")
host_n=$(echo "$host" | awk -F= '{ n += $2 } END { print n + 0 }' RS=' ')
lab_log "vfio-edu: interrupts taken by the guest driver: ${guest:-none}; L1's count for $bdf: ${host:-none}"
if [[ -z $guest ]] || ((host_n < guest)); then
    lab_log "FAIL: L1 counted ${host_n} interrupts on $bdf's VFIO vectors, the guest took ${guest:-none}"
    fail=1
fi
drv=$(lab_pci_driver "$bdf")
if [[ $drv != vfio-pci ]]; then
    lab_log "FAIL: after the VM, $bdf is bound to '${drv:-nothing}', not vfio-pci"
    fail=1
fi
if ((fail == 0)); then
    lab_log "PASS: vfio-edu ($vmm): BAR0, 10! by MSI, DMA round trip verified in the guest; $guest guest / $host_n host interrupts"
fi
exit $fail
