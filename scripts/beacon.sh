#!/usr/bin/env bash
# Run a beacon with embedded defaults in the current directory (first run creates cert_der.bin,
# certificate_hash.txt, Beacon.conf.toml and logs/ there). Extra arguments go to `python -m beacon`.
set -euo pipefail
here="$(pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" fast
cd "$here"
exec "$VENV/bin/python" -m beacon "$@"
