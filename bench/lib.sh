# What the bench scripts share (sourced by bench/compare-cps.sh and bench/overload.sh): packages,
# free ports, the systems under test (Kamailio with or without rtpengine, Bridgehead), their CPU,
# and SIPp's statistics. Functions read the caller's globals: WORK (the run's directory), SYS
# (the system's name), PIDS (every process started, stopped on exit), SYS_PIDS (the running
# system's), and for Kamailio CORE, TEAMS, SOFTSWITCH, TEAMS_PEER, NG, KAMAILIO_WORKERS,
# KAMAILIO_MODULES, KAM_HEAVY, RTPENGINE_PORTS, RTPENGINE_THREADS.

PIDS=()
SYS_PIDS=()   # the processes of the running system (roots; children are found at each reading)
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# Where Kamailio's modules are (empty when it is not installed).
kamailio_modules() { ls -d /usr/lib/*/kamailio/modules 2>/dev/null | head -1 || true; }

# Installs the Debian packages given with apt-get (as root) when any is given; no service is
# started, or it is stopped.
install_missing() {
  [ $# -gt 0 ] || return 0
  local NEED=("$@")
  [ "$(id -u)" = 0 ] || { echo "missing ${NEED[*]}: run as root, or apt-get install them" >&2; exit 2; }
  echo "installing ${NEED[*]}" >&2
  # No service may start on install: a policy-rc.d that refuses, only for the time of the install.
  POLICY_ADDED=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    POLICY_ADDED=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${NEED[@]}" >&2 \
    || { apt-get update -q >&2 && apt-get install -y --no-install-recommends "${NEED[@]}" >&2; }
  [ -z "$POLICY_ADDED" ] || rm -f /usr/sbin/policy-rc.d
  # Should a service have started all the same (a policy-rc.d of our own was not needed, or
  # the init system ignored it), stop it.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    for svc in kamailio rtpengine-daemon; do
      systemctl is-active --quiet "$svc" 2>/dev/null && systemctl stop "$svc" || true
    done
  fi
  KAMAILIO_MODULES=$(kamailio_modules)
}

# A free port (TCP and UDP) outside the port ranges in FREE_PORT_AVOID ("LO-HI LO-HI"): rtpengine
# binds its media ports with SO_REUSEADDR, like Kamailio its SIP sockets, so a media port equal to
# a SIP port silently takes that port's packets.
free_port() {
  python3 - ${FREE_PORT_AVOID:-} <<'EOF'
import socket, sys
ranges = [tuple(int(x) for x in r.split("-")) for r in sys.argv[1:]]
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try: u.bind(("127.0.0.1", port))
    except OSError: continue
    if not any(lo <= port <= hi for lo, hi in ranges):
        print(port); break
EOF
}
# Whether process $1 runs (a zombie, a child that died and was not reaped yet, does not).
alive() { [ -r "/proc/$1/stat" ] && [ "$(awk '{sub(/^.*\) /, ""); print $1}' "/proc/$1/stat")" != Z ]; }
udp_bound() {  # is something listening on 127.0.0.1:$1/udp?
  awk -v p="$(printf '0100007F:%04X' "$1")" '$2 == p {f=1} END {exit !f}' /proc/net/udp
}
rtpengine_pong() {
  python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
s.sendto(b"1 d7:command4:pinge", ("127.0.0.1", int(sys.argv[1])))
try: sys.exit(0 if b"pong" in s.recv(100) else 1)
except OSError: sys.exit(1)
EOF
}
# utime+stime (ticks) of each PID given and of all its children, summed.
tree_ticks() {
  local pids=() root
  for root in "$@"; do pids+=("$root"); pids+=($(pgrep -P "$root" || true)); done
  local p total=0 t
  for p in "${pids[@]}"; do
    t=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}

stop_system() {
  local pid
  for pid in "${SYS_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${SYS_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  SYS_PIDS=()
}
start_kamailio() {  # $1: with rtpengine (1) or not (0)
  local dir="$WORK/$SYS" args=()
  mkdir -p "$dir/run"
  if [ "$1" = 1 ]; then
    rtpengine --config-file=none --foreground --pidfile="$dir/rtpengine.pid" --table=-1 \
      --interface=127.0.0.1 --listen-ng="127.0.0.1:$NG" --port-min="${RTPENGINE_PORTS%-*}" \
      --port-max="${RTPENGINE_PORTS#*-}" --delete-delay=0 --num-threads="$RTPENGINE_THREADS" \
      --log-stderr --log-level=4 > "$dir/rtpengine.log" 2>&1 &
    SYS_PIDS+=($!); PIDS+=($!)
    for _ in $(seq 50); do rtpengine_pong "$NG" && break; sleep 0.1; done
    rtpengine_pong "$NG" || { echo "rtpengine did not start:"; cat "$dir/rtpengine.log"; exit 1; }
    args=(-A WITH_RTPENGINE -A "RTPENGINE_SOCK=\"udp:127.0.0.1:$NG\"")
  fi
  BENCH_CORE_PORT=$CORE BENCH_TEAMS_PORT=$TEAMS BENCH_CORE_PEER=127.0.0.1:$SOFTSWITCH \
  BENCH_TEAMS_PEER=127.0.0.1:$TEAMS_PEER BENCH_RTPENGINE=$1 \
    kamailio -DD -E -f "$PWD/bench/kamailio/kamailio.cfg" -L "$KAMAILIO_MODULES" \
      -A "BENCH_LUA=\"$PWD/bench/kamailio/default.lua\"" "${KAM_HEAVY[@]}" "${args[@]}" \
      -l "udp:127.0.0.1:$CORE" -l "udp:127.0.0.1:$TEAMS" -n "$KAMAILIO_WORKERS" -m 512 -M 16 \
      -Y "$dir/run" -P "$dir/kamailio.pid" -w "$dir" > "$dir/kamailio.log" 2>&1 &
  SYS_PIDS+=($!); PIDS+=($!)
  for _ in $(seq 100); do udp_bound "$CORE" && udp_bound "$TEAMS" && [ -s "$dir/kamailio.pid" ] && break; sleep 0.05; done
  sleep 0.5   # the children finish their init after the sockets are bound
  udp_bound "$CORE" && kill -0 "${SYS_PIDS[-1]}" 2>/dev/null \
    || { echo "kamailio did not start:"; cat "$dir/kamailio.log"; exit 1; }
}
start_bridgehead() {  # $1: profile, $2: its log's name (default sbc)
  local dir="$WORK/$SYS" log="${2:-sbc}"
  mkdir -p "$dir"
  RUST_LOG=info "$BRIDGEHEAD" run --profile "$1" 2> "$dir/$log.log" &
  SYS_PIDS+=($!); PIDS+=($!)
  for _ in $(seq 100); do grep -q ready "$dir/$log.log" 2>/dev/null && break; sleep 0.05; done
  grep -q ready "$dir/$log.log" || { echo "bridgehead did not start:"; cat "$dir/$log.log"; exit 1; }
}
# UDP datagrams the kernel dropped for a full receive buffer, all sockets (loopback drops).
udp_drops() { awk '/^Udp:/ {if (!h) {for (i=1;i<=NF;i++) if ($i=="RcvbufErrors") c=i; h=1} else print $c}' /proc/net/snmp; }
# The last row of a SIPp statistics file, column by name.
stat_column() { awk -F';' -v name="$2" 'NR==1 {for (i=1;i<=NF;i++) if ($i==name) c=i} END {print $c}' "$1"; }


# The listeners and trunks of a Bridgehead profile with two trunks (core <-> teams, UDP, no
# media) running script $1, on CORE, TEAMS, SOFTSWITCH and TEAMS_PEER.
two_trunks() {
  cat <<EOF
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
    script: $1
    route: teams
  - name: teams
    listener: teams
    peers: ["127.0.0.1:$TEAMS_PEER"]
    script: $1
    route: core
EOF
}

# CPU ticks of a process's threads, summed by kind (the name without a trailing -N: shard-0
# and shard-1 are "shard"), one "kind ticks" line each.
thread_ticks() {
  for t in /proc/"$1"/task/*; do
    printf '%s %s\n' "$(sed 's/-[0-9]*$//; s/ /_/g' "$t/comm" 2>/dev/null)" \
      "$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "$t/stat" 2>/dev/null)"
  done | awk 'NF == 2 {s[$1] += $2} END {for (k in s) print k, s[k]}'
}
# Where the CPU went between two thread_ticks readings ($1, $2) for $3 calls: one line, CPU
# seconds per 1,000 calls by thread kind (HZ: the clock ticks a second).
threads_per_1k() {
  printf '%s\n%s\n' "$1" "$2" | awk -v hz="$HZ" -v n="$3" '
    { if (seen[$1]++) d[$1] = $2 - first[$1]; else first[$1] = $2 }
    END { line = "      threads (s/1k calls):"; for (k in d) if (n > 0) line = line sprintf(" %s %.3f", k, d[k] / hz / n * 1000); print line }'
}
