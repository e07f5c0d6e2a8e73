#!/usr/bin/env bash
# Runs every fuzz target of the gateway one after another for FUZZTIME each
# (default 30s): FUZZTIME=5m bench/fuzz.sh, or name targets to run only
# those: bench/fuzz.sh FuzzRequest FuzzParseRules. FUZZMINIMIZETIME (default
# 5s) bounds the minimisation of each new input.
#
# A failing input is written by `go test` to
#   internal/<pkg>/testdata/fuzz/<FuzzName>/<hash>
# next to the seed corpus. Keep it there: every later `go test` runs it as a
# regression case (no -fuzz needed). Reproduce one with
#   go test -run '^<FuzzName>$/<hash>$' ./internal/<pkg>/
# The generated (non-failing) corpus goes to $(go env GOCACHE)/fuzz, not into
# the repository.
set -uo pipefail
cd "$(dirname "$0")/.."

FUZZTIME="${FUZZTIME:-30s}"
# Go minimises every new interesting input for up to 60s by default, during
# which no new inputs run: with short FUZZTIMEs that eats most of the budget.
FUZZMINIMIZETIME="${FUZZMINIMIZETIME:-5s}"
# package:target, run in this order.
targets=(
  ./internal/allowlist/:FuzzNormalizeHost
  ./internal/allowlist/:FuzzParseRules
  ./internal/tlsbypass/:FuzzPeekClientHello
  ./internal/proxy/:FuzzRequest
  ./internal/upstream/:FuzzResponse
)

want=("$@")
failed=()
for t in "${targets[@]}"; do
  pkg="${t%%:*}" name="${t##*:}"
  if [ "${#want[@]}" -gt 0 ] && [[ ! " ${want[*]} " =~ " ${name} " ]]; then
    continue
  fi
  corpus="${pkg#./}testdata/fuzz/${name}"
  before=$(ls "$corpus" 2>/dev/null | sort)
  echo "== ${name} (${pkg}, ${FUZZTIME})"
  if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZETIME" "$pkg"; then
    failed+=("$name")
    new=$(comm -13 <(echo "$before") <(ls "$corpus" 2>/dev/null | sort))
    for f in $new; do
      echo "!! crasher kept: ${corpus}/${f}"
      echo "   reproduce: go test -run '^${name}\$/${f}\$' ${pkg}"
    done
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED: ${failed[*]} (crashers are under internal/*/testdata/fuzz/<FuzzName>/)"
  exit 1
fi
echo "all fuzz targets passed (FUZZTIME=${FUZZTIME})"
