#!/usr/bin/env bash
# Runs Bridgehead's whole test suite on a fresh machine: installs SIPp (Debian sip-tester) when
# it is missing, then unit, engine, torture-corpus and end-to-end SIPp tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v sipp >/dev/null 2>&1; then
  echo "installing SIPp (Debian package sip-tester)..."
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends sip-tester >/dev/null
fi
exec cargo test --all-targets "$@"
