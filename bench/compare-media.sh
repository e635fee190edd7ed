#!/usr/bin/env bash
# Media relaying side by side: rtpengine (userspace, --table=-1) and Bridgehead's relay, each in
# a process of its own, driven by one load generator in another (examples/rtp_load.rs): N calls
# of G.711 at 50 packets/s each way (172-byte RTP), RTP<->RTP and SRTP<->RTP (the callee leg
# SRTP, SDES AES_CM_128_HMAC_SHA1_80), at rising N, on 127.0.0.1.
#
#   rtpengine   sessions set up over its ng control protocol by the generator: an offer with
#               the caller's SDP (transport-protocol RTP/SAVP for SRTP toward the callee), an
#               answer with the callee's; the ports and rtpengine's SDES key come from the
#               SDPs it returns. Restarted for every step.
#   bridgehead  examples/media_relay.rs: the relay alone with N calls anchored through a
#               bench-only control path (the MediaCommand::Stream the call layer sends after
#               an offer/answer), ports and keys derived from the call's number.
#
# Per relay, mode and N it prints packets sent and received, loss, relayed packets/s, the relay
# process's CPU (utime+stime from /proc/PID/stat, read by the generator at the start and the end
# of the sending window; the generator's own CPU is not in it), CPU seconds per million packets
# relayed and packets per second per core of relay CPU; then Bridgehead's CPU per million
# packets over rtpengine's at each N where both lost under 0.1 %.
#
#   bench/compare-media.sh [CALLS ...]      default: 250 500 1000 2000
#   SECONDS_PER_STEP=5                      the sending window of each step
#   MODES="rtp srtp"  RELAYS="rtpengine bridgehead"
#   RTPENGINE_THREADS=2                     rtpengine --num-threads
#   BRIDGEHEAD_IO=io_uring                  Bridgehead's driver: io_uring or tokio
#   BRIDGEHEAD_THREADS=1                    its io_uring workers
#
# Installs rtpengine-daemon with apt-get when missing (as root; the service is not started, or
# is stopped). Every step is bounded (a timeout on each process); every process started here is
# stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(250 500 1000 2000)
SECONDS_PER_STEP=${SECONDS_PER_STEP:-5}
MODES=${MODES:-"rtp srtp"}
RELAYS=${RELAYS:-"rtpengine bridgehead"}
RTPENGINE_THREADS=${RTPENGINE_THREADS:-2}
BRIDGEHEAD_IO=${BRIDGEHEAD_IO:-io_uring}
BRIDGEHEAD_THREADS=${BRIDGEHEAD_THREADS:-1}
# Port ranges: the generator's below Linux's ephemeral ports, Bridgehead's and rtpengine's
# apart from each other.
GENERATOR_FIRST=10000
RELAY_FIRST=20000
RTPENGINE_PORTS=30000-39999

NEED=()
[[ " $RELAYS " != *" rtpengine "* ]] || command -v rtpengine >/dev/null || NEED+=(rtpengine-daemon)
install_missing "${NEED[@]}"
cargo build --release --quiet --example media_relay --example rtp_load
TARGET=${CARGO_TARGET_DIR:-$PWD/target}/release/examples
WORK=$(mktemp -d /tmp/bridgehead-compare-media.XXXXXX)
FREE_PORT_AVOID="$RTPENGINE_PORTS 10000-29999"
NG=$(free_port)
# Six sockets per call in the generator and the relay together, and bigger socket buffers
# when allowed (root); harmless otherwise.
ulimit -n 65536 2>/dev/null || true
sysctl -qw net.core.rmem_max=8388608 net.core.wmem_max=8388608 2>/dev/null || true

start_relay() {  # $1: rtpengine or bridgehead, $2: calls, $3: mode; sets RELAY_PID
  local dir="$WORK/$1-$3-$2"
  mkdir -p "$dir"
  if [ "$1" = rtpengine ]; then
    timeout $((SECONDS_PER_STEP + 120)) rtpengine --config-file=none --foreground \
      --pidfile="$dir/rtpengine.pid" --table=-1 --interface=127.0.0.1 \
      --listen-ng="127.0.0.1:$NG" --port-min="${RTPENGINE_PORTS%-*}" \
      --port-max="${RTPENGINE_PORTS#*-}" --num-threads="$RTPENGINE_THREADS" \
      --log-stderr --log-level=4 > "$dir/relay.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do rtpengine_pong "$NG" && break; sleep 0.1; done
    rtpengine_pong "$NG" || { echo "rtpengine did not start:"; cat "$dir/relay.log"; exit 1; }
    # `timeout` runs rtpengine as its child: the relay is the child.
    RELAY_PID=$(pgrep -P "${PIDS[-1]}" rtpengine || echo "${PIDS[-1]}")
  else
    timeout $((SECONDS_PER_STEP + 120)) "$TARGET/media_relay" "$2" "$RELAY_FIRST" \
      "$GENERATOR_FIRST" "$3" "$BRIDGEHEAD_IO" "$BRIDGEHEAD_THREADS" > "$dir/relay.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 300); do grep -q ready "$dir/relay.log" 2>/dev/null && break; sleep 0.1; done
    grep -q ready "$dir/relay.log" || { echo "media_relay did not start:"; cat "$dir/relay.log"; exit 1; }
    RELAY_PID=$(pgrep -P "${PIDS[-1]}" media_relay || echo "${PIDS[-1]}")
  fi
}
stop_relay() {
  kill "${PIDS[-1]}" 2>/dev/null || true
  wait "${PIDS[-1]}" 2>/dev/null || true
}

declare -A PERM LOSS
echo "compare-media: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1))"
echo "G.711 20 ms (172-byte RTP), 50 packets/s each way per call, $SECONDS_PER_STEP s per step; relay CPU only"
[[ " $RELAYS " != *" rtpengine "* ]] || echo "rtpengine $(rtpengine --version 2>&1 | awk '{print $NF; exit}') userspace (--table=-1), $RTPENGINE_THREADS threads"
[[ " $RELAYS " != *" bridgehead "* ]] || echo "bridgehead $(git rev-parse --short HEAD 2>/dev/null) relay (examples/media_relay.rs), $BRIDGEHEAD_IO$([ "$BRIDGEHEAD_IO" = tokio ] || echo ", $BRIDGEHEAD_THREADS threads")"
for MODE in $MODES; do
  for RELAY in $RELAYS; do
    for CALLS in "${STEPS[@]}"; do
      start_relay "$RELAY" "$CALLS" "$MODE"
      TARGET_ARG=$([ "$RELAY" = rtpengine ] && echo "127.0.0.1:$NG" || echo "$RELAY_FIRST")
      LINE=$(timeout $((SECONDS_PER_STEP + 90)) "$TARGET/rtp_load" "$CALLS" "$SECONDS_PER_STEP" \
        "$MODE" "$RELAY" "$TARGET_ARG" "$GENERATOR_FIRST" "$RELAY_PID" 2>&1 | tail -1) || true
      stop_relay
      # Bridgehead's heap allocations per relayed packet while the calls ran (its counting
      # allocator's lines, one a second): the per-packet path must make none.
      if [ "$RELAY" = bridgehead ]; then
        LINE="$LINE  $(awk '$1 == "packets" && $2 > 0 {if (!n++) {p0 = $2; a0 = $4}; p = $2; a = $4}
          END {if (p > p0) printf "%.4f allocations per packet", (a - a0) / (p - p0); else print "allocations: -"}' \
          "$WORK/$RELAY-$MODE-$CALLS/relay.log")"
      fi
      echo "$LINE"
      PERM[$RELAY,$MODE,$CALLS]=$(sed -n 's/.* \([0-9.]*\) CPU s per million packets.*/\1/p' <<< "$LINE")
      LOSS[$RELAY,$MODE,$CALLS]=$(sed -n 's/.*lost *[0-9]* (\([0-9.]*\) %).*/\1/p' <<< "$LINE")
    done
  done
done
if [[ " $RELAYS " == *" rtpengine "* && " $RELAYS " == *" bridgehead "* ]]; then
  echo
  echo "relay CPU seconds per million packets: bridgehead / rtpengine (steps where both lost < 0.1 %)"
  for MODE in $MODES; do
    for CALLS in "${STEPS[@]}"; do
      B=${PERM[bridgehead,$MODE,$CALLS]:-}; R=${PERM[rtpengine,$MODE,$CALLS]:-}
      LB=${LOSS[bridgehead,$MODE,$CALLS]:-100}; LR=${LOSS[rtpengine,$MODE,$CALLS]:-100}
      if [ -n "$B" ] && [ -n "$R" ] && awk -v a="$LB" -v b="$LR" 'BEGIN {exit !(a < 0.1 && b < 0.1)}'; then
        awk -v m="$MODE" -v n="$CALLS" -v b="$B" -v r="$R" \
          'BEGIN {printf "  %-5s %5d calls: %6.2f / %6.2f = %.2f\n", m, n, b, r, b / r}'
      else
        echo "  $MODE $CALLS calls: not compared (loss: bridgehead ${LB} %, rtpengine ${LR} %)"
      fi
    done
  done
fi
echo "(logs in $WORK)"
