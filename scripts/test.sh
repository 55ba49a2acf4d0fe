#!/usr/bin/env bash
# Runs keygate's whole test suite on a fresh machine: installs what the tests need when it is
# missing (a Python venv with the openai SDK; promtool from Debian's prometheus package;
# redis-server; chromium, Node.js and playwright-core for the dashboard; the Node openai SDK;
# the deploy/ validators), then formatting, lints and every test.
set -euo pipefail
# A failure inside $(...) stops the script too.
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import openai' 2>/dev/null; then
  echo "== creating .venv with the openai SDK"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'openai>=1.40,<3'
fi
export KEYGATE_PYTHON="$PWD/.venv/bin/python"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# Installs Debian packages (updating the package lists once if they are stale).
apt_install() {
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
}
# Prints the path of a tool taken from a Debian package unpacked into .tools/PACKAGE, not
# installed (so no server of that package is started on this machine): deb_tool PACKAGE PATH.
deb_tool() {
  local package=$1 path=$2 deb
  if [ ! -x ".tools/$package$path" ]; then
    echo "== fetching ${path##*/} from Debian's $package package" >&2
    mkdir -p .tools/deb
    if ! (cd .tools/deb && apt-get download "$package" >/dev/null 2>&1); then
      as_root apt-get update -qq >&2
      (cd .tools/deb && apt-get download "$package") >&2
    fi
    for deb in ".tools/deb/${package}"_*.deb; do :; done   # the last (newest) version
    dpkg -x "$deb" ".tools/$package"
  fi
  [ -x ".tools/$package$path" ] || { echo "$package has no $path" >&2; return 1; }
  echo "$PWD/.tools/$package$path"
}

# promtool: from Debian's prometheus package.
KEYGATE_PROMTOOL=$(command -v promtool || deb_tool prometheus /usr/bin/promtool)
"$KEYGATE_PROMTOOL" --version >/dev/null
export KEYGATE_PROMTOOL

# redis-server: Debian's package, for the tests of limits shared between replicas (each test
# starts its own server on a free loopback port).
if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server (Debian's package)"
  apt_install redis-server
fi
KEYGATE_REDIS_SERVER=$(command -v redis-server)
"$KEYGATE_REDIS_SERVER" --version >/dev/null
export KEYGATE_REDIS_SERVER

# The dashboard tests drive the pages in Debian's headless chromium through playwright-core
# (tests/dashboard/, installed from npm into its node_modules).
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium (Debian's package)"
  apt_install chromium
fi
KEYGATE_CHROMIUM=$(command -v chromium)
export KEYGATE_CHROMIUM
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "== installing nodejs and npm (Debian's packages)"
  apt_install nodejs npm
fi
if [ ! -f tests/dashboard/node_modules/playwright-core/package.json ]; then
  echo "== installing playwright-core into tests/dashboard"
  (cd tests/dashboard && npm install --no-package-lock --no-audit --no-fund --silent)
fi
# The Node SDK test drives keygate with the official openai package (tests/node_sdk/).
if [ ! -f tests/node_sdk/node_modules/openai/package.json ]; then
  echo "== installing the openai SDK into tests/node_sdk"
  (cd tests/node_sdk && npm install --no-package-lock --no-audit --no-fund --silent)
fi

# Validators for deploy/ (hadolint, kubernetes-validate, check-jsonschema, systemd-analyze,
# nginx -t).
# shellcheck source=scripts/deploy-tools.sh
source scripts/deploy-tools.sh

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
