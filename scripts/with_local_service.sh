#!/usr/bin/env bash
# Run a command against a real server on the local stack, no Docker, then take everything
# down again. `make test-api` (scripts/test_api_local.sh) and `make fuzz`
# (scripts/fuzz_api.sh) run their checks this way.
#
#   scripts/with_local_service.sh COMMAND [ARG...]
#
#   1. start the stack services the run needs (LOCAL_SERVICES, default: postgres zookeeper
#      kafka mockserver; scripts/stack.sh), remembering which were not running before;
#   2. recreate a dedicated database (LOCAL_DB, default payments_api_test) and run
#      `alembic upgrade head` on it;
#   3. serve the app with uvicorn (LOCAL_WORKERS, default 2) on a free 127.0.0.1 port, with
#      the MockServer bank and Kafka when they are among the services (else the in-process
#      simulator and no broker, like `make run`), and wait for /health/ready;
#   4. create a merchant with payments-admin (LOCAL_MERCHANT_ID, default a unique id)
#      accepting LOCAL_CURRENCIES (default USD,EUR,GBP,JPY), then run COMMAND with
#      BASE_URL, API_KEY and MERCHANT_ID exported;
#   5. SIGTERM the server and check that it and its workers exit cleanly, then stop the
#      stack services this run started.
#
# The exit code is COMMAND's (or 1 if the server did not shut down cleanly). The server's
# log is appended to .stack/logs/LOCAL_LOG_NAME.log (default test-api-app).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
(($#)) || {
    echo "usage: $0 COMMAND [ARG...]" >&2
    exit 2
}
UV=${UV:-uv}
read -r -a SERVICES <<<"${LOCAL_SERVICES:-postgres zookeeper kafka mockserver}"
PG_PORT=${POSTGRES_PORT:-5432}
KAFKA_PORT=${KAFKA_PORT:-9092}
MOCKSERVER_PORT=${MOCKSERVER_PORT:-1080}
TEST_DB=${LOCAL_DB:-payments_api_test}
WORKERS=${LOCAL_WORKERS:-2}
CURRENCIES=${LOCAL_CURRENCIES:-USD,EUR,GBP,JPY}
LOG_NAME=${LOCAL_LOG_NAME:-test-api-app}
TAG=${LOCAL_TAG:-test-api}
APP_LOG=$REPO/.stack/logs/$LOG_NAME.log
READY_TIMEOUT=${LOCAL_READY_TIMEOUT:-60}

log() { printf '[%s] %s\n' "$TAG" "$*"; }
die() {
    printf '[%s] ERROR: %s\n' "$TAG" "$*" >&2
    exit 1
}

[[ $TEST_DB =~ ^[a-z_][a-z0-9_]*$ ]] || die "LOCAL_DB must be a plain lower-case identifier"
if ! command -v jq >/dev/null 2>&1 && ((EUID == 0)) && command -v apt-get >/dev/null 2>&1; then
    log "jq is missing: installing it with apt-get"
    apt-get install -y -qq jq >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq jq >/dev/null; } ||
        die "could not install jq with apt-get"
fi
for tool in curl jq psql; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required (apt-get install -y $tool)"
done

running_before=$(bash scripts/stack.sh status 2>/dev/null | awk '$2 == "running" {print $1}' || true)
started=()
for service in "${SERVICES[@]}"; do
    grep -qx "$service" <<<"$running_before" || started+=("$service")
done

APP_PID=""
APP_WORKERS=""
SHUTDOWN_CLEAN=1

alive() { kill -0 "$1" 2>/dev/null; }

# shellcheck disable=SC2317 # stop_app and cleanup run from the EXIT trap
# SIGTERM the server (the uvicorn supervisor), wait for it, and check its exit status and
# that none of its workers outlived it.
stop_app() {
    [[ -n $APP_PID ]] || return 0
    local pid=$APP_PID status=0 i
    APP_PID=""
    APP_WORKERS=$(pgrep -P "$pid" | tr '\n' ' ' || true)
    log "stopping the server (pid $pid, workers: ${APP_WORKERS:-none}) with SIGTERM"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        log "server still running after 30s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        SHUTDOWN_CLEAN=0
    fi
    wait "$pid" 2>/dev/null || status=$?
    # Workers (and multiprocessing's resource tracker) may need a moment after the
    # supervisor is gone.
    local worker left=""
    for ((i = 0; i < 50; i++)); do
        left=""
        for worker in $APP_WORKERS; do
            alive "$worker" && left+=" $worker"
        done
        [[ -z $left ]] && break
        sleep 0.1
    done
    if [[ -n $left ]]; then
        log "workers still running after the server exited:$left (killing them)"
        # shellcheck disable=SC2086 # a list of pids
        kill -KILL $left 2>/dev/null || true
        SHUTDOWN_CLEAN=0
    fi
    if ((status != 0)); then
        log "server exited with status $status (see $APP_LOG)"
        SHUTDOWN_CLEAN=0
    elif ((SHUTDOWN_CLEAN)); then
        log "server exited cleanly (status 0, no worker left behind)"
    fi
}

# shellcheck disable=SC2317
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_app
    if ((${#started[@]})); then
        log "stopping what this run started: ${started[*]}"
        bash scripts/stack.sh down "${started[@]}" || true
    fi
    if ((status == 0 && !SHUTDOWN_CLEAN)); then
        log "FAILED: the server did not shut down cleanly"
        status=1
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash scripts/stack.sh up "${SERVICES[@]}"

export DATABASE_URL="postgresql+asyncpg://payments@127.0.0.1:$PG_PORT/$TEST_DB"
log "recreating database $TEST_DB"
# An autovacuum worker (a superuser's process, which FORCE may not end) can hold the
# database for a moment after the previous run: try again shortly.
for attempt in 1 2 3 4 5 6 7 8 9 10; do
    psql -h 127.0.0.1 -p "$PG_PORT" -U payments -d postgres -v ON_ERROR_STOP=1 -qAt \
        -c "DROP DATABASE IF EXISTS $TEST_DB WITH (FORCE)" >/dev/null && break
    ((attempt < 10)) || die "could not drop database $TEST_DB"
    sleep 1
done
psql -h 127.0.0.1 -p "$PG_PORT" -U payments -d postgres -v ON_ERROR_STOP=1 -qAt \
    -c "CREATE DATABASE $TEST_DB OWNER payments" >/dev/null
$UV run --frozen alembic upgrade head

PORT=$($UV run --frozen python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
UVICORN=$($UV run --frozen python -c 'import shutil; print(shutil.which("uvicorn") or "")')
[[ -x $UVICORN ]] || die "uvicorn not found in the project environment"
BASE_URL="http://127.0.0.1:$PORT"

# Kafka and the MockServer bank when the run starts them; else no broker (events wait in
# the outbox) and the in-process bank simulator, as `make run` serves.
KAFKA="" BANK=""
for service in "${SERVICES[@]}"; do
    case $service in
    kafka) KAFKA="127.0.0.1:$KAFKA_PORT" ;;
    mockserver) BANK="http://127.0.0.1:$MOCKSERVER_PORT" ;;
    esac
done
# Everything the server reads is set here, so a developer's .env cannot redirect the run.
export APP_ENV=test \
    BANK_API_URL="$BANK" \
    KAFKA_BOOTSTRAP_SERVERS="$KAFKA" \
    DD_TRACE_ENABLED=false \
    METRICS_ENABLED=false \
    LOG_LEVEL=${LOG_LEVEL:-WARNING}

mkdir -p "$(dirname "$APP_LOG")"
printf '===== %s: %s starting the server on %s\n' "$(date -Is)" "$TAG" "$BASE_URL" >>"$APP_LOG"
# The uvicorn binary itself, not `uv run`: SIGTERM then reaches the server directly.
"$UVICORN" app.main:create_app --factory --host 127.0.0.1 --port "$PORT" --workers "$WORKERS" \
    --no-access-log --timeout-graceful-shutdown 20 >>"$APP_LOG" 2>&1 &
APP_PID=$!
log "server pid $APP_PID on $BASE_URL ($WORKERS workers), log: $APP_LOG"

deadline=$((SECONDS + READY_TIMEOUT))
until curl -fsS -o /dev/null -m 2 "$BASE_URL/health/ready" 2>/dev/null; do
    if ! alive "$APP_PID"; then
        tail -n 40 "$APP_LOG" >&2
        APP_PID=""
        die "the server exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
        tail -n 40 "$APP_LOG" >&2
        die "the server was not ready after ${READY_TIMEOUT}s"
    fi
    sleep 0.3
done
log "server ready"

MERCHANT_ID=${LOCAL_MERCHANT_ID:-"${TAG//-/_}_$(date +%s)_$$"}
API_KEY="sk_test_$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
$UV run --frozen payments-admin create-merchant "$MERCHANT_ID" --api-key "$API_KEY" \
    --currencies "$CURRENCIES" >/dev/null
log "created merchant $MERCHANT_ID"

set +e
BASE_URL=$BASE_URL API_KEY=$API_KEY MERCHANT_ID=$MERCHANT_ID "$@"
status=$?
set -e
exit "$status"
