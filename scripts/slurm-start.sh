#!/bin/bash
# slurm-start.sh - a one-node SLURM cluster on loopback for traind's integration tests and CI.
#
# Installs slurmctld/slurmd/munge with apt when missing, writes /etc/slurm/slurm.conf, starts
# munged, slurmctld and slurmd (each only if not already running) and waits until the node is
# usable. The pids of the daemons THIS script started go to $TRAIND_SLURM_STATE_DIR so that
# slurm-stop.sh stops those and nothing else. Safe to run twice. Must run as root; no systemd.
#
# Two partitions: "debug" (default, preemptible: PreemptMode=REQUEUE after GraceTime) and
# "high" (higher PriorityTier, preempts "debug").
#
# Environment (defaults tuned so requeue/preemption tests take seconds, not minutes):
#   TRAIND_SLURM_STATE_DIR   where our pid files live               (/run/traind-slurm)
#   TRAIND_SLURM_CPUS        CPU slots advertised (may exceed cores) (8)
#   TRAIND_SLURM_KILLWAIT    SIGTERM -> SIGKILL delay, seconds       (10)
#   TRAIND_SLURM_GRACETIME   preemption GraceTime of "debug"         (20)
#   TRAIND_SLURM_CRED_EXPIRE requeued jobs wait this +1 s to rerun   (10; SLURM default 120)
#   TRAIND_SLURM_TIMEOUT     seconds to wait for each daemon / the node (60)
#   TRAIND_SLURM_CLEAN=1     start slurmctld with -c (forget saved jobs)
set -euo pipefail

STATE_DIR=${TRAIND_SLURM_STATE_DIR:-/run/traind-slurm}
CPUS=${TRAIND_SLURM_CPUS:-8}
KILLWAIT=${TRAIND_SLURM_KILLWAIT:-10}
GRACETIME=${TRAIND_SLURM_GRACETIME:-20}
CRED_EXPIRE=${TRAIND_SLURM_CRED_EXPIRE:-10}
TIMEOUT=${TRAIND_SLURM_TIMEOUT:-60}
NODE=$(hostname -s)
CONF=/etc/slurm/slurm.conf
STARTED=$SECONDS

say() { echo "[slurm-start +$(( SECONDS - STARTED ))s] $*"; }
fail() { say "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || fail "must run as root"

# shellcheck source=scripts/slurm-lib.sh
source "$(dirname "$0")/slurm-lib.sh"

# start_daemon NAME PIDFILE CMD...: start CMD unless NAME already runs; record its pid if we did.
start_daemon() {
  local name=$1 pidfile=$2 i; shift 2
  if running_pid "$pidfile" "$name" >/dev/null; then
    local pid; pid=$(running_pid "$pidfile" "$name")
    if [ "$(running_pid "$STATE_DIR/$name.pid" "$name" || true)" = "$pid" ]; then
      say "$name already running (pid $pid, started earlier by this script)"
    else
      say "$name already running (pid $pid, not started by us: slurm-stop.sh will leave it alone)"
    fi
    return 0
  fi
  rm -f "$pidfile"
  "$@"
  for i in $(seq 1 $(( TIMEOUT * 10 ))); do
    running_pid "$pidfile" "$name" >/dev/null && break
    sleep 0.1
  done
  running_pid "$pidfile" "$name" > "$STATE_DIR/$name.pid" || fail "$name did not start (see its log)"
  say "started $name (pid $(cat "$STATE_DIR/$name.pid"))"
}

# 1. packages ------------------------------------------------------------------------------------
missing=0
for cmd in slurmctld slurmd sbatch scontrol munged; do command -v "$cmd" >/dev/null || missing=1; done
if [ $missing = 1 ]; then
  say "installing slurmctld slurmd slurm-client munge with apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  say "installed slurm $(dpkg-query -W -f='${Version}' slurmctld)"
fi

# 2. directories, munge key, slurm.conf ------------------------------------------------------------
mkdir -p "$STATE_DIR" /etc/slurm /etc/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm \
         /run/slurm /run/munge
chown munge:munge /run/munge && chmod 755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
    head -c 1024 /dev/urandom > /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  say "created the munge key"
fi

mem_mb=$(awk '/^MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
# The settings both test clusters share: slurm_conf_settings in slurm-lib.sh.
wanted_conf="# written by traind scripts/slurm-start.sh: one node on loopback
ClusterName=traind
SlurmctldHost=localhost(127.0.0.1)
$(slurm_conf_settings "cred_expire=$CRED_EXPIRE" "$KILLWAIT")
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=$GRACETIME
PartitionName=high Nodes=$NODE Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF"
if [ "$(cat "$CONF" 2>/dev/null)" != "$wanted_conf" ]; then
  if running_pid /run/slurm/slurmctld.pid slurmctld >/dev/null; then
    say "WARNING: $CONF differs from what we want, but slurmctld runs already; run slurm-stop.sh first"
  else
    if [ -s "$CONF" ] && ! head -1 "$CONF" | grep -q '^# written by traind'; then
      cp -p "$CONF" "$CONF.before-traind"   # someone's own config is never lost
      say "saved the previous $CONF as $CONF.before-traind"
    fi
    printf '%s\n' "$wanted_conf" > "$CONF"
    say "wrote $CONF"
  fi
fi

# 3. daemons -------------------------------------------------------------------------------------
# munged refuses to run as root ("Logfile is insecure"): run it as its own user.
start_daemon munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null || fail "munge self-test failed"

if [ "${TRAIND_SLURM_CLEAN:-0}" = 1 ]; then
  start_daemon slurmctld /run/slurm/slurmctld.pid slurmctld -c
else
  start_daemon slurmctld /run/slurm/slurmctld.pid slurmctld
fi
for i in $(seq 1 $(( TIMEOUT * 2 ))); do
  scontrol ping 2>/dev/null | grep -q 'is UP' && break
  sleep 0.5
done
scontrol ping 2>/dev/null | grep -q 'is UP' || fail "slurmctld does not answer (scontrol ping)"

start_daemon slurmd /run/slurm/slurmd.pid slurmd

# 4. wait until the node takes jobs ------------------------------------------------------------------
node_state=""
for i in $(seq 1 $(( TIMEOUT * 2 ))); do
  node_state=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -1 || true)
  case "$node_state" in
    idle|mixed|allocated|completing) break ;;
    down*|drain*|fail*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;  # stale saved state
  esac
  sleep 0.5
done
case "$node_state" in
  idle|mixed|allocated|completing) say "cluster up: node $NODE is $node_state" ;;
  *) fail "node $NODE is not usable (state '$node_state')" ;;
esac
