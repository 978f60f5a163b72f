#!/usr/bin/env bash
# `make test`: the suite's parts run one after another, each whatever the others did, so one failing
# part hides nothing. Each part's output goes to the terminal as it runs; at the end one line per
# part (passed/failed, pytest's counts, seconds), and the exit status is non-zero if any part failed.
# Usage: BIN=.venv/bin PYTEST_ARGS="..." scripts/test-parts.sh
set -u
BIN=${BIN:-.venv/bin}
PYTEST_ARGS=${PYTEST_ARGS:-}
export NAILSEG_NOTEBOOK_OUT=${NAILSEG_NOTEBOOK_OUT:-docs/tutorials}
eval "extra=($PYTEST_ARGS)"   # the same words make would have passed (quotes kept: -k "a or b")
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
trap 'echo "make test: interrupted"; exit 130' INT TERM
summary=()
failed=0

part() {  # part NAME COMMAND...: run it, keep the last line of its output for the summary
  local name=$1; shift
  local started=$SECONDS rc counts
  echo "=== $name: $*"
  "$@" 2>&1 | tee "$logs/$name.log"
  rc=${PIPESTATUS[0]}
  # pytest's closing line ("=== 551 passed, 1 skipped in 1170.2s ==="): its counts, without the decoration
  counts=$(grep -E '(passed|failed|errors?|skipped|no tests ran).* in [0-9.]+s' "$logs/$name.log" | tail -1 \
           | sed -E 's/^=+ //; s/ in [0-9.]+s.*//')
  if [ "$rc" -eq 0 ]; then status=passed; else status="FAILED (exit $rc)"; failed=1; fi
  summary+=("$(printf '%-14s %-18s %6ss  %s' "$name" "$status" "$((SECONDS - started))" "${counts:-}")")
  n_passed=$((n_passed + $(echo "$counts" | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^passed/) n += $(i-1)} END {print n+0}')))
  n_failed=$((n_failed + $(echo "$counts" | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^(failed|error)/) n += $(i-1)} END {print n+0}')))
}
n_passed=0
n_failed=0

# Each part's tests are spread over pytest-xdist workers, one a core pair (at most 4), each held
# to its share of the cores: two trainings that both take every core run 6-12x slower (OpenMP
# threads fighting), two that take one core each run side by side. A module's tests stay on one
# worker (tests/conftest.py: SPREAD_MODULES names the exceptions). NAILSEG_TEST_WORKERS=0: one process.
cores=$(nproc 2>/dev/null || echo 1)
workers=${NAILSEG_TEST_WORKERS:-$(( cores >= 2 ? (cores / 2 > 4 ? 4 : (cores / 2 > 2 ? cores / 2 : 2)) : 0 ))}
parallel=()
if [ "$workers" -gt 0 ]; then
  threads=$(( cores / workers > 0 ? cores / workers : 1 ))
  export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads TF_NUM_INTRAOP_THREADS=$threads TF_NUM_INTEROP_THREADS=1
  parallel=(-n "$workers" --dist loadgroup)
  echo "make test: $workers pytest workers, $threads thread(s) each, on $cores cores"
fi

# Two pytest processes: TensorFlow and torch must not share one (tests/stacks/keras/conftest.py).
part torch-tests "$BIN/python" -m pytest -m "not gpu and not tf" "${parallel[@]}" "${extra[@]}"
part tf-tests "$BIN/python" -m pytest -m "tf and not gpu" tests/stacks/keras tests/docs "${parallel[@]}" "${extra[@]}"
part docs make --no-print-directory docs

echo
echo "make test: one line per part"
printf '  %s\n' "${summary[@]}"
echo "tests: $n_passed passed, $n_failed failed"
exit $failed
