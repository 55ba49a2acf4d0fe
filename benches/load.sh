#!/usr/bin/env bash
# Load comparison in one run: the mock upstream directly, through nginx as a plain reverse
# proxy, and through keygate, at 1 and 64 connections, for plain chat and for streamed chat of
# 20 content chunks plus a usage chunk (as a short real answer), both without
# stream_options.include_usage (the OpenAI SDKs' default: keygate asks for usage and strips it
# back out) and with it.
#
# Decision informed: whether keygate's full pipeline (authenticate, IP and referrer rules,
# scopes, all four limits, usage metering, the ledger, metrics and the request log line)
# costs at most what nginx costs as a plain reverse proxy, in CPU time per request and
# throughput, and what it adds to latency. CPU time is also shown in user space alone (what
# keygate's own code, hyper and tokio cost; the rest is the kernel's socket work). wrk runs
# on core 0; the proxy and the mock share core 1, keygate and the mock with one worker
# thread each (nginx: one process, access log on, buffering off). "keygate" uses a key with
# no limits, "kg+all" a key with every limit and rule (high enough that nothing is refused),
# "kg+redis" that key with limits shared on a local Redis, "kg+100k" that key on a gateway
# configured with 100,000 keys. Everything binds to 127.0.0.1.
# Usage: [MODES="plain stream stream_usage"] benches/load.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"

for tool in wrk nginx redis-server; do
  if ! command -v "$tool" >/dev/null && ! [ -x "/usr/sbin/$tool" ]; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq "$tool" >/dev/null; else echo "load.sh needs $tool (apt-get install $tool)" >&2; exit 1; fi
  fi
done
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release -q -p keygate -p mock-upstream
bin="${CARGO_TARGET_DIR:-target}/release"
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

wait_for() { # file pattern -> first match
  for _ in $(seq 1 200); do
    if grep -qE "$2" "$1" 2>/dev/null; then grep -oE "$2" "$1" | head -1; return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for $2 in $1" >&2; cat "$1" >&2; return 1
}

TOKIO_WORKER_THREADS=1 taskset -c 1 "$bin/mock-upstream" 127.0.0.1:0 >"$tmp/mock.out" &
pids+=($!)
mock=$(wait_for "$tmp/mock.out" '127\.0\.0\.1:[0-9]+')

new_key() { # prints "key hash"
  "$bin/keygate" keys generate --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["key"], d["hash"])'
}
read -r key hash < <(new_key)
read -r lkey lhash < <(new_key)
cat >"$tmp/keygate.toml" <<TOML
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstream]
url = "http://$mock"
api_key_env = "BENCH_UPSTREAM_KEY"
[[models]]
name = "deepseek-chat"
scope = "chat"
input_per_million = 0.27
output_per_million = 1.10
[[keys]]
id = "bench"
name = "bench"
environment = "production"
hash = "$hash"
created = 2026-01-01T00:00:00Z
scopes = ["chat"]
models = ["deepseek-chat"]
allowed_ips = ["127.0.0.0/8"]
allowed_referrers = []
[[keys]]
id = "bench_limited"
name = "bench_limited"
environment = "production"
hash = "$lhash"
created = 2026-01-01T00:00:00Z
scopes = ["chat"]
models = ["deepseek-chat"]
allowed_ips = ["10.0.0.0/8", "127.0.0.0/8"]
allowed_referrers = ["https://bench.example/*"]
# Every limit set, high enough that nothing is refused: measures their cost, not their effect.
limits = { requests_per_minute = 4000000000, tokens_per_minute = 4000000000, monthly_spend_usd = 1000000, max_concurrent_requests = 100000 }
[storage]
path = "$tmp/keygate.db"
TOML
BENCH_UPSTREAM_KEY=sk-bench TOKIO_WORKER_THREADS=1 RUST_LOG="${RUST_LOG:-info}" \
  taskset -c 1 "$bin/keygate" serve --config "$tmp/keygate.toml" 2>"$tmp/keygate.log" &
kg_pid=$!
pids+=($kg_pid)
gw=$(wait_for "$tmp/keygate.log" 'keygate listening addr=127\.0\.0\.1:[0-9]+' | cut -d= -f2)

# A second keygate on the same config with its limits shared on a local redis-server: the cost
# of sharing limits between replicas (one Lua script call per admitted request, settlements
# pipelined). Redis runs on core 1 too; its CPU is reported apart.
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
taskset -c 1 redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$tmp/redis.out" &
redis_pid=$!
pids+=($redis_pid)
for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && break; sleep 0.05; done
(echo > "/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null || { echo "redis-server did not start" >&2; cat "$tmp/redis.out" >&2; exit 1; }
sed -e "s|^path = \".*keygate.db\"|path = \"$tmp/keygate-redis.db\"|" "$tmp/keygate.toml" >"$tmp/keygate-redis.toml"
printf '[cluster]\nredis_url_env = "BENCH_REDIS_URL"\nreplicas_hint = 2\n' >>"$tmp/keygate-redis.toml"
BENCH_UPSTREAM_KEY=sk-bench BENCH_REDIS_URL="redis://127.0.0.1:$redis_port/0" TOKIO_WORKER_THREADS=1 RUST_LOG="${RUST_LOG:-info}" \
  taskset -c 1 "$bin/keygate" serve --config "$tmp/keygate-redis.toml" 2>"$tmp/keygate-redis.log" &
kgr_pid=$!
pids+=($kgr_pid)
gwr=$(wait_for "$tmp/keygate-redis.log" 'keygate listening addr=127\.0\.0\.1:[0-9]+' | cut -d= -f2)

# A third keygate on the same config plus 99,998 more keys (each with a CIDR, three limits and
# a scope, as a platform that gives every customer a key): key lookup, limit admission and
# the brute-force guard must cost the same per request with 100,000 keys as with two.
python3 - "$tmp/keygate.toml" "$tmp/keygate-100k.toml" "$tmp/keygate-100k.db" <<'PY'
import hashlib, sys
src, dst, db = sys.argv[1:4]
text = open(src).read().replace(src.rsplit("/", 1)[0] + "/keygate.db", db)
out = [text]
for n in range(99_998):
    h = hashlib.sha256(b"bench-%d" % n).hexdigest()
    out.append(
        f'\n[[keys]]\nid = "key_{n:08d}"\nname = "customer {n}"\nenvironment = "production"\n'
        f'hash = "sha256:{h}"\ncreated = 2026-01-01T00:00:00Z\nscopes = ["chat"]\n'
        f'allowed_ips = ["10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32"]\n'
        f'limits = {{ requests_per_minute = 600, tokens_per_minute = 100000, monthly_spend_usd = 50 }}\n'
    )
open(dst, "w").write("".join(out))
PY
BENCH_UPSTREAM_KEY=sk-bench TOKIO_WORKER_THREADS=1 RUST_LOG="${RUST_LOG:-info}" \
  taskset -c 1 "$bin/keygate" serve --config "$tmp/keygate-100k.toml" 2>"$tmp/keygate-100k.log" &
kgk_pid=$!
pids+=($kgk_pid)
gwk=$(wait_for "$tmp/keygate-100k.log" 'keygate listening addr=127\.0\.0\.1:[0-9]+' | cut -d= -f2)

nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$tmp/nginx.conf" <<NGINX
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log $tmp/nginx.access;
  upstream mock { server $mock; keepalive 128; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer sk-bench";
      proxy_buffering off;
    }
  }
}
NGINX
taskset -c 1 "$nginx_bin" -p "$tmp" -c "$tmp/nginx.conf" -g 'daemon off; master_process off;' &
nginx_pid=$!
pids+=($nginx_pid)
for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$nginx_port") 2>/dev/null && break; sleep 0.05; done
(echo > "/dev/tcp/127.0.0.1/$nginx_port") 2>/dev/null || { echo "nginx did not start" >&2; cat "$tmp/nginx.err" >&2; exit 1; }

modes="${MODES:-plain stream stream_usage}"
for mode in $modes; do
  case $mode in
    plain) extra='' ;;
    stream) extra=', "stream": true' ;;
    stream_usage) extra=', "stream": true, "stream_options": {"include_usage": true}' ;;
    *) echo "unknown mode $mode (plain, stream or stream_usage)" >&2; exit 1 ;;
  esac
  for k in "$key:" "$lkey:_limited"; do
    cat >"$tmp/$mode${k#*:}.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer ${k%%:*}"
wrk.headers["Referer"] = "https://bench.example/app"
wrk.headers["x-mock-chunks"] = "20"
wrk.body = '{"model": "deepseek-chat", "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello to the benchmark"}]$extra}'
LUA
  done
done

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
user_ticks() { awk '{print $14}' "/proc/$1/stat"; }
to_us() { # wrk latency like 1.23ms / 456.00us / 1.2s -> microseconds
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1e6; else print n }'
}

printf '%-13s %-6s %-9s %10s %10s %10s %14s %14s\n' mode conns target req/s p50_us p99_us proxy_cpu_us proxy_user_us
declare -A R
for mode in $modes; do
  for conns in 1 64; do
    for target in direct nginx keygate kg+all kg+redis kg+100k; do
      script="$tmp/$mode.lua"
      case $target in
        direct) addr=$mock; pid=$kg_pid ;;
        nginx) addr=127.0.0.1:$nginx_port; pid=$nginx_pid ;;
        keygate) addr=$gw; pid=$kg_pid ;;
        kg+all) addr=$gw; pid=$kg_pid; script="$tmp/${mode}_limited.lua" ;;
        kg+redis) addr=$gwr; pid=$kgr_pid; script="$tmp/${mode}_limited.lua" ;;
        kg+100k) addr=$gwk; pid=$kgk_pid; script="$tmp/${mode}_limited.lua" ;;
      esac
      redis_before=$(cpu_ticks "$redis_pid")
      before=$(cpu_ticks "$pid")
      user_before=$(user_ticks "$pid")
      taskset -c 0 wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$script" \
        "http://$addr/v1/chat/completions" >"$tmp/wrk.out"
      after=$(cpu_ticks "$pid")
      user_after=$(user_ticks "$pid")
      if grep -qE 'Non-2xx|Socket errors' "$tmp/wrk.out"; then echo "failed requests:" >&2; cat "$tmp/wrk.out" >&2; exit 1; fi
      rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/wrk.out")
      reqs=$(awk '/requests in/ {print $1}' "$tmp/wrk.out")
      p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$tmp/wrk.out")")
      p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$tmp/wrk.out")")
      cpu=$(awk -v d="$((after - before))" -v t="$ticks" -v n="$reqs" 'BEGIN { printf "%.1f", d / t / n * 1e6 }')
      user=$(awk -v d="$((user_after - user_before))" -v t="$ticks" -v n="$reqs" 'BEGIN { printf "%.1f", d / t / n * 1e6 }')
      [ "$target" = direct ] && cpu="-" && user="-"
      redis_after=$(cpu_ticks "$redis_pid")
      if [ "$target" = kg+redis ]; then
        rcpu=$(awk -v d="$((redis_after - redis_before))" -v t="$ticks" -v n="$reqs" 'BEGIN { printf "%.1f", d / t / n * 1e6 }')
        cpu="$cpu (+redis $rcpu)"
      fi
      R[$mode,$conns,$target,rps]=$rps; R[$mode,$conns,$target,p50]=$p50; R[$mode,$conns,$target,cpu]=$cpu
      R[$mode,$conns,$target,user]=$user
      printf '%-13s %-6s %-9s %10s %10s %10s %14s %14s\n' "$mode" "$conns" "$target" "$rps" "$p50" "$p99" "$cpu" "$user"
    done
  done
done
echo
echo "ratios, kg+all against nginx (CPU/request and req/s at 64 connections; added p50 over direct at 1):"
printf '%-13s %12s %12s %12s %14s %14s\n' mode cpu_ratio user_ratio rps_ratio nginx_added_us kg_added_us
for mode in $modes; do
  cpu=$(awk -v k="${R[$mode,64,kg+all,cpu]}" -v n="${R[$mode,64,nginx,cpu]}" 'BEGIN { printf "%.2f", k / n }')
  user=$(awk -v k="${R[$mode,64,kg+all,user]}" -v n="${R[$mode,64,nginx,user]}" 'BEGIN { printf "%.2f", k / n }')
  rps=$(awk -v k="${R[$mode,64,kg+all,rps]}" -v n="${R[$mode,64,nginx,rps]}" 'BEGIN { printf "%.2f", k / n }')
  na=$(awk -v x="${R[$mode,1,nginx,p50]}" -v d="${R[$mode,1,direct,p50]}" 'BEGIN { printf "%.0f", x - d }')
  ka=$(awk -v x="${R[$mode,1,kg+all,p50]}" -v d="${R[$mode,1,direct,p50]}" 'BEGIN { printf "%.0f", x - d }')
  printf '%-13s %12s %12s %12s %14s %14s\n' "$mode" "$cpu" "$user" "$rps" "$na" "$ka"
done
echo
echo "kg+100k against kg+all (the same key and limits; 100,000 keys configured instead of two):"
printf '%-13s %18s\n' mode cpu_ratio_64
for mode in $modes; do
  printf '%-13s %18s\n' "$mode" "$(awk -v k="${R[$mode,64,kg+100k,cpu]}" -v n="${R[$mode,64,kg+all,cpu]}" 'BEGIN { printf "%.2f", k / n }')"
done
lines=$(grep -c 'keygate::request' "$tmp/keygate.log" || true)
echo "keygate logged $lines request lines; refusals: $(grep -c 'outcome=refused' "$tmp/keygate.log" || true)"
