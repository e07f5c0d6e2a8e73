#!/usr/bin/env bash
# Soak: holds moderate load with churn on a `gateway lab` replica (loopback only) for SOAK_DURATION (default 10m)
# and fails when goroutines, file descriptors or memory grow beyond noise, or when any request fails.
#   SOAK_DURATION=10m bash bench/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/gateway" ./cmd/gateway
go run ./bench/soak --gateway "$tmp/gateway" --duration "${SOAK_DURATION:-10m}" --warmup "${SOAK_WARMUP:-20s}"
