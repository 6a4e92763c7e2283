#!/usr/bin/env bash
# Makes the masks of many configs at once on one machine (a GPU, say): one experiments.generate process per job,
# PARALLEL of them at a time, sharing the accelerator. Usage, from the repository root:
#
#   bash experiments/generate_many.sh JOBS CHIPS WORKROOT [PARALLEL] [EXTRA_FLAGS...]
#
# JOBS: a text file, one job per line: a workdir name (below WORKROOT) and the experiments.generate flags of that
# config ('#' starts a comment). CHIPS: a training chips file (experiments.generate --export_chips) for machines
# without the data set, or '-' to read the data set. Each job logs to WORKROOT/<name>.log. A job cut short keeps
# its finished groups; the same command again resumes. Evaluate afterwards with experiments.run, the same config
# flags and the same --workdir, where the data set is.
set -uo pipefail
jobs_file="$1"; chips="$2"; root="$3"; parallel="${4:-4}"; shift 4 || shift $#
mkdir -p "$root"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # processes share one accelerator
extra="$*"  # flags without spaces in their values
[ "$chips" != - ] && extra="--chips=$chips $extra"
grep -v '^\s*\(#\|$\)' "$jobs_file" | while read -r name flags; do
  printf '%s\0' "$name" "$flags"
done | ROOT="$root" EXTRA="$extra" xargs -0 -n 2 -P "$parallel" bash -c '
  name="$1"; flags="$2"; shift 2
  start=$(date +%s)
  if "${PYTHON:-python3}" -m experiments.generate $flags --workdir="$ROOT/$name" $EXTRA > "$ROOT/$name.log" 2>&1; then
    echo "done $name in $(( $(date +%s) - start )) s"
  else
    echo "FAILED $name after $(( $(date +%s) - start )) s: $(tail -1 "$ROOT/$name.log")"
  fi' job
