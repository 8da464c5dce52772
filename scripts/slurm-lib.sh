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
