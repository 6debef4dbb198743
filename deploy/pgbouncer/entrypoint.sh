#!/usr/bin/env bash
# Write PgBouncer's auth file from the environment, then run it in the foreground.
# PgBouncer authenticates clients with SCRAM against these passwords and logs in to
# PostgreSQL with the same ones (a plain-text entry lets it do both).
set -Eeuo pipefail

: "${PGBOUNCER_USER:?PGBOUNCER_USER must be set}"
: "${PGBOUNCER_PASSWORD:?PGBOUNCER_PASSWORD must be set}"

umask 077
mkdir -p /tmp/pgbouncer
quote() { printf '"%s"' "${1//\"/\"\"}"; }
printf '%s %s\n' "$(quote "$PGBOUNCER_USER")" "$(quote "$PGBOUNCER_PASSWORD")" \
    >/tmp/pgbouncer/userlist.txt

exec pgbouncer /etc/pgbouncer/pgbouncer.ini
