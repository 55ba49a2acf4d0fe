#!/usr/bin/env bash
# keygate with 100,000 keys: the times and memory of every operation an operator runs, on
# the release binary. Times are shown here, never asserted (tests/scale.rs asserts the
# memory and size bounds, which are stable).
#
# Decision informed: whether a platform that gives every customer a key can run keygate as it
# is: check, start, scrape, reload and edit in well under a second each, in a few hundred MB.
# The config has 100,000 keys (34 MB), each with one CIDR, three limits and one scope. The
# gateway and every command bind to 127.0.0.1 only.
# Usage: benches/scale.sh [keys, default 100000]
set -euo pipefail
cd "$(dirname "$0")/.."
keys="${1:-100000}"
cargo build --release -q -p keygate
target_dir="${CARGO_TARGET_DIR:-target}"
case $target_dir in /*) ;; *) target_dir="$(pwd)/$target_dir" ;; esac
bin="$target_dir/release/keygate"
tmp=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
admin=$(free_port)
python3 - "$tmp/keygate.toml" "$keys" "$port" "$admin" <<'PY'
import hashlib, sys
path, n, port, admin = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
out = [f'''[server]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin}"
[upstream]
url = "http://127.0.0.1:9"
api_key_env = "SCALE_UPSTREAM_KEY"
[storage]
path = "keygate.db"
[[models]]
name = "deepseek-chat"
scope = "chat"
input_per_million = 0.28
cached_input_per_million = 0.028
output_per_million = 0.42
''']
for i in range(n):
    h = hashlib.sha256(b"scale-%d" % i).hexdigest()
    out.append(
        f'\n[[keys]]\nid = "key_{i:08d}"\nname = "customer {i}"\nenvironment = "production"\n'
        f'hash = "sha256:{h}"\ncreated = 2026-01-01T00:00:00Z\nscopes = ["chat"]\n'
        f'allowed_ips = ["10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"]\n'
        f'limits = {{ requests_per_minute = 600, tokens_per_minute = 100000, monthly_spend_usd = 50 }}\n'
    )
open(path, "w").write("".join(out))
PY
cfg="$tmp/keygate.toml"
echo "config: $keys keys, $(($(stat -c %s "$cfg") / 1000000)) MB"

# Wall time (s) and peak resident memory (MB) of a command, from the kernel's accounting.
measure() { # label command...
  local label=$1; shift
  python3 - "$label" "$@" <<'PY'
import os, resource, subprocess, sys, time
label, cmd = sys.argv[1], sys.argv[2:]
t = time.monotonic()
p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
took = time.monotonic() - t
if status != 0:
    sys.exit(f"{label}: exit status {status}")
print(f"{label:<28} {took:7.2f} s {usage.ru_maxrss / 1024:8.0f} MB peak")
PY
}
measure "keygate check" "$bin" check --config "$cfg"
measure "keygate keys list" "$bin" keys list --config "$cfg"
measure "keygate keys create" "$bin" keys create --config "$cfg" --name new --env production --scopes chat
measure "keygate keys update" "$bin" keys update key_00050000 --config "$cfg" --rpm 700
measure "keygate keys show" "$bin" keys show key_00050000 --config "$cfg"

rss() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }
start=$(date +%s.%N)
SCALE_UPSTREAM_KEY=sk-scale KEYGATE_ADMIN_TOKEN=scale "$bin" serve --config "$cfg" 2>"$tmp/serve.log" &
pid=$!
for _ in $(seq 1 600); do curl -sf -o /dev/null "http://127.0.0.1:$admin/healthz" && break; sleep 0.02; done
curl -sf -o /dev/null "http://127.0.0.1:$admin/healthz" || { echo "keygate did not become ready" >&2; cat "$tmp/serve.log" >&2; exit 1; }
echo "serve until ready            $(echo "$(date +%s.%N) - $start" | bc | xargs printf '%7.2f') s"
sleep 1
before=$(rss)
echo "resident after start         $before MB ($(echo "$before * 1048576 / $keys" | bc) bytes per key)"
t=$(date +%s.%N)
curl -sf "http://127.0.0.1:$admin/metrics" -o "$tmp/metrics.txt"
echo "GET /metrics                 $(echo "$(date +%s.%N) - $t" | bc | xargs printf '%7.2f') s, $(stat -c %s "$tmp/metrics.txt") bytes, $(grep -vc '^#' "$tmp/metrics.txt") series"
reloaded() { grep -c 'config reloaded' "$tmp/serve.log" || true; }
for n in 1 2; do
  t=$(date +%s.%N)
  kill -HUP "$pid"
  for _ in $(seq 1 300); do [ "$(reloaded)" -ge "$n" ] && break; sleep 0.02; done
  [ "$(reloaded)" -ge "$n" ] || { echo "reload $n did not finish" >&2; tail -5 "$tmp/serve.log" >&2; exit 1; }
  took=$(echo "$(date +%s.%N) - $t" | bc)
  sleep 1
  echo "reload $n                     $(printf '%7.2f' "$took") s, resident $(rss) MB (start: $before MB)"
done
# Ten keys created through the admin API, one after another: each is an edit of the file and
# one reload. The previous snapshot is freed once its requests end, off the request path;
# resident memory is read 3 s after the last one.
total=0
for n in $(seq 1 10); do
  t=$(date +%s.%N)
  curl -sf -o /dev/null -X POST "http://127.0.0.1:$admin/admin/keys" -H "authorization: Bearer scale" \
    -H 'content-type: application/json' -d "{\"name\": \"api $n\", \"environment\": \"production\", \"scopes\": [\"chat\"]}"
  total=$(echo "$total + $(date +%s.%N) - $t" | bc)
done
sleep 3
echo "POST /admin/keys (+ reload)  $(echo "$total / 10" | bc -l | xargs printf '%7.2f') s each, resident $(rss) MB after 10 (start: $before MB), $(reloaded) reloads in all"
