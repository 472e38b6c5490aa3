#!/usr/bin/env bash
# Throughput and memory of a real `keystone serve` under wrk (the scenarios of the
# performance issue): PostgreSQL and Redis on this machine, request logging and throttling
# on as deployed (with rates high enough that nothing is refused), data from `keystone seed`
# plus one API update per allocation request so that `_history` is not empty.
#
#   bench/wrk.sh [--binary PATH] [--seconds N] [--connections N] [--only NAME]...
#
# Needs wrk, psql, redis-cli and curl. Environment: KEYSTONE_BENCH_POSTGRES (default
# postgres://postgres@127.0.0.1:5432/postgres), KEYSTONE_BENCH_REDIS (default
# redis://127.0.0.1:6379/14; the database is flushed). Prints one line per scenario
# (requests/s, p50, p99, non-2xx) and the resident memory of each role afterwards.
# Set KEYSTONE_BENCH_PERF=DIR to record a perf profile of each scenario into DIR.
set -euo pipefail

binary=${KEYSTONE_BIN:-target/release/keystone}
seconds=10
connections=32
only=()
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --only) only+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/wrk.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for tool in wrk psql redis-cli curl; do
  command -v "$tool" >/dev/null || { echo "bench/wrk.sh: $tool is not installed" >&2; exit 2; }
done
binary=$(readlink -f "$binary")
[ -x "$binary" ] || { echo "bench/wrk.sh: no keystone binary at $binary (--binary)" >&2; exit 2; }

pg=${KEYSTONE_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
redis=${KEYSTONE_BENCH_REDIS:-redis://127.0.0.1:6379/14}
db="keystone_bench_$$"
dir=$(mktemp -d /tmp/keystone-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$pg" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

hostport=${pg#*://}; hostport=${hostport#*@}; hostport=${hostport%%/*}
pguser=${pg#*://}; pguser=${pguser%%@*}; pguser=${pguser%%:*}
touch "$dir/keystone.toml"
export KEYSTONE_CONFIG="$dir/keystone.toml"
export KEYSTONE_SERVER__STATE_DIR="$dir/state"
export KEYSTONE_DATABASE__ENGINE=postgres
export KEYSTONE_DATABASE__NAME=$db
export KEYSTONE_DATABASE__HOST=${hostport%%:*}
export KEYSTONE_DATABASE__PORT=${hostport##*:}
export KEYSTONE_DATABASE__USER=$pguser
export KEYSTONE_REDIS__URL=$redis
export KEYSTONE_SECURITY__SECRET_KEY=bench-secret-key-0123456789abcdefghijklmnopqrstuvwxyz
export KEYSTONE_THROTTLE__ANON=100000000/min
export KEYSTONE_THROTTLE__USER=100000000/min
export KEYSTONE_LOGGING__LEVEL=error
export KEYSTONE_METRICS__ENABLED=false

redis-cli -u "$redis" flushdb >/dev/null
psql "$pg" -qc "CREATE DATABASE $db" >/dev/null
"$binary" migrate >/dev/null
"$binary" seed --seed 7 --n-staff 10 --n-teams 40 >/dev/null
echo 'Bench-Pass-123' | "$binary" user create --username bench --staff --no-input --password-stdin >/dev/null
token=$("$binary" token create bench 2>/dev/null)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
start_role() { # role, extra env...
  local role=$1; shift
  env "$@" KEYSTONE_SERVER__BIND="127.0.0.1:$port" "$binary" serve --role "$role" >"$dir/$role.log" 2>&1 &
  pids+=($!)
  echo $!
}
wait_up() {
  for _ in $(seq 1 200); do curl -fsS "$base/version/" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "bench/wrk.sh: keystone did not start; its log:" >&2; cat "$dir"/*.log >&2; exit 1
}
web=$(start_role web)
wait_up

# A session cookie (and a CSRF token) as the frontend holds them.
jar="$dir/cookies"
curl -fsS -c "$jar" -H 'Content-Type: application/json' \
  -d '{"username":"bench","password":"Bench-Pass-123"}' "$base/authentication/login/" -o /dev/null
session=$(awk '$6=="sessionid"{print $7}' "$jar" | tail -n1)
csrf=$(awk '$6=="csrftoken"{print $7}' "$jar" | tail -n1)
cookie="sessionid=$session; csrftoken=$csrf"

# History on the first 100 requests (what a page of requests carries).
ids=$(curl -fsS -H "Authorization: Token $token" "$base/allocations/requests/?_limit=100&_order=id" \
  | python3 -c 'import json,sys; print(" ".join(str(r["id"]) for r in json.load(sys.stdin)["results"]))')
for id in $ids; do
  curl -fsS -X PATCH -H "Authorization: Token $token" -H 'Content-Type: application/json' \
    -d '{"description":"Reviewed in the benchmark."}' "$base/allocations/requests/$id/" -o /dev/null
done
team=$(curl -fsS -H "Authorization: Token $token" "$base/users/teams/?_limit=1" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["id"])')
request=${ids%% *}

cat >"$dir/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"content":"A comment from the benchmark.","request":$request,"private":false}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Token $token"
EOF
cat >"$dir/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local non2xx = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %.0f %.1f %.1f %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.requests, non2xx))
end
EOF

run() { # name, path, header args...
  local name=$1 path=$2; shift 2
  if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " == *" $name "* ]]; then return; fi
  local script="$dir/report.lua"
  if [ "$name" = comment-post ]; then cat "$dir/post.lua" "$dir/report.lua" >"$dir/both.lua"; script="$dir/both.lua"; fi
  local perf_pid=""
  if [ -n "${KEYSTONE_BENCH_PERF:-}" ]; then
    mkdir -p "$KEYSTONE_BENCH_PERF"
    perf record -F 499 -g -p "$web" -o "$KEYSTONE_BENCH_PERF/$name.data" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  local out
  out=$(wrk -t2 -c"$connections" -d"${seconds}s" --latency -s "$script" "$@" "$base$path" | grep '^RESULT')
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; fi
  read -r _ rps p50 p99 total bad <<<"$out"
  printf '%-22s %9s req/s  p50 %7s ms  p99 %7s ms  (%s requests, %s not 2xx)\n' "$name" "$rps" "$p50" "$p99" "$total" "$bad"
}

echo "keystone $("$binary" --version | awk '{print $NF}'), wrk -t2 -c$connections -d${seconds}s, PostgreSQL + Redis"
run version /version/
run whoami /authentication/whoami/ -H "Cookie: $cookie"
run team-detail "/users/teams/$team/" -H "Cookie: $cookie"
run requests-100 /allocations/requests/ -H "Cookie: $cookie"
run requests-10 "/allocations/requests/?_limit=10" -H "Cookie: $cookie"
run users-100 "/users/users/?_limit=100" -H "Cookie: $cookie"
run comment-post /allocations/comments/

rss() { awk '/VmRSS/{printf "%.1f MiB", $2/1024}' "/proc/$1/status"; }
echo "RSS after the benchmark: web $(rss "$web")"
kill "$web"; wait "$web" 2>/dev/null || true
# The other roles alone, each after a short idle run of its own loop.
for role in worker beat all; do
  pid=$(start_role "$role")
  if [ "$role" = all ]; then wait_up; run version /version/ >/dev/null; fi
  sleep 3
  echo "RSS $role: $(rss "$pid")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
