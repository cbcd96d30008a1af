#!/usr/bin/env bash
# The whole test suite: setup, formatting, lint, type check, every test. The last line is
# "N passed, N failed" (deno test's tests, plus each static check that failed).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup.sh
. scripts/setup.sh || { echo "0 passed, 1 failed"; exit 1; }

failed_checks=0
run_check() {
  echo "== $*"
  if ! "$@"; then
    echo "FAILED: $*"
    failed_checks=$((failed_checks + 1))
  fi
}
run_check "$DENO" fmt --check
run_check "$DENO" lint
run_check "$DENO" check main.ts mod.ts lib/ tests/ scripts/

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "== deno test"
# Test files run in parallel (each starts its own throwaway servers); --allow-all because the
# tests start servers and child processes.
DENO_JOBS="${DENO_JOBS:-2}" "$DENO" test -A --parallel "$@" 2>&1 | tee "$log"
test_rc=${PIPESTATUS[0]}

summary="$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^(ok|FAILED) \| [0-9]+ passed' | tail -1)"
passed="$(printf '%s' "$summary" | sed -E 's/.*\| ([0-9]+) passed.*/\1/')"
failed="$(printf '%s' "$summary" | sed -E 's/.*\| ([0-9]+) failed.*/\1/')"
passed="${passed:-0}"
failed="${failed:-0}"
if [ "$test_rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
  failed=1 # the runner itself failed (compile error, crash)
fi
failed=$((failed + failed_checks))
echo "${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
