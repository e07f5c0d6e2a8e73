#!/usr/bin/env bash
# Side-by-side load test on loopback: the gateway vs Squid 5 vs tinyproxy vs a
# direct path. Installs what is missing (Debian: squid, tinyproxy), builds the
# gateway, runs bench/loadtest and writes docs/benchmarks.md.
#
#   bash bench/run.sh                       # full run, about 5-7 minutes
#   bash bench/run.sh --rounds 1 --only bulk,latency --out /tmp/b.md
#
# Extra arguments go to the load test (see bench/README.md). All traffic stays
# on 127.0.0.0/8.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v squid >/dev/null 2>&1 || need+=(squid)
command -v tinyproxy >/dev/null 2>&1 || need+=(tinyproxy)
if ((${#need[@]})); then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "bench: installing ${need[*]}" >&2
		# Keep the packages' own services (Squid on :3128, tinyproxy on :8888) from starting.
		guard=""
		if [ ! -e /usr/sbin/policy-rc.d ]; then
			printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
			chmod 755 /usr/sbin/policy-rc.d
			guard=1
		fi
		if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; } >&2; then
			echo "bench: apt-get failed; the missing proxies are reported as n/a" >&2
		fi
		[ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
	else
		echo "bench: ${need[*]} missing and not installable here (needs root and apt-get); reported as n/a" >&2
	fi
fi
command -v unshare >/dev/null 2>&1 || echo "bench: unshare(1) missing: Squid and tinyproxy will be n/a" >&2

# 5,000 idle tunnels need about 10,000 descriptors in the load test and in the proxy.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "bench: open files limit $(ulimit -n)" >&2

tmp=$(mktemp -d /tmp/gateway-bench-run.XXXXXX)
chmod 755 "$tmp" # --gateway-user: another user runs the gateway from here
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/gateway" ./cmd/gateway
go build -o "$tmp/loadtest" ./bench/loadtest
mkdir -p docs

cmdline="bash bench/run.sh"
for a in "$@"; do cmdline+=" $(printf '%q' "$a")"; done
# The load test keeps to its own --timeout (7m by default); this is the backstop.
timeout -k 15 540 "$tmp/loadtest" --gateway "$tmp/gateway" --out docs/benchmarks.md --command "$cmdline" "$@"
