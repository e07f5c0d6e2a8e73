#!/usr/bin/env bash
# Compares the two ways the gateway relays tunnel bytes (GATEWAY_TUNNEL_COPY=
# buffer or splice) at 1, 16 and 5,000 streaming tunnels and with 5,000 idle
# tunnels, with the gateway running as root and as an unprivileged user
# (nobody), whose pipes the kernel limits (fs.pipe-user-pages-soft).
#
#   bash bench/copy.sh [extra loadtest flags]    # reports in docs/copy-method/
#
# Each combination is one bench/run.sh run (3 rounds, medians); run it on a
# quiet machine. Needs root (to start the gateway as another user).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${COPY_OUT:-docs/copy-method}
mkdir -p "$out"
echo "copy: fs.pipe-user-pages-soft=$(cat /proc/sys/fs/pipe-user-pages-soft) fs.pipe-max-size=$(cat /proc/sys/fs/pipe-max-size)" >&2
for user in root nobody; do
	for copy in buffer splice; do
		echo "copy: $copy as $user" >&2
		bash bench/run.sh --targets gateway --only bulk,idle --bulk-streams 1,16,5000 \
			--gateway-env "GATEWAY_TUNNEL_COPY=$copy" --gateway-user "$user" \
			--out "$out/$copy-$user.md" "$@"
	done
done
