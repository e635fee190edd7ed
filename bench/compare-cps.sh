#!/usr/bin/env bash
# Calls per second and CPU per call: Bridgehead beside Kamailio, one SIPp UAC/UAS pair on loopback
# at rising call rates, through four systems in turn:
#
#   a  Kamailio, stateful proxy (tm, rr, sl, maxfwd, textops, siputils, KEMI Lua) doing the header
#      work of scripts/default.lua (bench/kamailio/kamailio.cfg + bench/kamailio/default.lua)
#   b  a + rtpengine (userspace, --table=-1), media anchored: rtpengine_manage() on requests and
#      on replies with SDP
#   c  Bridgehead, no media anchoring (two trunks, no media section)
#   d  Bridgehead on profiles/default.yaml as it is (udp+tcp listeners, media anchored) on free
#      ports
#   e  two Bridgeheads in a row (c's rules, no media), SIP over TLS between them (certificates
#      made with openssl for the run; one TLS connection, reused): the cost of TLS per call is
#      e against f. Also measured for e: how many TLS handshakes per second the second
#      Bridgehead's TLS listener completes (`openssl s_time -new`, 5 s)
#   f  e with TCP between them (not in the default SYSTEMS)
#   g  c with everything one sees it run by on: the admin server (its /metrics scraped every
#      second, the dashboard's ladders of recent calls kept), CDRs to a file, and every SIP
#      message as HEP3 to a UDP collector (a Python sink; its CPU is not charged): the
#      observability overhead is g against c (not in the default SYSTEMS)
#
# Per system and rate it prints the calls attempted, succeeded and failed, the achieved rate,
# the UAC's retransmissions, the UDP datagrams the kernel dropped (RcvbufErrors, all sockets),
# the system's CPU while the calls ran (100 % = one core) and its CPU seconds per 1,000 calls:
# utime+stime from /proc/PID/stat of every process of the system (the Kamailio main process and
# all its children, the rtpengine daemon, the bridgehead process), from the start of the step until
# SETTLE seconds after its last call (Kamailio frees transactions 5 s after they end, so the
# work a step leaves behind is charged to that step). At the end: the CPU per 1,000 calls side
# by side and the ratios c/a, d/a and d/b at the highest rate where both systems had 0 failed
# calls and held the rate (achieved at least 80 % of it).
#
#   bench/compare-cps.sh [RATE ...]          default rates: 1000 2000 3000 4000 5000 6000
#   SECONDS_PER_RATE=5                       calls per step = rate x SECONDS_PER_RATE
#   HEAVY=1                                  "heavy rules" on both: bench/heavy.lua for
#                                            Bridgehead, bench/kamailio/heavy.lua for Kamailio
#                                            (20 header edits, an SDP codec filter, a regex)
#   SYSTEMS="a b c d"                        which systems, in that order (also e, f)
#   FLOW=plain                               the call flow: plain (tests/sipp/caller.xml,
#                                            callee.xml) or 100rel (caller_100rel.xml,
#                                            callee_reliable.xml: the caller requires 100rel,
#                                            the callee rings reliably, both 180s PRACKed,
#                                            the answer 300 ms after the PRACK; for c and d)
#   KAMAILIO_WORKERS=1                       UDP workers per Kamailio listen socket (2 sockets,
#                                            so 2 workers for 2 cores). With more, two workers
#                                            of one socket relay a 180 and the 200 right behind
#                                            it out of order now and then, which SIPp counts as
#                                            a failed call; with one, b is limited by the
#                                            workers waiting for rtpengine's ng replies
#   RTPENGINE_THREADS=2                      rtpengine --num-threads
#   MEDIA_PORTS=20000-29999                  Bridgehead's media ports for d
#   SETTLE=5                                 seconds of CPU still charged after a step's last call
#   TRACE=1                                  the UAS writes every message it gets (uas_msg.log in
#                                            the step's directory): check the SDP, the headers
#   SHARDS=0                                 Bridgehead's shards (0: one per core)
#   OBSERVE="admin cdr hep"                  what g turns on: the admin server (scraped every
#                                            second, with the recent-call ladders), CDRs to a
#                                            file, HEP3 capture
#   PERF=1                                   perf records Bridgehead (c, d, g) while the calls run
#                                            and prints its top entries (perf.data in the step's
#                                            directory; needs linux-perf)
#
# Installs sip-tester, kamailio, kamailio-lua-modules and rtpengine-daemon with apt-get when
# missing (as root; no service is started, or it is stopped). Kamailio and rtpengine run in the
# foreground with their runtime files in a mktemp directory, never as the system services.
# Everything is on 127.0.0.1, on free ports. Every step is bounded (calls and a SIPp -timeout);
# every process started here is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(1000 2000 3000 4000 5000 6000)
SECONDS_PER_RATE=${SECONDS_PER_RATE:-5}
HEAVY=${HEAVY:-0}
FLOW=${FLOW:-plain}
case "$FLOW" in
  plain) CALLER=caller.xml; CALLEE=callee.xml; FLOW_TEXT="INVITE/100/180/200 SDP/ACK/BYE/200" ;;
  100rel) CALLER=caller_100rel.xml; CALLEE=callee_reliable.xml
          FLOW_TEXT="INVITE Require:100rel/100/reliable 180/PRACK/200/200 SDP/ACK/BYE/200, both legs PRACKed" ;;
  *) echo "FLOW is plain or 100rel"; exit 2 ;;
esac
SYSTEMS=${SYSTEMS:-"a b c d"}
KAMAILIO_WORKERS=${KAMAILIO_WORKERS:-1}
RTPENGINE_THREADS=${RTPENGINE_THREADS:-2}
MEDIA_PORTS=${MEDIA_PORTS:-20000-29999}
SETTLE=${SETTLE:-5}
TRACE=${TRACE:-0}
PERF=${PERF:-0}
SHARDS=${SHARDS:-0}
RTPENGINE_PORTS=30000-39999

# --- what this needs -----------------------------------------------------------------------
NEED=()
command -v sipp >/dev/null || NEED+=(sip-tester)
[[ " $SYSTEMS " =~ \ [ab]\  ]] && { command -v kamailio >/dev/null || NEED+=(kamailio); }
KAMAILIO_MODULES=$(kamailio_modules)
[[ " $SYSTEMS " =~ \ [ab]\  ]] && { [ -e "$KAMAILIO_MODULES/app_lua.so" ] || NEED+=(kamailio-lua-modules); }
[[ " $SYSTEMS " =~ \ b\  ]] && { command -v rtpengine >/dev/null || NEED+=(rtpengine-daemon); }
install_missing "${NEED[@]}"

BRIDGEHEAD=${CARGO_TARGET_DIR:-$PWD/target}/release/bridgehead
if [[ " $SYSTEMS " =~ \ [cdefg]\  ]]; then cargo build --release --quiet; fi

WORK=$(mktemp -d /tmp/bridgehead-compare-cps.XXXXXX)
FREE_PORT_AVOID="$RTPENGINE_PORTS $MEDIA_PORTS"
CORE=$(free_port); TEAMS=$(free_port); SOFTSWITCH=$(free_port); TEAMS_PEER=$(free_port)
UAC=$(free_port); NG=$(free_port); MID1=$(free_port); MID2=$(free_port)
ADMIN=$(free_port); HEP=$(free_port)
# Bigger socket buffers when allowed (root); harmless otherwise.
sysctl -qw net.core.rmem_max=8388608 net.core.wmem_max=8388608 2>/dev/null || true

if [ "$HEAVY" = 1 ]; then
  BH_SCRIPT=$PWD/bench/heavy.lua; KAM_HEAVY=(-A "BENCH_HEAVY_LUA=\"$PWD/bench/kamailio/heavy.lua\""); RULES="heavy rules"
else
  BH_SCRIPT=$PWD/scripts/default.lua; KAM_HEAVY=(); RULES="default rules"
fi

# c: two trunks, no media section.
{ echo "shards: $SHARDS"; two_trunks "$BH_SCRIPT"; } > "$WORK/profile-c.yaml"
# g: c with the admin server, CDRs and HEP capture (those OBSERVE names).
OBSERVE=${OBSERVE:-admin cdr hep}
{ cat "$WORK/profile-c.yaml"
  [[ " $OBSERVE " != *" admin "* ]] || printf 'admin:\n  address: 127.0.0.1:%s\n' "$ADMIN"
  [[ " $OBSERVE " != *" cdr "* ]] || printf 'cdr:\n  path: %s/cdr.jsonl\n' "$WORK"
  [[ " $OBSERVE " != *" hep "* ]] || printf 'capture:\n  hep:\n    address: 127.0.0.1:%s\n' "$HEP"
} > "$WORK/profile-g.yaml"
# e, f: two Bridgeheads in a row, $1 (tls or tcp) between them.
if [[ " $SYSTEMS " =~ \ [ef]\  ]]; then
  C="$WORK/certs"; mkdir -p "$C"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$C/ca.key" \
    -out "$C/ca.pem" -days 2 -subj "/CN=bench CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$C/sbc.key" \
    -out "$C/sbc.csr" -subj "/CN=mid.bench.test" 2>/dev/null
  printf 'subjectAltName=DNS:mid.bench.test\nbasicConstraints=CA:FALSE\n' > "$C/ext"
  openssl x509 -req -in "$C/sbc.csr" -CA "$C/ca.pem" -CAkey "$C/ca.key" -CAcreateserial \
    -out "$C/sbc.pem" -days 2 -extfile "$C/ext" 2>/dev/null
fi
pair_profiles() {  # $1: tls or tcp; writes profile-$SYS-1.yaml (front) and -2 (back)
  local tls_listener="" tls_trunk=""
  if [ "$1" = tls ]; then
    tls_listener="    tls: { certificate: $C/sbc.pem, key: $C/sbc.key }"
    tls_trunk="    tls: { server_name: mid.bench.test, ca: $C/ca.pem }"
  fi
  cat > "$WORK/profile-$SYS-1.yaml" <<EOF
shards: $SHARDS
listeners:
  - name: core
    address: 127.0.0.1:$CORE
  - name: mid
    address: 127.0.0.1:$MID1
    transports: [udp, $1]
$tls_listener
trunks:
  - name: core
    listener: core
    peers: ["127.0.0.1:$SOFTSWITCH"]
    script: $BH_SCRIPT
    route: mid
  - name: mid
    listener: mid
    transport: $1
    peers: ["127.0.0.1:$MID2"]
$tls_trunk
    script: $BH_SCRIPT
    route: core
EOF
  cat > "$WORK/profile-$SYS-2.yaml" <<EOF
shards: $SHARDS
listeners:
  - name: mid
    address: 127.0.0.1:$MID2
    transports: [udp, $1]
$tls_listener
  - name: teams
    address: 127.0.0.1:$TEAMS
trunks:
  - name: mid
    listener: mid
    transport: $1
    peers: ["127.0.0.1:$MID1"]
$tls_trunk
    script: $BH_SCRIPT
    route: teams
  - name: teams
    listener: teams
    peers: ["127.0.0.1:$TEAMS_PEER"]
    script: $BH_SCRIPT
    route: mid
EOF
}

# d: profiles/default.yaml itself, its ports and script path replaced.
sed -e "s/127\.0\.0\.1:5060/127.0.0.1:$CORE/; s/127\.0\.0\.1:5070/127.0.0.1:$TEAMS/" \
    -e "s/127\.0\.0\.1:5090/127.0.0.1:$SOFTSWITCH/; s/127\.0\.0\.1:5080/127.0.0.1:$TEAMS_PEER/" \
    -e "s|^\(  ports:\) 20000-29999|\1 $MEDIA_PORTS|" \
    -e "s|script: \.\./scripts/default\.lua|script: $BH_SCRIPT|" \
    profiles/default.yaml > "$WORK/profile-d.yaml"
sed -i "1i shards: $SHARDS" "$WORK/profile-d.yaml"
grep -q "ports: $MEDIA_PORTS" "$WORK/profile-d.yaml" && grep -q "127.0.0.1:$TEAMS_PEER" "$WORK/profile-d.yaml" \
  || { echo "profiles/default.yaml changed shape; cannot derive profile d" >&2; exit 1; }

# --- processes and CPU -----------------------------------------------------------------------
start_pair() {  # $1: tls or tcp
  pair_profiles "$1"
  start_bridgehead "$WORK/profile-$SYS-2.yaml" back
  start_bridgehead "$WORK/profile-$SYS-1.yaml" front
}
# TLS handshakes per second the back Bridgehead's TLS listener completes (new sessions only).
handshake_rate() {
  timeout 20 openssl s_time -connect "127.0.0.1:$MID2" -new -time 5 -CAfile "$C/ca.pem" \
    2>/dev/null | awk '/connections in [0-9.]+s;/ {sub(/;$/, "", $4); print $1 " handshakes in " $4 ", " $5 " per second"; exit}'
}
start_system() {
  case "$SYS" in
    a) start_kamailio 0 ;;
    b) start_kamailio 1 ;;
    c) start_bridgehead "$WORK/profile-c.yaml" ;;
    d) start_bridgehead "$WORK/profile-d.yaml" ;;
    e) start_pair tls ;;
    f) start_pair tcp ;;
    g) start_bridgehead "$WORK/profile-g.yaml"; start_observers ;;
  esac
}
# For g: a HEP collector that reads and drops, and a Prometheus stand-in scraping every second
# (neither is part of the system: their CPU is not charged to it). The collector drains its
# socket every 20 ms rather than waiting on it: woken for each packet it took a third of a
# core from the two the system and SIPp share.
start_observers() {
  python3 -c "
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8388608)
s.bind(('127.0.0.1', $HEP))
s.setblocking(False)
while True:
    time.sleep(0.02)
    try:
        while True: s.recv(65536)
    except BlockingIOError:
        pass" &
  PIDS+=($!)
  [[ " $OBSERVE " == *" admin "* ]] || return 0
  (while :; do
     exec 3<>"/dev/tcp/127.0.0.1/$ADMIN" && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3 >/dev/null
     exec 3<&-; sleep 1
   done) 2>/dev/null &
  PIDS+=($!)
}
describe() {
  case "$1" in
    a) echo "a: Kamailio $(kamailio -v 2>/dev/null | sed -n 's/^version: kamailio \([^ ]*\).*/\1/p') stateful proxy, KEMI Lua default.lua${KAM_HEAVY:+ + heavy.lua}, 2 UDP sockets x $KAMAILIO_WORKERS worker(s)" ;;
    b) echo "b: a + rtpengine $(rtpengine --version 2>&1 | awk '{print $NF; exit}') userspace (--table=-1, --delete-delay=0, $RTPENGINE_THREADS threads, ports $RTPENGINE_PORTS)" ;;
    c) echo "c: Bridgehead $(git rev-parse --short HEAD 2>/dev/null), no media anchoring (a profile without media), $(basename "$BH_SCRIPT")" ;;
    d) echo "d: Bridgehead $(git rev-parse --short HEAD 2>/dev/null), profiles/default.yaml layout, media anchored (ports $MEDIA_PORTS), $(basename "$BH_SCRIPT")" ;;
    e) echo "e: two Bridgeheads $(git rev-parse --short HEAD 2>/dev/null) in a row, SIP over TLS between them (one connection, ECDSA P-256), no media, $(basename "$BH_SCRIPT")" ;;
    f) echo "f: e with TCP between them" ;;
    g) echo "g: c + observability ($OBSERVE): admin server (/metrics scraped every second, recent-call ladders), CDRs to a file, HEP3 of every SIP message" ;;
  esac
}

HZ=$(getconf CLK_TCK)
declare -A OKS FAILS CPUK ACH
echo "compare-cps: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $RULES"
echo "SIPp $(sipp -v 2>&1 | sed -n 's/.*SIPp \(v[^ ,]*[^ ,.]\).*/\1/p' | head -1) UAC/UAS (tests/sipp/$CALLER, $CALLEE: $FLOW_TEXT, -d 0), $SECONDS_PER_RATE s of calls per rate, CPU charged until $SETTLE s after"
for SYS in $SYSTEMS; do
  echo
  describe "$SYS"
  start_system
  C0=$(tree_ticks "${SYS_PIDS[@]}"); sleep 2; C1=$(tree_ticks "${SYS_PIDS[@]}")
  echo "   idle: $(awk -v c="$((C1 - C0))" -v hz="$HZ" 'BEGIN {printf "%.1f%%", 100 * c / hz / 2}') of a core"
  [ "$SYS" != e ] || echo "   TLS listener: $(handshake_rate)"
  printf '%3s %6s %7s %7s %6s %8s %8s %6s %7s %13s\n' sys rate calls ok failed "calls/s" retrans drops "cpu" "cpu s/1k call"
  for RATE in "${RATES[@]}"; do
    CALLS=$((RATE * SECONDS_PER_RATE))
    STEP="$WORK/$SYS/$RATE"; mkdir -p "$STEP"
    # The UAS may take more calls than sent: an INVITE retransmitted by the SBC after the UAS
    # ended that call counts as a new one. With -m CALLS it would then stop before the last real
    # calls came; it is stopped here once the UAC is done instead (-timeout bounds it too).
    sipp -sf "tests/sipp/$CALLEE" -i 127.0.0.1 -p "$TEAMS_PEER" -m $((CALLS * 2)) -nostdin -bg \
         $([ "$TRACE" != 1 ] || echo "-trace_msg -message_file $STEP/uas_msg.log") -buff_size 4194304 -timeout $((SECONDS_PER_RATE * 4 + 30))s > "$STEP/uas.out" 2>&1 || true
    UAS_PID=$(sed -n 's/.*PID=\[\([0-9]*\)\].*/\1/p' "$STEP/uas.out")
    [ -n "$UAS_PID" ] || { echo "SIPp UAS did not start:"; cat "$STEP/uas.out"; exit 1; }
    PIDS+=("$UAS_PID")
    PERF_PID=
    if [ "$PERF" = 1 ] && [[ "$SYS" == [cdg] ]]; then
      perf record -q -F 999 -g -p "${SYS_PIDS[0]}" -o "$STEP/perf.data" > "$STEP/perf.out" 2>&1 &
      PERF_PID=$!; PIDS+=("$PERF_PID")
    fi
    D0=$(udp_drops); T0=$(date +%s.%N); C0=$(tree_ticks "${SYS_PIDS[@]}"); R0=$(tree_ticks "${SYS_PIDS[0]}")
    [ "$SYS" != g ] || THREADS0=$(thread_ticks "${SYS_PIDS[0]}")
    (cd "$STEP" && sipp -sf "$OLDPWD/tests/sipp/$CALLER" "127.0.0.1:$CORE" -i 127.0.0.1 -p "$UAC" \
         -m "$CALLS" -r "$RATE" -d 0 -nostdin -buff_size 4194304 \
         -timeout $((SECONDS_PER_RATE * 4 + 20))s -timeout_error \
         -trace_stat -stf stat.csv -fd 1 > uac.out 2>&1) || true
    T1=$(date +%s.%N); CM=$(tree_ticks "${SYS_PIDS[@]}")
    if [ -n "$PERF_PID" ]; then
      kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true
    fi
    sleep 0.5   # the UAS's last timewait
    kill "$UAS_PID" 2>/dev/null || true
    sleep "$SETTLE"
    T2=$(date +%s.%N); C1=$(tree_ticks "${SYS_PIDS[@]}"); R1=$(tree_ticks "${SYS_PIDS[0]}")
    [ "$SYS" != g ] || THREADS1=$(thread_ticks "${SYS_PIDS[0]}")
    DROPS=$(( $(udp_drops) - D0 ))
    OK=$(stat_column "$STEP/stat.csv" "SuccessfulCall(C)")
    FAILED=$(stat_column "$STEP/stat.csv" "FailedCall(C)")
    [ -n "$OK" ] || OK=0; [ -n "$FAILED" ] || FAILED=0
    [ "$FAILED" -ge $((CALLS - OK)) ] || FAILED=$((CALLS - OK))   # calls never finished fail too
    ACHIEVED=$(awk -v n="$OK" -v a="$T0" -v b="$T1" 'BEGIN {printf "%.0f", n / (b - a)}')
    # CPU while the calls ran, as a share of one core (the settle time is left out of this one).
    CPU=$(awk -v c="$((CM - C0))" -v hz="$HZ" -v a="$T0" -v b="$T1" 'BEGIN {printf "%.0f%%", 100 * c / hz / (b - a)}')
    PER1K=$(awk -v c="$((C1 - C0))" -v hz="$HZ" -v n="$OK" 'BEGIN {if (n > 0) printf "%.3f", c / hz / n * 1000; else print "-"}')
    RETRANS=$(stat_column "$STEP/stat.csv" "Retransmissions(C)")
    SHARE=
    [ "$SYS" != b ] || SHARE=$(awk -v r="$((R1 - R0))" -v c="$((C1 - C0))" 'BEGIN {if (c > 0) printf "  (rtpengine %.0f%%)", 100 * r / c}')
    printf '%3s %6s %7s %7s %6s %8s %8s %6s %7s %13s%s\n' "$SYS" "$RATE" "$CALLS" "$OK" "$FAILED" "$ACHIEVED" "${RETRANS:--}" "$DROPS" "$CPU" "$PER1K" "$SHARE"
    # For g, where the CPU went: per thread kind, s per 1,000 calls.
    [ "$SYS" != g ] || threads_per_1k "$THREADS0" "$THREADS1" "$OK"
    if [ -n "$PERF_PID" ]; then
      perf report -i "$STEP/perf.data" --no-children --percent-limit 1.5 --stdio 2>/dev/null \
        | awk '/^ +[0-9.]+%/ {printf "      perf %7s  %-14s %s\n", $1, $3, substr($0, index($0, $5))}' | head -20
    fi
    OKS[$SYS,$RATE]=$OK; FAILS[$SYS,$RATE]=$FAILED; CPUK[$SYS,$RATE]=$PER1K; ACH[$SYS,$RATE]=$ACHIEVED
    for pid in "${SYS_PIDS[@]}"; do
      alive "$pid" || { echo "system $SYS died (logs in $WORK/$SYS)"; exit 1; }
    done
  done
  stop_system
done

# A rate counts for a system when every call succeeded and the rate was held (80 %: the achieved
# rate also counts SIPp's start and the last call, which weigh on short steps): a system that took
# all calls only by falling behind (retransmissions) is not compared there.
clean() { [ "${FAILS[$1,$2]:-x}" = 0 ] && [ "${OKS[$1,$2]:-0}" = "$(($2 * SECONDS_PER_RATE))" ]; }
held() { clean "$1" "$2" && [ "${ACH[$1,$2]:-0}" -ge $(($2 * 8 / 10)) ]; }
echo
echo "CPU seconds per 1,000 calls ($RULES; * = failed calls at that rate, < = under 80 % of the rate achieved)"
printf '%6s' rate; for SYS in $SYSTEMS; do printf ' %10s' "$SYS"; done; echo
for RATE in "${RATES[@]}"; do
  printf '%6s' "$RATE"
  for SYS in $SYSTEMS; do
    mark=; clean "$SYS" "$RATE" || mark='*'
    [ "${ACH[$SYS,$RATE]:-0}" -ge $((RATE * 8 / 10)) ] || mark="$mark<"
    printf ' %10s' "${CPUK[$SYS,$RATE]:--}$mark"
  done
  echo
done
for PAIR in c/a d/a d/b e/f g/c; do
  X=${PAIR%/*}; Y=${PAIR#*/}
  [[ " $SYSTEMS " == *" $X "* && " $SYSTEMS " == *" $Y "* ]] || continue
  AT=
  for RATE in "${RATES[@]}"; do held "$X" "$RATE" && held "$Y" "$RATE" && AT=$RATE; done
  if [ -n "$AT" ]; then
    awk -v p="$PAIR" -v r="$AT" -v x="${CPUK[$X,$AT]}" -v y="${CPUK[$Y,$AT]}" \
      'BEGIN {printf "%s = %.2f  (CPU per call at %s calls/s, the highest rate both held with 0 failed calls: %s vs %s s/1k)\n", p, x / y, r, x, y}'
  else
    echo "$PAIR: no rate that both held with 0 failed calls"
  fi
done
echo "(logs and SIPp statistics in $WORK)"
