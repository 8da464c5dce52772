#!/bin/bash
# start.sh - a two-node SLURM cluster on this one machine, for traind's multi-node tests.
#
# Nodes n1 and n2 are two slurmd daemons on this host (`slurmd -N n1`, `slurmd -N n2`), each on its
# own loopback address (127.0.2.1, 127.0.2.2; all of 127/8 is on lo) and port; one slurmctld and a
# munged of this cluster's own. Everything lives in $TRAIND_SLURM2_DIR: config, munge key and socket,
# spool dirs, logs, pid files; the ports are not SLURM's defaults. So it reads and changes nothing of
# /etc/slurm, /etc/munge or the one-node cluster of scripts/slurm-start.sh, and can run beside it.
# The one change outside the dir: "127.0.2.N nN  # traind-slurm2" lines in /etc/hosts, so that the
# node names resolve (MASTER_ADDR = the first host of SLURM_JOB_NODELIST). stop.sh undoes all of it.
#
# Idempotent: a daemon already running (by its pid file in the dir) is left alone; waits until both
# nodes take jobs. Clients talk to this cluster with  SLURM_CONF=$TRAIND_SLURM2_DIR/etc/slurm.conf
# (also in $TRAIND_SLURM2_DIR/env.sh); inside its jobs slurmd sets SLURM_CONF itself.
# Root only; no systemd, no cgroups (proctrack/linuxproc). Installs the Debian packages when missing.
#
# Exit status: 0 up; 3 the packages are missing and apt cannot install them; 1 anything else.
#
# Environment:
#   TRAIND_SLURM2_DIR          everything of this cluster                    (/run/traind-slurm2)
#   TRAIND_SLURM2_CPUS         CPU slots per node (may exceed the cores)      (4)
#   TRAIND_SLURM2_KILLWAIT     SIGTERM -> SIGKILL, seconds                    (10)
#   TRAIND_SLURM2_GRACETIME    preemption GraceTime of partition "debug"      (20)
#   TRAIND_SLURM2_CRED_EXPIRE  a requeued job waits this + 1 s to rerun       (10; SLURM's default 120)
#   TRAIND_SLURM2_CTLD_PORT    slurmctld's port                               (16817)
#   TRAIND_SLURM2_NODE_PORT    node nI's slurmd listens on this + I           (17000)
#   TRAIND_SLURM2_TIMEOUT      seconds to wait for each daemon and the nodes  (30)
#   TRAIND_SLURM2_HOSTS=0      leave /etc/hosts alone
#   TRAIND_SLURM2_CLEAN=1      start slurmctld with -c (forget saved jobs)
set -euo pipefail

DIR=${TRAIND_SLURM2_DIR:-/run/traind-slurm2}
CPUS=${TRAIND_SLURM2_CPUS:-4}
KILLWAIT=${TRAIND_SLURM2_KILLWAIT:-10}
GRACETIME=${TRAIND_SLURM2_GRACETIME:-20}
CRED_EXPIRE=${TRAIND_SLURM2_CRED_EXPIRE:-10}
CTLD_PORT=${TRAIND_SLURM2_CTLD_PORT:-16817}
NODE_PORT=${TRAIND_SLURM2_NODE_PORT:-17000}
TIMEOUT=${TRAIND_SLURM2_TIMEOUT:-30}
NODES=(n1 n2)                       # node I (from 1) gets 127.0.2.I and port NODE_PORT + I
HOSTS_TAG="# traind-slurm2"
CONF=$DIR/etc/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket
export SLURM_CONF=$CONF             # every client command below talks to this cluster
STARTED=$EPOCHREALTIME

say() { echo "[slurm2-start +$(awk -v a="$STARTED" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')s] $*"; }
fail() { say "ERROR: $1"; exit "${2:-1}"; }   # fail MESSAGE [EXIT_STATUS]
[ "$(id -u)" = 0 ] || fail "must run as root"

# shellcheck source=scripts/slurm-lib.sh
source "$(dirname "$0")/../../../scripts/slurm-lib.sh"     # running_pid, slurm_conf_settings

poll() {  # poll SECONDS CMD...: true once CMD succeeds (tried every 0.1 s)
  local tries=$(( $1 * 10 )); shift
  while [ "$tries" -gt 0 ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; tries=$(( tries - 1 )); done
  return 1
}

# start_daemon NAME PIDFILE CMD...: run CMD (it daemonizes itself) unless NAME runs by PIDFILE already.
start_daemon() {
  local name=$1 pidfile=$2 pid; shift 2
  if pid=$(running_pid "$pidfile" "$name"); then
    say "$name already running (pid $pid)"; return 0
  fi
  rm -f "$pidfile"
  ( cd "$DIR" && "$@" ) || fail "$name did not start: $*"
  poll "$TIMEOUT" running_pid "$pidfile" "$name" || fail "$name did not start (see $DIR/log, $DIR/munge)"
  say "started $name (pid $(running_pid "$pidfile" "$name"))"
}

# 1. packages ------------------------------------------------------------------------------------
missing=()
for cmd in slurmctld slurmd srun sbatch scontrol sinfo munged munge unmunge; do
  command -v "$cmd" >/dev/null || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || fail "missing ${missing[*]} and no apt-get to install them" 3
  say "missing ${missing[*]}: installing slurmctld slurmd slurm-client munge with apt"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge \
      >/dev/null; } || fail "apt-get could not install slurmctld slurmd slurm-client munge" 3
  say "installed slurm $(dpkg-query -W -f='${Version}' slurmctld)"
fi
id munge >/dev/null 2>&1 || fail "no user 'munge' (the munge package creates it)"

# 2. directories, munge key, slurm.conf -------------------------------------------------------------
mkdir -p "$DIR"/etc "$DIR"/munge "$DIR"/spool/ctld "$DIR"/log "$DIR"/run
for node in "${NODES[@]}"; do mkdir -p "$DIR/spool/$node"; done   # one spool per slurmd (step sockets)
chmod 755 "$DIR" "$DIR/munge"      # munged wants everyone to be able to reach its socket's dir
chown munge:munge "$DIR/munge"
if [ ! -s "$DIR/munge/munge.key" ]; then
  head -c 1024 /dev/urandom > "$DIR/munge/munge.key.new"
  chown munge:munge "$DIR/munge/munge.key.new" && chmod 400 "$DIR/munge/munge.key.new"
  mv "$DIR/munge/munge.key.new" "$DIR/munge/munge.key"
  say "created this cluster's munge key"
fi

mem_mb=$(awk '/^MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)   # half the RAM each
node_lines="" i=0
for node in "${NODES[@]}"; do
  i=$(( i + 1 ))
  node_lines+="NodeName=$node NodeHostname=localhost NodeAddr=127.0.2.$i Port=$(( NODE_PORT + i ))"
  node_lines+=" CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$mem_mb State=UNKNOWN"$'\n'
done
all_nodes=$(IFS=,; echo "${NODES[*]}")
# The one-node cluster's settings (slurm_conf_settings in scripts/slurm-lib.sh) with this cluster's
# own port, munge socket and paths; per-node spool/pid/log files (%n) keep the two slurmd apart.
wanted_conf="# written by traind tests/cluster/slurm2/start.sh: two nodes, two slurmd on one host
ClusterName=traind2
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
$(slurm_conf_settings "cred_expire=$CRED_EXPIRE,socket=$MUNGE_SOCKET" "$KILLWAIT")
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
${node_lines}PartitionName=debug Nodes=$all_nodes Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=$GRACETIME
PartitionName=high Nodes=$all_nodes Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF"
if [ "$(cat "$CONF" 2>/dev/null)" != "$wanted_conf" ]; then
  if running_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
    say "WARNING: $CONF differs from what this script writes, but slurmctld runs: run stop.sh first to change it"
  else
    printf '%s\n' "$wanted_conf" > "$CONF.new" && mv "$CONF.new" "$CONF"
    say "wrote $CONF"
  fi
fi
printf 'export SLURM_CONF=%s\n' "$CONF" > "$DIR/env.sh"

# 3. node names in /etc/hosts -----------------------------------------------------------------------
if [ "${TRAIND_SLURM2_HOSTS:-1}" = 1 ]; then
  i=0
  for node in "${NODES[@]}"; do
    i=$(( i + 1 ))
    grep -qx "127\.0\.2\.$i $node  $HOSTS_TAG" /etc/hosts ||
      printf '127.0.2.%s %s  %s\n' "$i" "$node" "$HOSTS_TAG" >> /etc/hosts   # appended: same inode
    [ "$(getent hosts "$node" | awk '{print $1; exit}')" = "127.0.2.$i" ] ||
      say "WARNING: $node does not resolve to 127.0.2.$i (an earlier line in /etc/hosts?)"
  done
fi

# 4. daemons -------------------------------------------------------------------------------------------
# munged refuses to run as root ("Logfile is insecure"): as user munge, with this cluster's key and socket.
start_daemon munged "$DIR/munge/munged.pid" runuser -u munge -- "$(command -v munged)" \
  --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munge/munged.pid" \
  --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
munge -S "$MUNGE_SOCKET" -n | unmunge -S "$MUNGE_SOCKET" >/dev/null || fail "munge self-test failed"

ctld=(slurmctld -f "$CONF")
[ "${TRAIND_SLURM2_CLEAN:-0}" = 1 ] && ctld+=(-c)
start_daemon slurmctld "$DIR/run/slurmctld.pid" "${ctld[@]}"
poll "$TIMEOUT" bash -c 'scontrol ping | grep -q "is UP"' || fail "slurmctld does not answer (scontrol ping)"
for node in "${NODES[@]}"; do
  start_daemon slurmd "$DIR/run/slurmd-$node.pid" slurmd -f "$CONF" -N "$node"
done

# 5. wait until both nodes take jobs ------------------------------------------------------------------
nodes_usable() {
  local node state usable=0
  for node in "${NODES[@]}"; do
    state=$(sinfo -h -N -n "$node" -o '%T' 2>/dev/null | head -1)
    case "$state" in
      idle|mixed|allocated|completing) ;;
      down*|drain*|fail*) scontrol update NodeName="$node" State=RESUME 2>/dev/null || true; usable=1 ;;
      *) usable=1 ;;    # unknown, not responding yet
    esac
  done
  return $usable
}
poll "$TIMEOUT" nodes_usable || { sinfo -N >&2 || true; fail "nodes not usable (see $DIR/log/slurmd-*.log)"; }
say "cluster up: $(sinfo -h -N -p debug -o '%N=%T' | tr '\n' ' ')(SLURM_CONF=$CONF)"
