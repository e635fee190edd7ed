#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), from a corpus seeded with the
# project's test data: RFC 4475/5118 torture messages, SDP samples, the captures, the profiles
# and replay scenarios, and engine records made of those messages. Stable Rust: cargo fuzz
# with no sanitizer (libFuzzer's coverage and crash detection; panics are crashes).
#   bash fuzz/run.sh [SECONDS] [TARGET...]
# An hour per target: bash fuzz/run.sh 3600
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sip_parse sdp engine yaml pcap)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
data=../tests/data
seed() {
    local target="$1"
    shift
    mkdir -p "corpus/$target"
    for file in "$@"; do
        [ -f "$file" ] && cp "$file" "corpus/$target/seed-$(basename "$file")"
    done
}
seed sip_parse "$data"/rfc4475/*.dat "$data"/rfc5118/*.dat
seed sdp "$data"/sdp/*
seed pcap "$data"/pcap/*.pcap "$data"/pcap/*.pcapng
seed yaml ../profiles/*.yaml ../tests/replay/*.yaml ../tests/replay/media/*.yaml
# Engine records: a message from the core (0) or Teams (1), then a tick (2).
mkdir -p corpus/engine
for file in "$data"/rfc4475/*.dat; do
    python3 - "$file" "corpus/engine/seed-$(basename "$file")" <<'PY'
import struct, sys
body = open(sys.argv[1], 'rb').read()[:65535]
with open(sys.argv[2], 'wb') as out:
    out.write(bytes([0]) + struct.pack('>H', len(body)) + body)
    out.write(bytes([2]) + struct.pack('>H', 40000))
PY
done
cargo fuzz build -s none --release 2>&1 | tail -1
for target in "${targets[@]}"; do
    echo "== $target: ${seconds}s"
    cargo fuzz run -s none --release "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 \
        | grep -E '^(stat::|==|INFO: (Running|Loaded)|#[0-9]+ *DONE)|panicked|ERROR|Done' || true
    # libFuzzer leaves crash-*, timeout-* or oom-* files in artifacts/ on a failure.
    for kind in crash timeout oom leak; do
        if compgen -G "artifacts/$target/$kind-*" >/dev/null; then
            echo "$target: $kind inputs in fuzz/artifacts/$target" >&2
            exit 1
        fi
    done
done
