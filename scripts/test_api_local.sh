#!/usr/bin/env bash
# `make test-api` without Docker: scripts/test_api.sh against a real server on the local
# stack (PostgreSQL, Kafka and the MockServer bank; 2 uvicorn workers; its own database,
# TEST_API_DB, default payments_api_test), started and stopped by
# scripts/with_local_service.sh.
#
# The exit code is test_api.sh's (or 1 if the server did not shut down cleanly). Extra
# environment (PERF_REQUESTS, BANK_TIMEOUT_TEST, ...) is passed through to test_api.sh.
# The server's log is kept in .stack/logs/test-api-app.log.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The 10 s bank-timeout check runs here too: locally and in CI nothing is skipped.
LOCAL_DB=${TEST_API_DB:-payments_api_test} \
    LOCAL_WORKERS=${TEST_API_WORKERS:-2} \
    LOCAL_READY_TIMEOUT=${TEST_API_READY_TIMEOUT:-60} \
    LOCAL_TAG=test-api LOCAL_LOG_NAME=test-api-app \
    CREATE_MERCHANT=0 ADMIN_TESTS=1 BANK_TIMEOUT_TEST=${BANK_TIMEOUT_TEST:-1} \
    exec bash "$REPO/scripts/with_local_service.sh" bash "$REPO/scripts/test_api.sh"
