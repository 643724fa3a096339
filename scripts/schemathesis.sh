#!/usr/bin/env bash
# The API fuzzed against its own OpenAPI document, as the security review did (issue 16):
# schemathesis (pinned, from PyPI, installed here on first use) with every check, a bounded
# number of examples per operation and a fixed seed (the same cases every run), against a
# sandbox server this script starts with an owner key and rate limits off. Any 5xx other
# than the documented 503s, any schema violation and any undocumented status fails it.
# Deleting the tenant, the session or the webhook, logging the session out and revoking API
# keys are left out: the run's credential and objects gone, every later case would be a
# 401 or a 404 (their tests are in tests/api).
#
# Needs the sandbox build's binary (scripts/test.sh builds it first) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=4.32.5
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-50}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${WAGATE_BIN:-$TARGET/debug/wagate}
VENV=$TARGET/schemathesis-$ST_VERSION
ADMIN=schemathesis-admin-key-0123456789abcdef

log() { printf '[schemathesis.sh] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/schemathesis" ]; then
    log "installing schemathesis $ST_VERSION"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "schemathesis==$ST_VERSION"
fi
[ -x "$BIN" ] || { log "no wagate binary at $BIN (build with --features sandbox)"; exit 2; }

DATA=$(mktemp -d -t wagate-schemathesis.XXXXXX)
SERVER_PID=
DB_NAME=
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ -n "$DB_NAME" ]; then
        psql "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    # A private cluster may live in the postgres account's home, behind a link.
    local cluster
    cluster=$(readlink -f "$DATA/postgres" 2>/dev/null || true)
    case "$cluster" in */wagate-clusters/*) rm -rf "$cluster" ;; esac
    rm -rf "$DATA"
}
trap cleanup EXIT

# The suite's PostgreSQL when there is one (a fresh database), else the server's own.
if [ -n "${TEST_DATABASE_URL:-}" ]; then
    DB_NAME="wagate_schemathesis_$$"
    psql "$TEST_DATABASE_URL" -qc "CREATE DATABASE \"$DB_NAME\"" >/dev/null
    export APP_DATABASE__URL="${TEST_DATABASE_URL%/*}/$DB_NAME"
fi
APP_AUTH__ADMIN_KEY=$ADMIN APP_RATE_LIMIT__ENABLED=false APP_LOG__FORMAT=json \
APP_LOG__LEVEL=warn,wagate=info APP_SANDBOX__PERSIST_NETWORK=false \
    "$BIN" --sandbox --port 0 --data-dir "$DATA" 2>"$DATA/server.log" &
SERVER_PID=$!
PORT=
for _ in $(seq 1 600); do
    PORT=$(grep 'wagate listening' "$DATA/server.log" 2>/dev/null \
        | grep -o '"port":[0-9]*' | grep -o '[0-9]*$' | head -n 1 || true)
    [ -n "$PORT" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$DATA/server.log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$PORT" ] || { log "the server did not start"; cat "$DATA/server.log" >&2; exit 1; }
URL="http://127.0.0.1:$PORT"
# A tenant with its owner key, and real objects for the path parameters (a linked sandbox
# session, a chat of it, a webhook), so cases reach past the 404 of an unknown id.
eval "$(python3 - "$URL" "$ADMIN" <<'PY'
import json, sys, time, urllib.request
url, admin = sys.argv[1], sys.argv[2]
def call(method, path, key, body=None):
    req = urllib.request.Request(url + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as res:
        return json.load(res)
tenant = call("POST", "/api/v1/tenants", admin, {"name": "schemathesis", "tier": "enterprise"})
key = tenant["api_key"]
session = call("POST", "/api/v1/sessions", key, {"name": "fuzzed"})["id"]
call("POST", f"/api/v1/sessions/{session}/start", key)
for _ in range(200):
    if call("GET", f"/api/v1/sessions/{session}", key)["status"] == "qr":
        break
    time.sleep(0.05)
call("POST", f"/api/v1/sandbox/sessions/{session}/scan", key, {"phone": "+15550009999"})
for _ in range(200):
    if call("GET", f"/api/v1/sessions/{session}", key)["status"] == "connected":
        break
    time.sleep(0.05)
chat = "+4915100000099"
call("POST", "/api/v1/sandbox/inbound", key, {"session_id": session, "from": chat, "text": "hi"})
hook = call("POST", "/api/v1/webhooks", key, {"url": "https://hooks.example.com/wagate"})["id"]
print(f"KEY={key}; export ST_TENANT_ID={tenant['id']} ST_SESSION_ID={session} "
      f"ST_CHAT=%2B{chat[1:]} ST_WEBHOOK_ID={hook}")
PY
)"
log "fuzzing $URL ($MAX_EXAMPLES examples per operation)"
status=0
# Run from the scratch directory: schemathesis keeps a cache in its working directory.
CONFIG=$PWD/scripts/schemathesis.toml
VENV=$(cd "$VENV" && pwd)
(cd "$DATA" && "$VENV/bin/schemathesis" --config-file "$CONFIG" run "$URL/openapi.json" \
    --checks all --max-examples "$MAX_EXAMPLES" --seed 16 --workers 2 \
    --generation-database none --no-color \
    --exclude-operation-id delete_tenant --exclude-operation-id revoke_api_key \
    --exclude-operation-id delete_session --exclude-operation-id delete_webhook \
    --exclude-operation-id logout_session \
    -H "Authorization: Bearer $KEY") || status=$?
# Our own errors (an internal error is logged with its cause); actix's lines about requests
# it could not parse are the fuzzer's doing.
if grep '"level":"ERROR"' "$DATA/server.log" | grep -q '"target":"wagate'; then
    log "the server logged errors:"
    grep '"level":"ERROR"' "$DATA/server.log" | grep '"target":"wagate' | head -n 20 >&2
    status=1
fi
exit $status
