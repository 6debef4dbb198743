#!/usr/bin/env bash
# `make bench`: load-test the service with wrk (closed loop) and vegeta (open loop); see
# scripts/bench.py for the phases, the environment knobs and what is measured. Installs
# wrk with apt-get and builds vegeta with Go when they are missing.
# Results: .bench/results.json, .bench/report.html and tables on stdout; about 6 minutes.
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

# vegeta (the open-loop phases), pinned, built from its Go module with the machine's Go
# into .stack/bin (git-ignored) and reused while its module version is the pinned one
# (as scripts/helm_check.sh does for helm). The first build takes about a minute.
VEGETA_PIN=github.com/tsenart/vegeta/v12@v12.13.0 # also in scripts/bench_openloop.py
BIN_DIR=$REPO/.stack/bin
built_from() {
    go version -m "$1" 2>/dev/null | awk '$1 == "path" {path = $2} $1 == "mod" {print path "@" $3; exit}'
}
if [[ $(built_from "$BIN_DIR/vegeta") != "$VEGETA_PIN" ]]; then
    command -v go >/dev/null || { echo "bench needs Go to build $VEGETA_PIN" >&2; exit 2; }
    echo "[bench] go install $VEGETA_PIN into .stack/bin" >&2
    mkdir -p "$BIN_DIR"
    GOBIN=$BIN_DIR go install "$VEGETA_PIN"
fi

# shellcheck disable=SC2086 # UV may be "python3 -m uv"
exec $UV run --frozen python scripts/bench.py "$@"
