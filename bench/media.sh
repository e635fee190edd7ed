#!/usr/bin/env bash
# Media load: N anchored calls through Bridgehead's relay on loopback, G.711 (172-byte packets)
# every 20 ms both ways, RTP <-> RTP and SRTP <-> RTP, at rising call counts. Prints packets
# sent, relayed and lost, relay packets/s and the process's CPU (the generator runs in the same
# process, on the same 2 cores, and costs about as much as the relay).
#
#   bench/media.sh [CALLS ...]          default: 250 500 1000 1500 2000
#   SECONDS_PER_STEP=5 bench/media.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(250 500 1000 1500 2000)
SECONDS_PER_STEP=${SECONDS_PER_STEP:-5}
cargo build --release --quiet --example media_load
# Four relay sockets and two generator sockets per call.
ulimit -n 20000 2>/dev/null || true
for calls in "${STEPS[@]}"; do
  timeout $((SECONDS_PER_STEP + 30)) target/release/examples/media_load "$calls" "$SECONDS_PER_STEP"
  timeout $((SECONDS_PER_STEP + 30)) target/release/examples/media_load "$calls" "$SECONDS_PER_STEP" srtp
done
