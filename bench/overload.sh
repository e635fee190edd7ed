#!/usr/bin/env bash
# Overload: each system is offered FACTOR times the call rate it completes cleanly, for
# FLOOD_SECONDS, then a probe at half that rate shows how fast it recovers. Side by side:
#
#   bridgehead  one shard, two trunks, no media, rules whose on_invite burns BURN Lua loop
#               iterations (a few ms of CPU per new call), its default `overload` settings
#   kamailio    Kamailio stateful proxy (bench/kamailio/kamailio.cfg, KEMI Lua) burning the same
#               loop on each initial INVITE, 1 UDP worker per socket; it has no overload control
#
# The burn makes the capacity small enough (a few hundred calls/s) for one SIPp to offer three
# times it on this machine; both systems pay the same per call.
#
# Per system it prints:
#   capacity   the highest rate of a ramp (RAMP_SECONDS per step, rates rising by a quarter from
#              START_RATE, then the gap to the first rate that was not clean halved down to 5 %)
#              at which every call was answered, none refused or failed, and SIPp needed no
#              retransmission (CAPACITY=N skips the ramp)
#   flood      FACTOR x capacity for FLOOD_SECONDS (tests/sipp/caller_flood.xml: a 503 is
#              acknowledged and ends the call; an answered call is held HOLD_MS and hung up):
#              calls offered, answered, answered within 2 s of the INVITE (goodput, per second
#              of the flood and as a share of capacity: a caller waits no longer), refused with
#              503, failed (timed out, lost), SIPp's retransmissions, datagrams the kernel
#              dropped, the answered calls' median setup time, the system's CPU while the flood
#              was sent (100 % = one core; the two SIPps share the machine) and its peak RSS
#   recovery   a probe at half the capacity started as the flood stops sending
#              (tests/sipp/caller.xml, where a 503 fails the call): per second, calls answered
#              and failed; "recovered after N s": from second N to second 5 of the 6 it places
#              calls, every second answered at least 80 % of the probe's rate and failed none
#              (1: its first full second)
#
#   bench/overload.sh                    SYSTEMS="bridgehead kamailio"
#   FACTOR=3 FLOOD_SECONDS=10 HOLD_MS=1000 BURN=1000000 START_RATE=40 RAMP_SECONDS=4
#
# Installs sip-tester, kamailio and kamailio-lua-modules with apt-get when missing (as root).
# Everything runs on 127.0.0.1 on free ports; every SIPp run is bounded in calls and by -timeout;
# every process started here is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SYSTEMS=${SYSTEMS:-"bridgehead kamailio"}
FACTOR=${FACTOR:-3}
FLOOD_SECONDS=${FLOOD_SECONDS:-10}
HOLD_MS=${HOLD_MS:-1000}
BURN=${BURN:-1000000}
START_RATE=${START_RATE:-40}
RAMP_SECONDS=${RAMP_SECONDS:-4}
CAPACITY=${CAPACITY:-}
KAMAILIO_WORKERS=1

NEED=()
command -v sipp >/dev/null || NEED+=(sip-tester)
KAMAILIO_MODULES=$(kamailio_modules)
if [[ " $SYSTEMS " == *" kamailio "* ]]; then
  command -v kamailio >/dev/null || NEED+=(kamailio)
  [ -e "$KAMAILIO_MODULES/app_lua.so" ] || NEED+=(kamailio-lua-modules)
fi
install_missing "${NEED[@]}"
BRIDGEHEAD=${CARGO_TARGET_DIR:-$PWD/target}/release/bridgehead
[[ " $SYSTEMS " != *" bridgehead "* ]] || cargo build --release --quiet

WORK=$(mktemp -d /tmp/bridgehead-overload.XXXXXX)
CORE=$(free_port); TEAMS=$(free_port); SOFTSWITCH=$(free_port); TEAMS_PEER=$(free_port)
sysctl -qw net.core.rmem_max=8388608 net.core.wmem_max=8388608 2>/dev/null || true

cat > "$WORK/burn.lua" <<EOF
-- bench/overload.sh: every new call costs $BURN Lua loop iterations.
return { on_invite = function(call, req) local x = 0; for i = 1, $BURN do x = x + i end end }
EOF
cat > "$WORK/burn-kamailio.lua" <<EOF
-- bench/overload.sh: every initial INVITE from the core costs $BURN Lua loop iterations
-- (bench/kamailio/default.lua runs heavy_invite()).
function heavy_invite() local x = 0; for i = 1, $BURN do x = x + i end end
EOF
{ printf 'shards: 1\nlimits:\n  script_instructions: %d\n' $((BURN * 10)); two_trunks "$WORK/burn.lua"; } \
  > "$WORK/profile.yaml"

start_system() {
  case "$SYS" in
    bridgehead) start_bridgehead "$WORK/profile.yaml" ;;
    kamailio) KAM_HEAVY=(-A "BENCH_HEAVY_LUA=\"$WORK/burn-kamailio.lua\""); start_kamailio 0 ;;
  esac
}
rss_kib() {  # resident memory of the system's processes and their children, KiB
  local pids=() root p total=0
  for root in "${SYS_PIDS[@]}"; do pids+=("$root"); pids+=($(pgrep -P "$root" || true)); done
  for p in "${pids[@]}"; do
    total=$((total + $(awk '/^VmRSS:/ {r = $2} END {print r + 0}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
# A SIPp message counter from a -trace_counts file: the last row's column NAME (e.g. 3_503_Recv
# is found as the first column ending in _503_Recv).
count_of() { awk -F';' -v suffix="$2" 'NR==1 {for (i=1;i<=NF;i++) if ($i ~ suffix "$") {c=i; break}} END {print (c ? $c : 0) + 0}' "$1"; }

callee() {  # $1: the step's directory, $2: calls
  sipp -sf tests/sipp/callee_patient.xml -i 127.0.0.1 -p "$TEAMS_PEER" -m $(($2 * 2)) -nostdin -bg \
       -buff_size 8388608 -timeout $((FLOOD_SECONDS * 4 + 60))s > "$1/uas.out" 2>&1 || true
  local pid; pid=$(sed -n 's/.*PID=\[\([0-9]*\)\].*/\1/p' "$1/uas.out")
  [ -n "$pid" ] || { echo "SIPp UAS did not start:" >&2; cat "$1/uas.out" >&2; exit 1; }
  echo "$pid"   # run in $(...): the caller adds it to PIDS
}
# Runs the flooding caller at rate $2 for $3 calls in directory $1 (in the foreground).
caller() {
  local port; port=$(free_port)
  (cd "$1" && exec sipp -sf "$OLDPWD/tests/sipp/caller_flood.xml" "127.0.0.1:$CORE" -i 127.0.0.1 \
     -p "$port" -m "$3" -r "$2" -d "$HOLD_MS" -nostdin -buff_size 8388608 \
     -timeout $((FLOOD_SECONDS * 4 + 40))s -timeout_error -trace_stat -stf stat.csv \
     -trace_counts -trace_rtt -rtt_freq 1 > uac.out 2>&1) || true
}
# calls answered refused failed retransmissions of a caller step.
step_figures() {
  local counts; counts=$(ls "$1"/*_counts.csv 2>/dev/null | head -1)
  local answered=0 refused=0
  if [ -n "$counts" ]; then
    refused=$(count_of "$counts" "_503_Recv"); answered=$(count_of "$counts" "_200_Recv")
  fi
  # The 200 counter counts the BYE's answers too: the INVITE's is the first _200_Recv column.
  echo "$answered $refused $(stat_column "$1/stat.csv" "FailedCall(C)") $(stat_column "$1/stat.csv" "Retransmissions(C)")"
}
answered_within_ms() {  # answered calls whose INVITE-to-200 time was at most $2 ms
  local rtt; rtt=$(ls "$1"/*_rtt.csv 2>/dev/null | head -1)
  [ -n "$rtt" ] || { echo 0; return; }
  awk -F';' -v max="$2" 'NR>1 && $2 != "" && $2 <= max {n++} END {print n + 0}' "$rtt"
}
median_setup_ms() {  # the median of the answered calls' INVITE-to-200 times (SIPp's rtt file)
  local rtt; rtt=$(ls "$1"/*_rtt.csv 2>/dev/null | head -1)
  [ -n "$rtt" ] || { echo -; return; }
  awk -F';' 'NR>1 && $2 != "" {print $2}' "$rtt" | sort -n | awk '{v[NR]=$1} END {if (NR) printf "%.0f", v[int((NR+1)/2)]; else print "-"}'
}

echo "overload: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1))"
echo "SIPp $(sipp -v 2>&1 | sed -n 's/.*SIPp \(v[^ ,]*[^ ,.]\).*/\1/p' | head -1); each new call burns $BURN Lua loop iterations; calls held $HOLD_MS ms"
for SYS in $SYSTEMS; do
  echo
  case "$SYS" in
    bridgehead) echo "bridgehead $(git rev-parse --short HEAD 2>/dev/null): 1 shard, no media, default overload settings" ;;
    kamailio) echo "kamailio $(kamailio -v 2>/dev/null | sed -n 's/^version: kamailio \([^ ]*\).*/\1/p'): stateful proxy, KEMI Lua, 1 UDP worker per socket, no overload control" ;;
  esac
  start_system
  RSS0=$(rss_kib)
  CAP=$CAPACITY
  if [ -z "$CAP" ]; then
    RATE=$START_RATE; TOO_MANY=
    while :; do
      STEP="$WORK/$SYS/ramp-$RATE"; mkdir -p "$STEP"
      CALLS=$((RATE * RAMP_SECONDS))
      UAS=$(callee "$STEP" "$CALLS"); PIDS+=("$UAS")
      caller "$STEP" "$RATE" "$CALLS"
      kill "$UAS" 2>/dev/null || true
      read -r ANSWERED REFUSED FAILED RETRANS <<< "$(step_figures "$STEP")"
      printf '   ramp %5s calls/s: %5s answered, %5s refused, %5s failed, %5s retransmissions\n' "$RATE" "$ANSWERED" "$REFUSED" "$FAILED" "$RETRANS"
      if [ "$ANSWERED" -ge "$CALLS" ] && [ "$REFUSED" = 0 ] && [ "$FAILED" = 0 ] && [ "$RETRANS" = 0 ]; then
        CAP=$RATE
      else
        TOO_MANY=$RATE
      fi
      # Up by a quarter until a rate is not clean, then halve the gap down to 5 %.
      if [ -z "$TOO_MANY" ]; then
        RATE=$((RATE + RATE / 4 + 1))
      elif [ -n "$CAP" ] && [ $((TOO_MANY - CAP)) -gt $((CAP / 20 + 1)) ]; then
        RATE=$(((CAP + TOO_MANY) / 2))
      else
        break
      fi
      sleep 2
    done
    [ -n "$CAP" ] || { echo "   not even $START_RATE calls/s complete cleanly: lower BURN"; stop_system; continue; }
    sleep 3
  fi
  FLOOD=$((CAP * FACTOR)); CALLS=$((FLOOD * FLOOD_SECONDS)); PROBE=$((CAP / 2))
  echo "   capacity $CAP calls/s; flood $FLOOD calls/s for $FLOOD_SECONDS s ($CALLS calls), probe $PROBE calls/s"
  STEP="$WORK/$SYS/flood"; mkdir -p "$STEP/probe"
  UAS=$(callee "$STEP" $((CALLS + PROBE * 6))); PIDS+=("$UAS")
  D0=$(udp_drops); PEAK=0; T0=$(date +%s.%N); C0=$(tree_ticks "${SYS_PIDS[@]}")
  caller "$STEP" "$FLOOD" "$CALLS" &
  FLOOD_PID=$!; PIDS+=("$FLOOD_PID")
  for _ in $(seq $((FLOOD_SECONDS * 2))); do
    sleep 0.5; R=$(rss_kib); [ "$R" -le "$PEAK" ] || PEAK=$R
  done
  T1=$(date +%s.%N); C1=$(tree_ticks "${SYS_PIDS[@]}")
  # The probe: half the capacity for 6 s, from the moment the flood stops sending.
  PROBE_PORT=$(free_port)
  (cd "$STEP/probe" && sipp -sf "$OLDPWD/tests/sipp/caller.xml" "127.0.0.1:$CORE" -i 127.0.0.1 \
     -p "$PROBE_PORT" -m $((PROBE * 6)) -r "$PROBE" -d 200 -nostdin -timeout 60s \
     -trace_stat -stf stat.csv -fd 1 > uac.out 2>&1) || true
  wait "$FLOOD_PID" || true
  R=$(rss_kib); [ "$R" -le "$PEAK" ] || PEAK=$R
  kill "$UAS" 2>/dev/null || true
  DROPS=$(( $(udp_drops) - D0 ))
  read -r ANSWERED REFUSED FAILED RETRANS <<< "$(step_figures "$STEP")"
  PROMPT=$(answered_within_ms "$STEP" 2000)
  awk -v a="$ANSWERED" -v q="$PROMPT" -v s="$FLOOD_SECONDS" -v c="$CAP" -v o="$CALLS" -v r="$REFUSED" \
      -v f="$FAILED" -v t="$RETRANS" -v d="$DROPS" -v m="$(median_setup_ms "$STEP")" -v p0="$RSS0" \
      -v p="$PEAK" -v cpu="$((C1 - C0))" -v hz="$(getconf CLK_TCK)" -v w="$(awk -v a="$T0" -v b="$T1" 'BEGIN {print b - a}')" \
    'BEGIN {printf "   flood: %d offered, %d answered, %d of them within 2 s: goodput %.0f calls/s, %.0f %% of capacity\n", o, a, q, q / s, 100 * q / s / c
            printf "          %d refused with 503, %d failed, %d retransmissions, %d datagrams dropped by the kernel\n", r, f, t, d
            printf "          median setup %s ms, CPU %.0f %% of a core, RSS %d -> %d KiB\n", m, 100 * cpu / hz / w, p0, p}'
  # Per second of the probe: answered and failed (SIPp's periodic counters; row 1 is SIPp's
  # start, row 2 the first second, whose calls are still being set up, rows 3 to 7 seconds 1 to
  # 5 of the 6 the probe places calls, later rows the last calls ending). Recovered after N s:
  # from second N to second 5, every second answered at least 80 % of the probe's rate and
  # failed none.
  awk -F';' -v rate="$PROBE" \
    'NR==1 {for (i=1;i<=NF;i++) {if ($i=="SuccessfulCall(P)") s=i; if ($i=="FailedCall(P)") f=i}; next}
     {n++; ok[n] = ($f == 0 && $s >= 0.8 * rate); line = line (n > 1 ? " " : "") $s "/" $f; failed += $f}
     END {print "   probe, answered/failed per second: " line
          first = 0
          for (i = 7; i >= 3 && ok[i]; i--) first = i
          if (first) printf "   recovered after %d s, %d probe calls failed\n", first - 2, failed
          else printf "   not recovered while the probe placed calls (6 s), %d probe calls failed\n", failed}' \
    "$STEP/probe/stat.csv"
  for pid in "${SYS_PIDS[@]}"; do
    alive "$pid" || echo "   $SYS died (logs in $WORK/$SYS)"
  done
  stop_system
done
echo "(logs and SIPp statistics in $WORK)"
