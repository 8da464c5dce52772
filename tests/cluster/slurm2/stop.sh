#!/bin/bash
# stop.sh - take down what start.sh set up, all of it: cancel this cluster's jobs (SIGTERM, SIGKILL
# after KillWait), stop both slurmd, slurmctld and munged by their pid files in $TRAIND_SLURM2_DIR,
# SIGKILL what this cluster's jobs left behind (slurmstepd and job processes whose environment names
# this cluster's SLURM_CONF, with their descendants), remove our /etc/hosts lines and the directory.
# Nothing else is touched: the one-node cluster of scripts/slurm-start.sh keeps running.
# Safe to run when nothing is up, and twice. Root only.
#   TRAIND_SLURM2_DIR             as for start.sh                          (/run/traind-slurm2)
#   TRAIND_SLURM2_SAVE_LOGS=DIR   copy the daemons' logs to DIR before the directory goes
# Exit status 0, or 1 when something of this cluster is still alive at the end.
set -uo pipefail
DIR=${TRAIND_SLURM2_DIR:-/run/traind-slurm2}
CONF=$DIR/etc/slurm.conf
HOSTS_TAG="# traind-slurm2"
export SLURM_CONF=$CONF
STARTED=$EPOCHREALTIME
say() { echo "[slurm2-stop +$(awk -v a="$STARTED" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')s] $*"; }
[ "$(id -u)" = 0 ] || { say "ERROR: must run as root"; exit 1; }

# shellcheck source=scripts/slurm-lib.sh
source "$(dirname "$0")/../../../scripts/slurm-lib.sh"     # running_pid PIDFILE COMM

alive() {  # alive PID COMM: PID is a live (not zombie) process named COMM
  local stat
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] && stat=$(cat "/proc/$1/stat" 2>/dev/null) &&
    stat=${stat##*) } && [ "${stat%% *}" != Z ]
}

# stop_daemons COMM SECONDS PIDFILE...: SIGTERM each, wait for the processes (not the pid files:
# slurmctld removes its file before it is gone), SIGKILL what is left after SECONDS.
stop_daemons() {
  local comm=$1 seconds=$2 file pid pids="" left tries; shift 2
  for file in "$@"; do
    pid=$(running_pid "$file" "$comm") || continue
    say "stopping $comm (pid $pid, $(basename "$file"))"
    kill -TERM "$pid" 2>/dev/null
    pids+="$pid "
  done
  for (( tries = seconds * 10; tries > 0; tries-- )); do
    left=""
    for pid in $pids; do alive "$pid" "$comm" && left+="$pid "; done
    pids=$left
    [ -z "$pids" ] && return 0
    sleep 0.1
  done
  say "$comm $pids still alive after $seconds s: SIGKILL"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null
  sleep 0.2
}

# leftovers: this cluster's slurmstepd (they inherit slurmd's SLURM_CONF) and job processes (slurmd
# gives them SLURM_CONF and SLURM_JOB_ID), never this script or its ancestors.
leftovers() {
  local d pid mine=" $$ " up=$$
  while [ "$up" -gt 1 ]; do
    up=$(awk '{print $4}' "/proc/$up/stat" 2>/dev/null) || break
    mine+="$up "
  done
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [[ $mine == *" $pid "* ]] && continue
    grep -qzx "SLURM_CONF=$CONF" "$d/environ" 2>/dev/null || continue
    if [ "$(cat "$d/comm" 2>/dev/null)" = slurmstepd ] || grep -qz '^SLURM_JOB_ID=' "$d/environ" 2>/dev/null; then
      echo "$pid"
    fi
  done
}
with_descendants() {
  local pid child
  for pid in "$@"; do
    echo "$pid"
    for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do with_descendants "$child"; done
  done
}

# 1. jobs ---------------------------------------------------------------------------------------------
if running_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
  jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    killwait=$(awk -F= '$1 == "KillWait" {print $2}' "$CONF" 2>/dev/null)
    wait_s=$(( ${killwait:-10} + 10 ))
    running_pid "$DIR/run/slurmd-n1.pid" slurmd >/dev/null || running_pid "$DIR/run/slurmd-n2.pid" slurmd \
      >/dev/null || wait_s=1        # no slurmd left to end them: step 3 kills what is left
    for (( tries = wait_s * 5; tries > 0; tries-- )); do
      [ -z "$(squeue -h 2>/dev/null)" ] && break
      sleep 0.2
    done
    if [ -n "$(squeue -h 2>/dev/null)" ]; then
      say "jobs still there after ${wait_s} s: SIGKILL"
      # shellcheck disable=SC2086
      scancel --signal=KILL --full $jobs 2>/dev/null
      sleep 2
    fi
  fi
fi

# 2.-3. the daemons by our pid files, and what the jobs left -------------------------------------------
stop_daemons slurmd 10 "$DIR"/run/slurmd-*.pid
left=$(leftovers | tr '\n' ' ')
if [ -n "${left// /}" ]; then     # only after a slurmd died mid-job, or a job outlived KillWait
  # shellcheck disable=SC2086
  pids=$(with_descendants $left | sort -un | tr '\n' ' ')
  say "processes left by this cluster's jobs: SIGKILL to $pids"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null
  sleep 0.2
fi
stop_daemons slurmctld 10 "$DIR/run/slurmctld.pid"     # its slurmscriptd goes with it
stop_daemons munged 5 "$DIR/munge/munged.pid"

# 4. /etc/hosts lines, the directory ------------------------------------------------------------------
if grep -q "  $HOSTS_TAG\$" /etc/hosts 2>/dev/null; then
  kept=$(grep -v "  $HOSTS_TAG\$" /etc/hosts)
  printf '%s\n' "$kept" > /etc/hosts      # rewritten in place: the same inode (bind mounts keep it)
  say "removed our lines from /etc/hosts"
fi
if [ -d "$DIR" ]; then
  if [ -n "${TRAIND_SLURM2_SAVE_LOGS:-}" ]; then
    mkdir -p "$TRAIND_SLURM2_SAVE_LOGS" &&
      cp -a "$DIR"/log/. "$DIR"/munge/munged.log "$TRAIND_SLURM2_SAVE_LOGS"/ 2>/dev/null
    say "logs copied to $TRAIND_SLURM2_SAVE_LOGS"
  fi
  rm -rf "$DIR" && say "removed $DIR"
fi

# 5. nothing of ours may be left ------------------------------------------------------------------------
left=$(leftovers | tr '\n' ' ')
for d in /proc/[0-9]*; do          # nor a daemon that names our directory on its command line
  case $(cat "$d/comm" 2>/dev/null) in munged|slurm*) ;; *) continue ;; esac
  tr '\0' ' ' < "$d/cmdline" 2>/dev/null | grep -qF "$DIR/" && left+="${d#/proc/}($(cat "$d/comm")) "
done
[ -z "${left// /}" ] || { say "WARNING: still alive: $left"; exit 1; }
say "done"
exit 0
