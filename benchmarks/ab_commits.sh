#!/usr/bin/env bash
# Runs the job-side benchmarks of two checkouts in one session, interleaved: A, B, A, B for each, so
# a drifting machine moves both alike; the spread between the two runs of one checkout is the noise.
#   benchmarks/ab_commits.sh OLD_DIR OLD_PYTHON NEW_DIR NEW_PYTHON OUT_DIR
# Each checkout runs its own copy of each benchmark with its own Python (an install of that checkout).
set -u
old_dir=$1 old_py=$2 new_dir=$3 new_py=$4 out=$5
mkdir -p "$out"
benches=(
  "bench_checkpoint.py --size-gib 0.5 --repeat 3"
  "jobs_checkpoint_stalls.py --skip-periodic --pairs 3"
  "bench_distributed.py --mib 96 --saves 3 --kills 2"
  "bench_restart.py --restarts 3"
)
for bench in "${benches[@]}"; do
  name=${bench%%.py*}
  for round in 1 2; do
    for side in old new; do
      if [ $side = old ]; then dir=$old_dir py=$old_py; else dir=$new_dir py=$new_py; fi
      echo "== $name $side round $round: $bench" | tee -a "$out/summary.txt"
      (cd "$dir" && OMP_NUM_THREADS=1 timeout 900 "$py" benchmarks/$bench) > "$out/$name.$side.$round.txt" 2>&1
      echo "   exit $?" | tee -a "$out/summary.txt"
    done
  done
done
