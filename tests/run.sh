#!/usr/bin/env bash
# Runs Bridgehead's whole test suite on a fresh machine: installs the far ends when they are
# missing, then unit, engine, torture-corpus and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# The far ends the end-to-end tests run: SIPp (sip-tester), baresip (baresip-core, an SRTP
# peer in a network namespace made with iproute2's `ip netns`), openssl's s_client (an old
# TLS 1.1 client), dnsmasq (the DNS server of the peers-by-name test), sngrep (a HEP
# collector that decodes Bridgehead's SIP capture), headless Chromium (the dashboard test) and
# redis-server (the cluster's shared state; the failover test runs two instances, Redis and
# SIPp in network namespaces of its own).
missing=()
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
command -v baresip >/dev/null 2>&1 || missing+=(baresip-core)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
command -v sngrep >/dev/null 2>&1 || missing+=(sngrep)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1 \
  || missing+=(chromium-headless-shell)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}..."
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
exec cargo test --all-targets "$@"
