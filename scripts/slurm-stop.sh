#!/bin/bash
# slurm-stop.sh - stop the SLURM daemons that slurm-start.sh started, and only those (their pids are
# in $TRAIND_SLURM_STATE_DIR). Before stopping slurmctld it cancels the jobs still queued
# (TRAIND_SLURM_STOP_CANCEL=0 keeps them) and waits for them to end. Daemons someone else started
# are left running.
set -uo pipefail
STATE_DIR=${TRAIND_SLURM_STATE_DIR:-/run/traind-slurm}
say() { echo "[slurm-stop] $*"; }

# shellcheck source=scripts/slurm-lib.sh
source "$(dirname "$0")/slurm-lib.sh"
our_pid() { running_pid "$STATE_DIR/$1.pid" "$1"; }  # the pid we recorded for NAME, if still that daemon

stop_daemon() {
  local name=$1 pid i
  if pid=$(our_pid "$name"); then
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 150); do our_pid "$name" >/dev/null || break; sleep 0.2; done
    if our_pid "$name" >/dev/null; then
      say "$name still alive after 30 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null
    fi
  else
    say "$name: not started by slurm-start.sh (or already gone); left alone"
  fi
  rm -f "$STATE_DIR/$name.pid"
}

if our_pid slurmctld >/dev/null && [ "${TRAIND_SLURM_STOP_CANCEL:-1}" = 1 ]; then
  queued=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${queued// /}" ]; then
    say "cancelling jobs: $queued"
    # shellcheck disable=SC2086
    scancel $queued 2>/dev/null
    killwait=$(scontrol show config 2>/dev/null | awk '$1 == "KillWait" {print $3}')
    for i in $(seq 1 $(( (${killwait:-30} + 20) * 2 ))); do
      [ -z "$(squeue -h 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
fi
stop_daemon slurmd
stop_daemon slurmctld
stop_daemon munged
exit 0
