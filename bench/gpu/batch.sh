#!/usr/bin/env bash
# Several GPU checks in one device call, each under its own time limit, with every result coming back:
#
#   bash bench/gpu/batch.sh 'ops:45:bash bench/gpu/run.sh cuda-ops-check' 'layer:80:ONLY=10 bash bench/gpu/multi-gpu.sh'
#
# Each argument is NAME:SECONDS:COMMAND. The command runs under `timeout SECONDS` with OUT set to a
# folder of its own (WORK/NAME, WORK default /tmp/shardts-batch); its console output goes to
# WORK/NAME.txt. After each one, WORK/batch.txt gets a line "NAME exit CODE in S s" (124: the time
# limit ended it) and all of WORK is packed into $OUT/results.tgz. The device tool returns at most 8
# files, so one archive; a call that runs out of time still returns what finished before. Prints
# batch.txt and the tail of each command's output at the end. Exit status: 0 when every command exited 0.
set -uo pipefail
cd "$(dirname "$0")/../.."
DEST=${OUT:-.gpu/out}
WORK=${WORK:-/tmp/shardts-batch}
mkdir -p "$DEST" "$WORK"
[ $# -gt 0 ] || { echo "usage: bash bench/gpu/batch.sh NAME:SECONDS:COMMAND ..." >&2; exit 2; }
for spec in "$@"; do
  name=${spec%%:*}; rest=${spec#*:}; secs=${rest%%:*}; cmd=${rest#*:}
  if ! [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$cmd" = "$rest" ] || [ -z "$cmd" ]; then
    echo "batch.sh: '$spec' is not NAME:SECONDS:COMMAND (NAME of letters, digits, . _ -; SECONDS a whole number)" >&2
    exit 2
  fi
done
status=0
for spec in "$@"; do
  name=${spec%%:*}; rest=${spec#*:}; secs=${rest%%:*}; cmd=${rest#*:}
  mkdir -p "$WORK/$name"
  start=$(date +%s)
  OUT="$WORK/$name" timeout "$secs" bash -c "$cmd" > "$WORK/$name.txt" 2>&1
  rc=$?
  echo "$name exit $rc in $(( $(date +%s) - start )) s" >> "$WORK/batch.txt"
  [ "$rc" -ne 0 ] && status=$rc
  tar czf "$DEST/results.tgz.part" -C "$WORK" . && mv "$DEST/results.tgz.part" "$DEST/results.tgz"
done
cat "$WORK/batch.txt"
for spec in "$@"; do
  name=${spec%%:*}
  echo "== $name (last lines of $name.txt)"
  tail -n "${TAIL_LINES:-15}" "$WORK/$name.txt"
done
exit $status
