# slurm-lib.sh - sourced by slurm-start.sh and slurm-stop.sh.

# running_pid PIDFILE COMM: print the pid in PIDFILE if that process lives, is named COMM and is
# not a zombie (a stale pid file must never make us signal or trust an unrelated process).
running_pid() {
  local pid stat
  [ -s "$1" ] || return 1
  pid=$(tr -dc '0-9' < "$1")
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ] || return 1
  echo "$pid"
}

# slurm_conf_settings AUTHINFO KILLWAIT: the slurm.conf lines both test clusters share (the one-node
# cluster of slurm-start.sh and the two-node one of tests/cluster/slurm2/start.sh). linuxproc and
# task/none need no cgroups; JobRequeue=1: jobs may requeue themselves; a short cred_expire (in
# AUTHINFO) and sched_interval rerun a requeued job in ~15 s instead of ~3 min;
# preempt_send_user_signal: a preempted job first gets its own --signal (our USR1 warning).
slurm_conf_settings() {
  cat <<EOF
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=$1
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
JobRequeue=1
ReturnToService=2
KillWait=$2
MinJobAge=300
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
SlurmdParameters=config_overrides
EOF
}
