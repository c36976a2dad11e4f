#!/usr/bin/env bash
# `make demo` N times in a row on a fresh clone of this repository's HEAD (default 10).
# Prints each run's exit code, verdict line and duration; exits 1 if any run failed.
# Usage: bench/demo_repeat.sh [N]
set -uo pipefail
runs="${1:-10}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d -t lethe-demo-repeat-XXXXXX)"
# The demo leaves the embedded PostgreSQL and S3 server running for the next command: stop them first.
trap '(cd "$work/lethe" 2>/dev/null && .tools/bin/uv run --frozen lethe services stop >/dev/null 2>&1); rm -rf "$work"' EXIT
unset LETHE_DATABASE_URL LETHE_S3_ENDPOINT_URL LETHE_HOME
git clone --quiet "$repo" "$work/lethe"
cd "$work/lethe"
echo "fresh clone of $(git rev-parse --short HEAD) in $work/lethe"
failed=0
for i in $(seq 1 "$runs"); do
  started=$(date +%s)
  make demo >"$work/demo-$i.log" 2>&1
  code=$?
  verdict=$(grep -E '^ *VERDICT' "$work/demo-$i.log" | tail -1 | sed 's/^ *//')
  printf 'run %2d: exit %d in %4ds  %s\n' "$i" "$code" "$(( $(date +%s) - started ))" "${verdict:-no verdict}"
  if [ "$code" -ne 0 ]; then
    failed=$((failed + 1))
    tail -20 "$work/demo-$i.log"
  fi
done
echo "$((runs - failed)) of $runs demo runs passed"
[ "$failed" -eq 0 ]
