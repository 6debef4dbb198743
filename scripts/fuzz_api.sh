#!/usr/bin/env bash
# `make fuzz`: schemathesis against a real server, every phase including the stateful one,
# every check that applies (scripts/schemathesis.toml says which and why); fails on any
# failure and on any warning.
#
# The server is served like `make run` (the in-process bank simulator, no Kafka), on its
# own database (FUZZ_DB, default payments_fuzz) with 2 uvicorn workers, by
# scripts/with_local_service.sh, with the examples' merchant (merchant_test_123) accepting
# every currency of the schema.
#
# Environment:
#   FUZZ_MAX_EXAMPLES   test cases per operation and phase (default 30)
#   FUZZ_SEED           reproduce a run (schemathesis prints the seed it used)
#   FUZZ_TIMEOUT        seconds before the run is stopped as failed (default 600)
# Arguments are passed on to `schemathesis run` (e.g. --phases stateful, --report ndjson).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
UV=${UV:-uv}

if [[ ${1:-} != --against-local-service ]]; then
    currencies=$($UV run --frozen python -c \
        'from app.domain.money import CURRENCY_EXPONENTS; print(",".join(sorted(CURRENCY_EXPONENTS)))')
    # The merchant of the schema's examples, so that they are tried as written.
    LOCAL_SERVICES=postgres LOCAL_DB=${FUZZ_DB:-payments_fuzz} LOCAL_WORKERS=2 \
        LOCAL_MERCHANT_ID=merchant_test_123 LOCAL_CURRENCIES=$currencies \
        LOCAL_TAG=fuzz LOCAL_LOG_NAME=fuzz-app \
        exec bash scripts/with_local_service.sh bash "$0" --against-local-service "$@"
fi
shift

seed=()
[[ -n ${FUZZ_SEED:-} ]] && seed=(--seed "$FUZZ_SEED")
FUZZ_API_KEY=$API_KEY \
    timeout --signal=INT --kill-after=30 "${FUZZ_TIMEOUT:-600}" \
    "$UV" run --frozen schemathesis --config-file scripts/schemathesis.toml run \
    "$BASE_URL/openapi.json" --max-examples "${FUZZ_MAX_EXAMPLES:-30}" "${seed[@]}" "$@"
