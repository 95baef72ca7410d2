#!/bin/bash
# Scenario: VFIO passthrough of L1's real (QEMU-emulated) PCI functions to an L2 guest. The VMM is
# iovirt with --iovirt (--device path=/sys/bus/pci/devices/BDF), or QEMU with LAB_VMM=qemu
# (-device vfio-pci,host=BDF). LAB_VFIO picks the devices, several joined by '+' (one guest):
#   edu     QEMU's edu device. The guest's test driver (deploy/lab/guest/iovirt_edu.c) maps BAR0,
#           checks the identification and liveness registers, computes 10! with the completion
#           signalled by MSI, raises an interrupt by hand, and DMAs random bytes from guest RAM
#           into the device and back into another page, comparing them. L1 must have counted at
#           least the guest's 4 interrupts on the device's vfio-msi vector while the VM ran.
#           LAB_VFIO_INTX=on: the guest driver takes edu's INTx line instead of MSI (guest command
#           line iovirt.edu_intx=1), so the interrupts travel the VMM's _PRT routing and KVM's
#           level-triggered irqfd + resamplefd; the guest's line must be a level-triggered
#           IOAPIC pin (fasteoi) and L1 must have counted at least the guest's interrupts on the
#           device's vfio-intx line.
#   nvme    VF 0 of the SR-IOV NVMe (brought up with the virtualization-management sequence). The
#           stock guest nvme driver binds, the guest writes a seeded 8 MiB pattern with O_DIRECT,
#           flushes, reads it back and compares; its MSI-X vectors must have fired; afterwards L1
#           reads the same namespace through the PF and must find the pattern.
#   e1000e  The e1000e on QEMU's hub: the stock e1000e driver binds and the guest pings L1's
#           virtio-net NIC on the same hub (10.0.9.1) from 10.0.9.2.
# Every run also checks that the VMM exited 0 and that every device is back on vfio-pci after it.
# LAB_VFIO_POOL=on (iovirt only): the NVMe VF comes from iovirt's VF pool (`--vf pf=PF`: leased,
# bound to vfio-pci by iovirt, given back after the VM) instead of being bound here and given with
# --device; then after the VM the VF must be off vfio-pci and no lease may remain.
# lab-retries-on-hang: 2
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../l1/lib.sh
source "$LAB_DIR/l1/lib.sh"

LAB_VFIO=${LAB_VFIO:-edu}
LAB_VFIO_INTX=${LAB_VFIO_INTX:-off}
MIB=8
vmm=$(lab_vmm)
lab_need_kvm || exit 1
seed=$((RANDOM * 32768 + RANDOM + 1))
extra="iovirt.test=$LAB_VFIO"
declare -A bdfs
for d in ${LAB_VFIO//+/ }; do
    case $d in
        edu)
            bdfs[edu]=$(lab_pci_find 1234 11e8) || exit 1
            [[ $LAB_VFIO_INTX == on ]] && extra+=" iovirt.edu_intx=1"
            ;;
        nvme)
            pf=$(lab_nvme_vfs 1) || exit 1
            bdfs[nvme]=$(lab_nvme_vf "$pf" 0)
            nvme_pf=$pf
            extra+=" iovirt.blk_seed=$seed iovirt.blk_mib=$MIB"
            ;;
        e1000e)
            bdfs[e1000e]=$(lab_pci_find 8086 10d3) || exit 1
            nic=$(lab_hub_nic 10.0.9.1/24) || exit 1
            lab_log "vfio: L1's side of the hub: $nic 10.0.9.1/24"
            extra+=" iovirt.ip=10.0.9.2/24 iovirt.peer=10.0.9.1"
            ;;
        *) lab_log "LAB_VFIO: unknown device '$d' (edu, nvme, e1000e, joined by +)"; exit 2 ;;
    esac
done
case $LAB_VFIO_INTX in
    on) [[ -n ${bdfs[edu]:-} ]] || { lab_log "LAB_VFIO_INTX=on needs edu in LAB_VFIO"; exit 2; } ;;
    off) ;;
    *) lab_log "LAB_VFIO_INTX: '$LAB_VFIO_INTX' is not on or off"; exit 2 ;;
esac
lab_l2_cmd "$vmm" 1 "$extra" || exit 2
LAB_VFIO_POOL=${LAB_VFIO_POOL:-off}
if [[ $LAB_VFIO_POOL == on && ( $vmm != iovirt || -z ${nvme_pf:-} ) ]]; then
    lab_log "LAB_VFIO_POOL=on needs the iovirt VMM and nvme in LAB_VFIO"
    exit 2
fi
for d in "${!bdfs[@]}"; do
    if [[ $d == nvme && $LAB_VFIO_POOL == on ]]; then
        lab_modprobe vfio-pci || exit 1
        L2_CMD+=(--vf "pf=$nvme_pf")  # the pool takes the PF's only VF: ${bdfs[nvme]}
        continue
    fi
    lab_vfio_bind "${bdfs[$d]}" || exit 1
    lab_l2_add_passthrough "$vmm" "${bdfs[$d]}"
done
lab_log "vfio: VMM $vmm, devices: $(for d in "${!bdfs[@]}"; do printf '%s=%s ' "$d" "${bdfs[$d]}"; done)"
lab_log "running: ${L2_CMD[*]@Q}"

# L1's count of each device's interrupts: its vfio lines exist only while the VMM has them enabled.
irqdir=/tmp/vfio-host-irqs
rm -rf "$irqdir" && mkdir -p "$irqdir"
(while :; do
    for d in "${!bdfs[@]}"; do
        s=$(lab_host_irqs "${bdfs[$d]}")
        [[ -z $s ]] || echo "$s" >"$irqdir/$d"
    done
    sleep 0.5
done) &
sampler=$!
log=/tmp/vfio.console
lab_run_vmm "L2 vfio" "$log" "${L2_CMD[@]}"
rc=$?
kill "$sampler" 2>/dev/null
wait "$sampler" 2>/dev/null
cp "$log" "$LAB_RESULTS/" 2>/dev/null
lab_log "vfio: $vmm exited $VMM_RC after $(lab_us_to_s "$VMM_TOTAL_US")s"

fail=0
if ((rc != 0)); then
    lab_log "FAIL: $vmm exit status $VMM_RC, boot verdict $VMM_VERDICT"
    fail=1
fi
lab_guest_verdict "$log" "$LAB_VFIO" || fail=1
host_total() { # DEVICE [LINE] — L1's last sampled interrupt count over the device's VFIO vectors
    # (only the vector named LINE, e.g. vfio-intx, when given: lab_host_irqs names are LINE(BDF))
    [[ -f $irqdir/$1 ]] || { echo 0; return; }
    tr ' ' '\n' <"$irqdir/$1" | awk -F= -v line="${2:-}" 'NF == 2 && (line == "" || index($1, line "(") == 1) { n += $2 } END { print n + 0 }'
}
for d in "${!bdfs[@]}"; do
    lab_log "vfio: $d ${bdfs[$d]}: L1's VFIO vector counts: $(cat "$irqdir/$d" 2>/dev/null || echo none)"
    case $d in
        edu)
            guest=$(lab_guest_result "$log" edu_guest_interrupts)
            line=
            if [[ $LAB_VFIO_INTX == on ]]; then
                line=vfio-intx
                mode=$(lab_guest_result "$log" edu_irq_mode)
                gline=$(lab_guest_result "$log" edu_irq_line)
                lab_log "vfio: edu: guest interrupt mode ${mode:-unknown}; guest /proc/interrupts: ${gline:-none}"
                if [[ $mode != intx ]]; then
                    lab_log "FAIL: edu: LAB_VFIO_INTX=on but the guest driver reports mode '${mode:-none}', not intx"
                    fail=1
                fi
                # The _PRT made Linux program the IOAPIC pin level-triggered: "IO-APIC  N-fasteoi".
                if [[ $gline != *IO-APIC*-fasteoi* ]]; then
                    lab_log "FAIL: edu: the guest's INTx line is not a level-triggered IOAPIC pin (${gline:-none})"
                    fail=1
                fi
            fi
            if [[ -z $guest ]] || (($(host_total edu "$line") < guest)); then
                lab_log "FAIL: edu: L1 counted $(host_total edu "$line") interrupts${line:+ on $line}, the guest took ${guest:-none}"
                fail=1
            fi
            ;;
        nvme)
            irqs=$(lab_guest_result "$log" nvme_irqs)
            vecs=$(lab_guest_result "$log" nvme_vectors)
            lab_log "vfio: nvme: guest saw ${vecs:-?} nvme vectors, ${irqs:-?} interrupts during the transfer"
            if [[ -z $irqs ]] || ((irqs == 0 || vecs < 2)); then
                lab_log "FAIL: nvme: the guest's MSI-X vectors did not fire (vectors ${vecs:-none}, interrupts ${irqs:-none})"
                fail=1
            fi
            if (($(host_total nvme) == 0)); then
                lab_log "FAIL: nvme: L1 never saw an interrupt on ${bdfs[nvme]}'s VFIO vectors"
                fail=1
            fi
            want=$(lab_blk_pattern "$seed" "$MIB" | sha256sum | cut -d' ' -f1)
            got=$(dd if=/dev/nvme0n1 bs=1M count=$MIB iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
            if [[ $got != "$want" ]]; then
                lab_log "FAIL: nvme: L1 reads $got from the namespace through the PF, the pattern is $want"
                fail=1
            else
                lab_log "vfio: nvme: L1 reads the guest's pattern back through the PF ($want)"
            fi
            ;;
        e1000e)
            lab_log "vfio: e1000e: $(lab_guest_result "$log" ping)"
            ;;
    esac
    drv=$(lab_pci_driver "${bdfs[$d]}")
    if [[ $d == nvme && $LAB_VFIO_POOL == on ]]; then
        lab_log "vfio: nvme: after the VM the pool gave ${bdfs[$d]} back to '${drv:-no driver}'"
        if [[ $drv == vfio-pci ]] || "$IOVIRT" sriov leases --json | grep -q '"vf"'; then
            lab_log "FAIL: nvme: ${bdfs[$d]} still on vfio-pci or a lease remains: $("$IOVIRT" sriov leases 2>&1)"
            fail=1
        fi
        continue
    fi
    if [[ $drv != vfio-pci ]]; then
        lab_log "FAIL: after the VM, ${bdfs[$d]} ($d) is bound to '${drv:-nothing}', not vfio-pci"
        fail=1
    fi
done
((fail == 0)) && lab_log "PASS: vfio ($vmm): $LAB_VFIO"
exit $fail
