#!/usr/bin/env bash
# `make soak`: a bounded soak and fault drill (SOAK_SECONDS, default 180 s): mixed load
# while Kafka restarts twice, PostgreSQL once, the bank turns slow and a worker is
# SIGKILLed, and two webhook dispatchers deliver every event to a receiver the drill runs
# (taken down for a few seconds), then invariant checks (among them: every request the bank
# received has a row whose final status is the bank's decision; every event of the
# registered merchant reached the receiver, signature verified). See scripts/soak.py.
# Exit status: 0 all invariants hold, 1 one failed, 2 the drill could not run.
#
# It restarts the local stack's PostgreSQL and Kafka: on a machine others share, point
# STACK_SCRIPT and the *_PORT variables at a private copy of the stack (docs/performance.md).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
UV=${UV:-uv}

# shellcheck disable=SC2086 # UV may be "python3 -m uv"
exec $UV run --frozen python scripts/soak.py "$@"
