#!/usr/bin/env bash
# Runs keygate's whole test suite on a fresh machine: installs what the tests need when it is
# missing (a Python venv with the openai SDK), then formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import openai' 2>/dev/null; then
  echo "== creating .venv with the openai SDK"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'openai>=1.40,<3'
fi
export KEYGATE_PYTHON="$PWD/.venv/bin/python"

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== tests"
cargo nextest run --workspace --no-fail-fast
