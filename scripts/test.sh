#!/usr/bin/env bash
# The whole test suite, on this machine or a fresh one.
#
# Brings up what the tests need: a PostgreSQL server on 127.0.0.1:5432 when one is installed
# (started if stopped; without one the tests run on wagate's own private cluster, which only
# needs the PostgreSQL binaries), the redis-server binary (tests start their own), Chromium
# and chromedriver (browser tests) with axe-core from npm, and cargo-nextest. Missing packages are installed with apt-get when running as root.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test.sh] %s\n' "$*" >&2; }

apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing $*"
        if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >&2; APT_UPDATED=1; fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
    else
        log "please install: $* (not root or no apt-get)"
        return 1
    fi
}

pg_listening() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

pg_bindir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

ensure_postgres() {
    if [ -z "$(pg_bindir)" ] && ! command -v initdb >/dev/null; then
        apt_install postgresql postgresql-client || true
    fi
    if ! pg_listening && command -v pg_lsclusters >/dev/null; then
        for cluster in $(pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 {print $1"/"$2}'); do
            log "starting PostgreSQL cluster $cluster"
            pg_ctlcluster --skip-systemctl-redirect "${cluster%/*}" "${cluster#*/}" start >&2 || true
        done
        for _ in $(seq 1 50); do pg_listening && break; sleep 0.2; done
    fi
    if [ -z "${TEST_DATABASE_URL:-}" ] && pg_listening \
        && psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc 'select 1' >/dev/null 2>&1; then
        export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    fi
    if [ -n "${TEST_DATABASE_URL:-}" ]; then
        log "tests use PostgreSQL at ${TEST_DATABASE_URL}"
        # Databases left by earlier runs (each test makes its own).
        psql "$TEST_DATABASE_URL" -Atqc \
            "select datname from pg_database where datname like 'wagate_test_%'" 2>/dev/null \
            | while read -r db; do psql "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true; done
    else
        log "no reachable PostgreSQL server: tests use wagate's private cluster"
    fi
}

ensure_redis() {
    command -v redis-server >/dev/null || apt_install redis-server
}

# The browser tests drive Debian's Chromium through its chromedriver (no tool downloads a
# browser of its own).
ensure_chromium() {
    if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
        apt_install chromium chromium-driver
    fi
}

# axe-core, which the browser tests inject into the dashboard's pages, from the npm registry
# (pinned by tests/browser/package-lock.json).
ensure_browser_packages() {
    if [ -f tests/browser/node_modules/axe-core/axe.min.js ]; then return 0; fi
    command -v npm >/dev/null || apt_install nodejs npm
    log "installing the browser tests' npm packages"
    npm ci --prefix tests/browser --no-audit --no-fund >&2
}

ensure_nextest() {
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "installing cargo-nextest"
        cargo install --locked cargo-nextest >&2
    fi
}

# The tests' private cluster (used when no server is reachable) is shared by all test
# processes; stop it when the suite is done so no database outlives the run.
stop_private_test_cluster() {
    local dir bindir
    # The cluster may live in the postgres account's home, behind a link (see README).
    dir=$(readlink -f target/test-private-pg/postgres 2>/dev/null) || return 0
    [ -f "$dir/postmaster.pid" ] || return 0
    bindir=$(pg_bindir)
    [ -n "$bindir" ] || bindir=$(dirname "$(command -v pg_ctl)")
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$bindir/pg_ctl" stop -D "$dir" -m fast >/dev/null 2>&1 || true
    else
        "$bindir/pg_ctl" stop -D "$dir" -m fast >/dev/null 2>&1 || true
    fi
}
trap stop_private_test_cluster EXIT

ensure_postgres
ensure_redis
ensure_chromium
ensure_browser_packages
ensure_nextest
# Formatting and lints first: unwrap/expect are denied outside tests, warnings are errors.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
# Two feature sets, two runs. The default build (wagate + actors) must never contain
# the simulator or the client's certificate-check bypass, so it is built on its own;
# `--workspace` would unify the simulator's features into it. The second run is the
# sandbox build: the simulator's own protocol tests, and wagate's suite again with
# the sandbox compiled in.
cargo nextest run -p wagate -p wagate-actors --no-fail-fast "$@"
cargo nextest run -p wagate-sim -p wagate --features wagate/sandbox --no-fail-fast "$@"
# The API fuzzed against its OpenAPI document with schemathesis, on the sandbox binary the
# run above built (target/debug/wagate).
scripts/schemathesis.sh
