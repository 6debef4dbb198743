#!/usr/bin/env bash
# Run the whole test suite against the local stack, starting what is not already running
# and stopping, afterwards, only what this script started. Extra arguments go to pytest.
# TEST_POOLER_SERVER=postgresql+asyncpg://payments@127.0.0.1:6432 runs the service under
# test through the stack's PgBouncer (tests/conftest.py); `make test-pgbouncer` does that
# for the end-to-end suite.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
UV="${UV:-uv}"
SERVICES=(postgres pgbouncer zookeeper kafka mockserver testagent)

running_before=$(bash scripts/stack.sh status 2>/dev/null | awk '$2 == "running" {print $1}' || true)
started=()
for service in "${SERVICES[@]}"; do
  if ! grep -qx "$service" <<<"$running_before"; then
    started+=("$service")
  fi
done

cleanup() {
  local status=$?
  if ((${#started[@]})); then
    echo "[test] stopping what this run started: ${started[*]}"
    bash scripts/stack.sh down "${started[@]}" || true
  fi
  exit "$status"
}
trap cleanup EXIT

bash scripts/stack.sh up "${SERVICES[@]}"

$UV run --frozen pytest --cov --cov-report=term-missing:skip-covered --cov-report=xml "$@"
