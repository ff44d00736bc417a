#!/usr/bin/env bash
# Lint, format check and type check (CI runs them before the tests; any finding fails the run).
# Fix locally with: .venv/bin/ruff check --fix . && .venv/bin/ruff format .
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/_venv.sh" "test,fast"
cd "$ROOT"
echo "lint: ruff check"
"$VENV/bin/ruff" check --no-cache .
echo "lint: ruff format --check"
"$VENV/bin/ruff" format --no-cache --check .
echo "lint: mypy"
"$VENV/bin/python" -m mypy --no-incremental
