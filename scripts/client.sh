#!/usr/bin/env bash
# The typed Python client in clients/python, generated from docs/openapi.json by
# openapi-python-client (the version pinned in uv.lock; settings in
# clients/openapi-python-client.yaml).
#
#   scripts/client.sh generate   regenerate clients/python (`make client`)
#   scripts/client.sh check      fail if clients/python is not what docs/openapi.json
#                                generates (`make client-check`, run by CI)
#
# docs/openapi.json is itself checked against the app (tests/unit/test_docs.py),
# so the two checks together keep the client in step with the API.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
UV=${UV:-uv}
CLIENT_DIR=clients/python

generate_into() {
    "$UV" run --frozen openapi-python-client generate \
        --path docs/openapi.json \
        --config clients/openapi-python-client.yaml \
        --meta uv --fail-on-warning --overwrite \
        --output-path "$1" >/dev/null
    rm -rf "$1/.ruff_cache"
}

case ${1:-} in
generate)
    generate_into "$CLIENT_DIR"
    echo "[client] regenerated $CLIENT_DIR from docs/openapi.json"
    ;;
check)
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    generate_into "$scratch/python"
    if ! diff -r "$CLIENT_DIR" "$scratch/python" >"$scratch/diff"; then
        head -n 60 "$scratch/diff" >&2
        echo "[client] $CLIENT_DIR is out of date with docs/openapi.json: run \`make client\`" >&2
        exit 1
    fi
    echo "[client] $CLIENT_DIR matches docs/openapi.json"
    ;;
*)
    echo "usage: $0 generate|check" >&2
    exit 2
    ;;
esac
