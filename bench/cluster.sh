#!/usr/bin/env bash
# What sharing call state in Redis costs, and how long a takeover takes: Bridgehead (release
# build, media anchored, two trunks running scripts/default.lua), a SIPp UAC/UAS pair and a
# redis-server started here, all on 127.0.0.1.
#
# Each run places CALLS calls at RATE a second (tests/sipp/caller_takeover.xml and
# callee_takeover.xml: answered, held HOLD seconds, then a re-INVITE and a BYE from the caller).
#
#   cost      the same run without and with a `cluster` section (sync_ms 200, heartbeat 1 s):
#             the CPU seconds per 1,000 calls of bridgehead, from the first call until SETTLE
#             seconds after the last ended, and of redis-server; the state writes counted
#             (cluster_state_writes_total), the calls failed
#   takeover  with the cluster, once every call is up, bridgehead is killed (SIGKILL) and
#             started again on the same profile (as a restart in place does): how long from the
#             kill to the new process ready, and to every call taken over and relayed (its
#             metrics cluster_calls_taken_over_total and media_streams, read every 20 ms);
#             then whether every call's re-INVITE and BYE completed through it (SIPp's failed
#             calls), and the second process's CPU from its start
#
#   bench/cluster.sh                      CALLS=2000 RATE=400 HOLD=12 SETTLE=3
#   SYNC_MS=200                           the cluster's sync_ms (how often shards look for
#                                         changed calls)
#   RUNS="local cluster takeover"         which runs, in that order
#
# Installs sip-tester and redis-server with apt-get when missing (as root). Every SIPp run is
# bounded in calls and by -timeout; every process started here is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CALLS=${CALLS:-2000}
RATE=${RATE:-400}
HOLD=${HOLD:-12}
SETTLE=${SETTLE:-3}
SYNC_MS=${SYNC_MS:-200}
RUNS=${RUNS:-"local cluster takeover"}
NEED=()
command -v sipp >/dev/null || NEED+=(sip-tester)
command -v redis-server >/dev/null || NEED+=(redis-server)
install_missing "${NEED[@]}"
BRIDGEHEAD=${CARGO_TARGET_DIR:-$PWD/target}/release/bridgehead
cargo build --release --quiet
WORK=$(mktemp -d /tmp/bridgehead-cluster.XXXXXX)
HZ=$(getconf CLK_TCK)
MEDIA_PORTS=20000-29999
FREE_PORT_AVOID=$MEDIA_PORTS
CORE=$(free_port); TEAMS=$(free_port); SOFTSWITCH=$(free_port); TEAMS_PEER=$(free_port)
ADMIN=$(free_port); REDIS_PORT=$(free_port)

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  > "$WORK/redis.log" 2>&1 &
REDIS_PID=$!; PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

# The profile: with a cluster section when $1 is 1.
profile() {
  if [ "$1" = 1 ]; then
    printf 'cluster:\n  redis: redis://127.0.0.1:%s/\n  name: bench\n  instance: one\n  sync_ms: %s\n' \
      "$REDIS_PORT" "$SYNC_MS"
  fi
  printf 'media:\n  address: 127.0.0.1\n  ports: %s\n' "$MEDIA_PORTS"
  printf 'admin:\n  address: 127.0.0.1:%s\n' "$ADMIN"
  two_trunks "$PWD/scripts/default.lua"
}
metric() {  # $1: a metric's name: its value on the admin server, or nothing
  { curl -s "http://127.0.0.1:$ADMIN/metrics" 2>/dev/null || true; } \
    | awk -v n="bridgehead_$1" '$1 == n {print $2}'
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'; }

# One run; $1: cluster (0 or 1), $2: kill and start again once every call is up (0 or 1).
RUN=0
run() {
  RUN=$((RUN + 1))
  SYS="run$RUN-$1-$2"
  local dir="$WORK/$SYS"
  mkdir -p "$dir"
  profile "$1" > "$dir/profile.yaml"
  start_bridgehead "$dir/profile.yaml"
  local sbc=${SYS_PIDS[-1]} redis0 cpu0
  redis0=$(tree_ticks "$REDIS_PID"); cpu0=$(tree_ticks "$sbc")
  local threads0 threads1; threads0=$(thread_ticks "$sbc")
  sipp -sf tests/sipp/callee_takeover.xml -i 127.0.0.1 -p "$TEAMS_PEER" -m "$CALLS" -nostdin \
    -timeout $((HOLD + CALLS / RATE + 60))s -timeout_error > "$dir/uas.out" 2>&1 &
  local uas=$!; PIDS+=($!)
  for _ in $(seq 100); do udp_bound "$TEAMS_PEER" && break; sleep 0.05; done
  (cd "$dir" && exec sipp -sf "$OLDPWD/tests/sipp/caller_takeover.xml" "127.0.0.1:$CORE" \
    -i 127.0.0.1 -p "$SOFTSWITCH" -m "$CALLS" -r "$RATE" -l "$CALLS" -d $((HOLD * 1000)) \
    -nostdin -timeout $((HOLD + CALLS / RATE + 60))s -timeout_error -trace_stat -fd 1 \
    > uac.out 2>&1) &
  local uac=$!; PIDS+=($!)
  if [ "$2" = 1 ]; then
    # Every call up (and its state written), then the kill.
    for _ in $(seq $((20 * (CALLS / RATE + 10)))); do
      [ "$(metric cluster_calls)" = "$CALLS" ] && break; sleep 0.05
    done
    sleep 0.5   # the last states written (each round takes what the shards queued)
    local up; up=$(metric cluster_calls)
    kill -KILL "$sbc"; local killed; killed=$(now)
    wait "$sbc" 2>/dev/null || true
    start_bridgehead "$dir/profile.yaml" sbc2
    local ready; ready=$(since "$killed")
    sbc=${SYS_PIDS[-1]}
    # The second process's CPU is charged from its start (its start-up is the takeover's).
    cpu0=0; threads0=$(thread_ticks "$sbc" | awk '{print $1, 0}')
    # Taken over: rebuilt on its shard, its media ports bound again and relayed.
    for _ in $(seq 1500); do
      [ "$(metric cluster_calls_taken_over_total)" = "$up" ] \
        && [ "$(metric media_streams)" = "$up" ] && break
      sleep 0.02
    done
    local taken; taken=$(since "$killed")
    echo "takeover: $up calls up; killed; started again and ready after ${ready} s; $(metric cluster_calls_taken_over_total) calls taken over and $(metric media_streams) streams relayed after ${taken} s"
  fi
  wait "$uac" || true
  wait "$uas" || true
  sleep "$SETTLE"
  local cpu redis
  cpu=$(( $(tree_ticks "$sbc") - cpu0 )); redis=$(( $(tree_ticks "$REDIS_PID") - redis0 ))
  threads1=$(thread_ticks "$sbc")
  local ok failed writes
  local stats; stats=$(ls "$dir"/*_.csv 2>/dev/null | head -1 || true)
  [ -n "$stats" ] || { echo "no SIPp statistics in $dir:"; tail -5 "$dir/uac.out"; exit 1; }
  ok=$(stat_column "$stats" "SuccessfulCall(C)")
  failed=$(stat_column "$stats" "FailedCall(C)")
  writes=$(metric cluster_state_writes_total)
  stop_system
  awk -v sys="$SYS" -v c="$CALLS" -v ok="$ok" -v f="$failed" -v cpu="$cpu" -v r="$redis" \
    -v hz="$HZ" -v w="${writes:--}" -v k="$2" 'BEGIN {
      printf "%-10s %6d %6d %6d %12.2f %14.2f %8s%s\n", (sys ~ /-0-0$/ ? "local" : "cluster"), c, ok, f,
        cpu / hz * 1000 / c, r / hz * 1000 / c, w, (k == 1 ? "  (killed and started again: CPU of the second process)" : "")
    }'
  threads_per_1k "$threads0" "$threads1" "$CALLS"
}

echo "$CALLS calls at $RATE/s, held $HOLD s, then a re-INVITE and a BYE from the caller (release build, media anchored, sync_ms $SYNC_MS, $(nproc) cores)"
printf '%-10s %6s %6s %6s %12s %14s %8s\n' state calls ok failed "CPU s/1000" "redis CPU s/1000" writes
for r in $RUNS; do
  case "$r" in
    local) run 0 0 ;;
    cluster) run 1 0 ;;
    takeover) run 1 1 ;;
    *) echo "RUNS: local, cluster, takeover"; exit 2 ;;
  esac
done
echo "logs: $WORK"
