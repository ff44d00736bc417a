#!/usr/bin/env bash
# Refresh the browser shell's vendored JavaScript from the npm registry (npm pack: no install, no
# build): xterm.js + its fit addon, and noble-ed25519 (Ed25519 point arithmetic for the page's SPAKE2).
# Usage: scripts/refresh-xterm.sh [XTERM_VERSION] [FIT_VERSION] [NOBLE_VERSION]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/beacon/web_static/vendor"
XTERM="${1:-6.0.0}" FIT="${2:-0.11.0}" NOBLE="${3:-3.2.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "@xterm/xterm@$XTERM" "@xterm/addon-fit@$FIT" "@noble/ed25519@$NOBLE" >/dev/null
for f in *.tgz; do mkdir "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
mkdir -p "$DEST"
cp "xterm-xterm-$XTERM/package/lib/xterm.mjs" "$DEST/xterm.mjs"
cp "xterm-xterm-$XTERM/package/css/xterm.css" "$DEST/xterm.css"
cp "xterm-xterm-$XTERM/package/LICENSE" "$DEST/LICENSE.xterm"
cp "xterm-addon-fit-$FIT/package/lib/addon-fit.mjs" "$DEST/addon-fit.mjs"
cp "xterm-addon-fit-$FIT/package/LICENSE" "$DEST/LICENSE.addon-fit"
cp "noble-ed25519-$NOBLE/package/index.js" "$DEST/noble-ed25519.js"
cp "noble-ed25519-$NOBLE/package/LICENSE" "$DEST/LICENSE.noble-ed25519"
# sourcemap references point at files we do not ship
sed -i '/^\/\/# sourceMappingURL=/d' "$DEST/xterm.mjs" "$DEST/addon-fit.mjs"
printf '@xterm/xterm %s\n@xterm/addon-fit %s\n@noble/ed25519 %s\n' "$XTERM" "$FIT" "$NOBLE" > "$DEST/VERSIONS"
echo "vendored into $DEST:"; cat "$DEST/VERSIONS"
