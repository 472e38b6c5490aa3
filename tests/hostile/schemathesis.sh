#!/usr/bin/env bash
# Schemathesis against a fresh Keystone and the server's own /openapi/json/: every check,
# positive and negative data, every phase (examples, coverage, fuzzing, stateful). Passes
# only with 0 failures (no server error, no response outside the documented schemas).
#
#   tests/hostile/schemathesis.sh                          # CI budget (a few minutes)
#   SCHEMATHESIS_BUDGET=long tests/hostile/schemathesis.sh # by hand (30 minutes)
#
# Environment:
#   SCHEMATHESIS_BUDGET   ci (default) or long
#   SCHEMATHESIS_MAX_TIME seconds of testing, overriding the budget's (ci 180, long 1800)
#   SCHEMATHESIS_SEED     hypothesis seed (default: random; printed for a re-run)
#   KEYSTONE_BIN          keystone binary to test (default: `cargo build`, then
#                         $CARGO_TARGET_DIR/debug/keystone)
#   SCHEMATHESIS_REPORT_DIR keep the reports (junit, ndjson) there instead of a temp dir
#
# Everything stays on this machine: the server binds 127.0.0.1 on a free port, has no
# Redis, LDAP or reachable mail server, and schemathesis talks only to that address.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
requirements="$here/schemathesis-requirements.txt"
config="$here/schemathesis.toml"
hooks_dir="$here"

budget="${SCHEMATHESIS_BUDGET:-ci}"
case "$budget" in
  ci) max_time=180 max_examples=25 ;;
  long) max_time=1800 max_examples=200 ;;
  *)
    echo "schemathesis.sh: SCHEMATHESIS_BUDGET must be ci or long, not '$budget'" >&2
    exit 2
    ;;
esac
max_time="${SCHEMATHESIS_MAX_TIME:-$max_time}"
seed="${SCHEMATHESIS_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"

log() { printf '== schemathesis: %s\n' "$*" >&2; }

# --- schemathesis, pinned with hashes, in a venv outside the clone -----------------------
# Python 3.12 or newer where there is one: 3.11's parser can fail when several threads
# parse source at once ("AST constructor recursion depth mismatch"), which hypothesis does
# with two workers.
python=""
for candidate in python3.14 python3.13 python3.12 \
  "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import venv' 2>/dev/null; then
    python="$(command -v "$candidate")"
    break
  fi
done
workers=2
if [ -z "$python" ]; then
  python="$(command -v /usr/bin/python3 || command -v python3)"
  workers=1
fi
py_version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
lock_id="$(cat "$requirements" | sha256sum | cut -c1-12)"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/keystone-schemathesis/venv-py$py_version-$lock_id"
if [ ! -x "$venv/bin/schemathesis" ]; then
  log "installing schemathesis into $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --require-hashes --no-deps --only-binary :all: -r "$requirements"
fi
"$venv/bin/schemathesis" --version >&2

# --- the keystone binary ---------------------------------------------------------------
if [ -n "${KEYSTONE_BIN:-}" ]; then
  bin="$KEYSTONE_BIN"
else
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
  log "cargo build"
  (cd "$repo" && cargo build --quiet --bin keystone)
  bin="$CARGO_TARGET_DIR/debug/keystone"
fi
[ -x "$bin" ] || { echo "schemathesis.sh: no keystone binary at $bin" >&2; exit 2; }

# --- a fresh site on SQLite -------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/keystone-schemathesis.XXXXXX")"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
: >"$work/keystone.toml"

# Only this site's settings reach keystone: nothing from the caller's environment.
site_env=(
  PATH="/usr/bin:/bin" HOME="$work"
  KEYSTONE_CONFIG="$work/keystone.toml"
  KEYSTONE_SERVER__STATE_DIR="$work/state"
  KEYSTONE_SERVER__BIND="127.0.0.1:$port"
  KEYSTONE_EMAIL__HOST=127.0.0.1 KEYSTONE_EMAIL__PORT=9
  KEYSTONE_METRICS__ENABLED=false
  KEYSTONE_THROTTLE__ANON=100000/min KEYSTONE_THROTTLE__USER=100000/min
  KEYSTONE_LOGGING__LEVEL=error
)
keystone() { env -i "${site_env[@]}" "$bin" "$@"; }

keystone migrate >/dev/null
# A small realistic data set, so detail, list and filter operations find records.
keystone seed --seed 7 --n-staff 2 --n-clusters 2 --n-teams 3 \
  --n-team-members 2 3 --n-team-grants 1 2 --n-team-pubs 1 2 --n-team-reqs 1 2 \
  --n-req-clusters 1 2 --n-req-attachments 0 1 --n-req-comments 0 2 \
  --n-user-notifications 1 3 >/dev/null
# The caller: a superuser with an API key (the key is printed once).
head -c 24 /dev/urandom | base64 | keystone user create --username schemathesis \
  --email schemathesis@example.org --superuser --no-input --password-stdin >/dev/null
token="$(keystone token create schemathesis --name schemathesis | tail -n1)"
# env execs keystone, so $! is the server itself.
env -i "${site_env[@]}" "$bin" serve --role web >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  if "$venv/bin/python" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
    "$base/openapi/json/" 2>/dev/null; then
    break
  fi
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.2
done

staff_id="$("$venv/bin/python" - "$base/authentication/whoami/" "$token" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": f"Token {sys.argv[2]}"})
print(json.load(urllib.request.urlopen(req, timeout=10))["id"])
PY
)"

# --- the run ------------------------------------------------------------------------------
reports="${SCHEMATHESIS_REPORT_DIR:-$work/reports}"
mkdir -p "$reports"
log "budget $budget: $max_time s, up to $max_examples examples per operation and phase, seed $seed"
status=0
(
  cd "$work"
  # No proxy may divert the run off this machine.
  env -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u http_proxy -u https_proxy -u all_proxy \
    NO_PROXY='*' PYTHONPATH="$hooks_dir" SCHEMATHESIS_HOOKS=schemathesis_hooks \
    KEYSTONE_ST_TOKEN="$token" KEYSTONE_ST_STAFF_ID="$staff_id" \
    "$venv/bin/schemathesis" --config-file "$config" run "$base/openapi/json/" \
    --url "$base" \
    --checks all \
    --mode all \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$max_examples" \
    --max-time "$max_time" \
    --seed "$seed" \
    --workers "$workers" \
    --generation-database none \
    --report junit,ndjson --report-dir "$reports" \
    --no-color
) || status=$?

if grep -q "panicked\|ERROR" "$work/server.log"; then
  log "server log (errors):"
  grep -E "panicked|ERROR" "$work/server.log" | head -n 40 >&2
fi
if [ "$status" -ne 0 ]; then
  log "FAILED (exit $status); re-run with SCHEMATHESIS_SEED=$seed"
else
  log "passed (budget $budget, seed $seed)"
fi
exit "$status"
