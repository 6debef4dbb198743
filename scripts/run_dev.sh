#!/usr/bin/env bash
# `make run`: the API (uvicorn, in the foreground) and the webhook dispatcher
# (payments-webhooks, in the background), on the same configuration. Ctrl-C or SIGTERM
# stops both: the dispatcher gets SIGTERM and finishes its batch and its deliveries in
# flight. WEBHOOKS=0 serves the API alone.
#
# Without KAFKA_BOOTSTRAP_SERVERS (the embedded default) the dispatcher reads no events;
# it still sends deliveries already recorded and replays (docs/webhooks.md).
set -euo pipefail

UV=${UV:-uv}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
WORKERS=${WORKERS:-1}

dispatcher=""
stop_dispatcher() {
    if [ -n "$dispatcher" ] && kill -0 "$dispatcher" 2>/dev/null; then
        kill -TERM "$dispatcher" 2>/dev/null || true
        wait "$dispatcher" 2>/dev/null || true
    fi
}
trap stop_dispatcher EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "${WEBHOOKS:-1}" != "0" ]; then
    # shellcheck disable=SC2086  # UV may be "python3 -m uv"
    $UV run --frozen payments-webhooks &
    dispatcher=$!
fi

# shellcheck disable=SC2086
$UV run --frozen uvicorn app.main:create_app --factory --host "$HOST" --port "$PORT" \
    --workers "$WORKERS" --no-access-log --timeout-graceful-shutdown 20 &
api=$!
wait "$api"
