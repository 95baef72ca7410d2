#!/bin/bash
# Runs inside L1, chrooted into the host root (started by the L1 initramfs's /init).
# Sets up the scenario environment from the env file the host wrote into the results share and
# runs deploy/lab/scenarios/NAME.sh; its exit status is this script's.
set -uo pipefail

scenario=${1:?usage: runner.sh SCENARIO}
export LAB_DIR=/run/lab/scripts
export LAB_RESULTS=/run/lab/results
export LAB_CACHE=/run/lab/cache
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp LANG=C.UTF-8 TERM=dumb

# IOVIRT, KVER, LAB_TIMEOUT, LAB_SCENARIO and any --env KEY=VALUE from `lab.sh run`.
# shellcheck source=/dev/null
source "$LAB_RESULTS/env" || { echo "l1: cannot read $LAB_RESULTS/env"; exit 1; }
export KDIR=$LAB_CACHE/kernel/$KVER

script=$LAB_DIR/scenarios/$scenario.sh
if [[ ! -f $script ]]; then
    echo "l1: no such scenario: $script"
    exit 2
fi
cd /tmp || exit 1
# Signs of life for the host's watchdog (lab.sh): a wedged L1 stops touching this file. Real-time
# priority, so that a scenario's busy threads cannot starve it into a false alarm.
heartbeat_loop() {
    while :; do
        touch "$LAB_RESULTS/heartbeat"
        sleep 2
    done
}
heartbeat_loop &
heartbeat=$!
chrt -f -p 50 "$heartbeat" >/dev/null 2>&1 || true
# bash reads a script as it runs it: a copy keeps an edit of the checkout during a run (the scripts
# share is live) from making it run from the middle of a line.
cp "$script" "/tmp/lab-scenario-$scenario.sh" || exit 1
bash "/tmp/lab-scenario-$scenario.sh" </dev/null
rc=$?
kill "$heartbeat" 2>/dev/null
exit "$rc"
