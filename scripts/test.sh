#!/usr/bin/env bash
# The whole test suite on a fresh machine: system packages (as root, with apt-get), the venv,
# then lint + format + type checks, then pytest. Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Debian packages the NAT lab, the mDNS and the CLI tests use (real NAT, real avahi, real OpenSSH,
# systemd-analyze for the service units, a real redis-server, miniupnpd for port mapping;
# the browser-shell tests: a real headless Chromium and coturn (TURN relay))
PACKAGES=(nftables iproute2 conntrack iptables tcpdump avahi-daemon avahi-utils dbus openssh-server openssh-client curl systemd tinyproxy redis-server
  chromium chromium-driver coturn miniupnpd-nftables miniupnpc)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
source "$ROOT/scripts/_venv.sh" "test,fast"
cd "$ROOT"
# lint, format and types first: a finding fails the run before any test (DISCRETPEER_NO_LINT=1 skips it locally)
if [ -z "${DISCRETPEER_NO_LINT:-}" ]; then
  "$ROOT/scripts/lint.sh"
fi
# two workers (pytest-xdist, a test file per worker at a time): the suite mostly waits on
# subprocesses and timers, so this halves its wall time; tests marked 'alone' still run by
# themselves (tests/support/workers.py). DISCRETPEER_TEST_WORKERS=0 runs it in one process.
WORKERS="${DISCRETPEER_TEST_WORKERS:-2}"
if [ "$WORKERS" != 0 ]; then
  set -- -n "$WORKERS" --dist loadfile "$@"
fi
exec "$VENV/bin/python" -m pytest "$@"
