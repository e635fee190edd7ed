#!/usr/bin/env bash
# Load test: SIPp UAC -> Bridgehead -> SIPp UAS on loopback at rising call rates.
# Prints, per rate, the calls attempted/succeeded/failed, the achieved rate and Bridgehead's CPU
# (100 % = one core), then the highest rate held with 0 failed calls.
#
#   bench/cps.sh [RATE ...]          default rates: 1000 2000 3000 4000 5000 6000
#   SECONDS_PER_RATE=5 bench/cps.sh  calls per step = rate x SECONDS_PER_RATE
#
# Every step is bounded (calls and a SIPp -timeout); every process started here is stopped by
# PID on exit. Uses the release build and a profile equivalent to profiles/default.yaml on
# free ports; the SIPp scenarios are the end-to-end tests' tests/sipp/caller.xml and callee.xml.
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(1000 2000 3000 4000 5000 6000 7000)
SECONDS_PER_RATE=${SECONDS_PER_RATE:-5}
command -v sipp >/dev/null || { echo "sipp not found: apt-get install sip-tester" >&2; exit 2; }

cargo build --release --quiet
WORK=$(mktemp -d /tmp/bridgehead-cps.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CORE=$(free_port); TEAMS=$(free_port); SOFTSWITCH=$(free_port); TEAMS_PEER=$(free_port); UAC=$(free_port)
cat > "$WORK/profile.yaml" <<EOF
listeners:
  - name: core
    address: 127.0.0.1:$CORE
    transports: [udp]
  - name: teams
    address: 127.0.0.1:$TEAMS
    transports: [udp]
trunks:
  - name: core
    listener: core
    peers: ["127.0.0.1:$SOFTSWITCH"]
    script: $PWD/scripts/default.lua
    route: teams
  - name: teams
    listener: teams
    peers: ["127.0.0.1:$TEAMS_PEER"]
    script: $PWD/scripts/default.lua
    route: core
EOF
# Bigger socket buffers when allowed (root); harmless otherwise.
sysctl -qw net.core.rmem_max=8388608 net.core.wmem_max=8388608 2>/dev/null || true

RUST_LOG=info target/release/bridgehead run --profile "$WORK/profile.yaml" 2> "$WORK/sbc.log" &
SBC=$!
PIDS+=("$SBC")
for _ in $(seq 100); do grep -q ready "$WORK/sbc.log" 2>/dev/null && break; sleep 0.05; done
grep -q ready "$WORK/sbc.log" || { echo "bridgehead did not start:"; cat "$WORK/sbc.log"; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# The last row of a SIPp statistics file, column by name.
stat_column() { awk -F';' -v name="$2" 'NR==1 {for (i=1;i<=NF;i++) if ($i==name) c=i} END {print $c}' "$1"; }

HZ=$(getconf CLK_TCK)
BEST=0
printf '%8s %8s %8s %8s %10s %9s\n' rate calls ok failed "calls/s" "sbc cpu"
for RATE in "${RATES[@]}"; do
  CALLS=$((RATE * SECONDS_PER_RATE))
  STEP="$WORK/$RATE"; mkdir -p "$STEP"
  sipp -sf tests/sipp/callee.xml -i 127.0.0.1 -p "$TEAMS_PEER" -m "$CALLS" -nostdin -bg \
       -buff_size 4194304 -timeout $((SECONDS_PER_RATE * 4 + 30))s > "$STEP/uas.out" 2>&1 || true
  UAS_PID=$(sed -n 's/.*PID=\[\([0-9]*\)\].*/\1/p' "$STEP/uas.out")
  [ -n "$UAS_PID" ] || { echo "SIPp UAS did not start:"; cat "$STEP/uas.out"; exit 1; }
  PIDS+=("$UAS_PID")
  T0=$(date +%s.%N); C0=$(cpu_ticks "$SBC")
  (cd "$STEP" && sipp -sf "$OLDPWD/tests/sipp/caller.xml" "127.0.0.1:$CORE" -i 127.0.0.1 -p "$UAC" \
       -m "$CALLS" -r "$RATE" -d 0 -nostdin -buff_size 4194304 \
       -timeout $((SECONDS_PER_RATE * 4 + 20))s -timeout_error \
       -trace_stat -stf stat.csv -fd 1 > uac.out 2>&1) || true
  T1=$(date +%s.%N); C1=$(cpu_ticks "$SBC")
  for _ in $(seq 100); do kill -0 "$UAS_PID" 2>/dev/null || break; sleep 0.1; done
  kill "$UAS_PID" 2>/dev/null || true
  OK=$(stat_column "$STEP/stat.csv" "SuccessfulCall(C)")
  FAILED=$(stat_column "$STEP/stat.csv" "FailedCall(C)")
  ACHIEVED=$(awk -v n="$OK" -v a="$T0" -v b="$T1" 'BEGIN {printf "%.0f", n / (b - a)}')
  CPU=$(awk -v c0="$C0" -v c1="$C1" -v hz="$HZ" -v a="$T0" -v b="$T1" \
        'BEGIN {printf "%.0f%%", 100 * (c1 - c0) / hz / (b - a)}')
  printf '%8s %8s %8s %8s %10s %9s\n' "$RATE" "$CALLS" "$OK" "$FAILED" "$ACHIEVED" "$CPU"
  if [ "$FAILED" = 0 ] && [ "$OK" = "$CALLS" ]; then BEST=$RATE; fi
  kill -0 "$SBC" 2>/dev/null || { echo "bridgehead died:"; tail "$WORK/sbc.log"; exit 1; }
done
echo "highest rate with 0 failed calls: $BEST calls/s"
echo "(logs and SIPp statistics in $WORK)"
