#!/bin/bash
# Scenario: iovirt boots the lab kernel as L2 with 2 vCPUs and 512 MiB;
# passes iff iovirt exits 0 and the guest printed IOVIRT-BOOT-OK (it saw the expected CPU count).
# lab-requires: iovirt
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../l1/lib.sh
source "$LAB_DIR/l1/lib.sh"

if [[ -z ${IOVIRT:-} ]]; then
    lab_log "boot: no iovirt binary given (lab.sh run boot --iovirt PATH)"
    exit 2
fi
if [[ ! -x $IOVIRT ]]; then
    lab_log "boot: iovirt binary '$IOVIRT' is not an executable file as seen from L1"
    exit 2
fi
lab_need_kvm || exit 1
lab_iovirt_l2_cmd 2
lab_log "running: ${IOVIRT_L2[*]@Q}"
log=/tmp/boot.console
lab_run_vmm L2 "$log" "${IOVIRT_L2[@]}"
ok=$?
cp "$log" "$LAB_RESULTS/boot.console" 2>/dev/null
if ((ok == 0)); then
    lab_log "boot: PASS (marker after $(lab_us_to_s "$VMM_MARKER_US")s, iovirt exited after $(lab_us_to_s "$VMM_TOTAL_US")s)"
    exit 0
fi
case $VMM_VERDICT in
    ok) why="the guest booted and printed $MARKER_OK" ;;
    fail) why="the guest booted but reported the wrong CPU count ($(grep -a -m1 "$MARKER_FAIL" "$log"))" ;;
    *) why="the guest never printed $MARKER_OK" ;;
esac
if ((VMM_RC == 124)); then
    lab_log "boot: FAIL: iovirt timed out after ${VMM_TIMEOUT}s; $why"
else
    lab_log "boot: FAIL: iovirt exited with status $VMM_RC; $why"
fi
exit 1
