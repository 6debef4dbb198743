#!/usr/bin/env bash
# `make bench`: load-test the service with wrk (see scripts/bench.py for the phases, the
# environment knobs and what is measured). Installs wrk with apt-get when it is missing.
# Results: .bench/results.json and a table on stdout; about 3-4 minutes.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
UV=${UV:-uv}

if ! command -v wrk >/dev/null 2>&1; then
    echo "[bench] installing wrk (apt-get install -y wrk)" >&2
    if ! apt-get install -y -q wrk >/dev/null 2>&1; then
        apt-get update -q >/dev/null
        apt-get install -y -q wrk >/dev/null
    fi
fi

# shellcheck disable=SC2086 # UV may be "python3 -m uv"
exec $UV run --frozen python scripts/bench.py "$@"
