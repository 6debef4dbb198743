#!/usr/bin/env bash
# PostgreSQL first-start initialisation (docker-entrypoint-initdb.d): runs once, as the
# superuser, when the data directory is empty. Passwords come from the container's
# environment (docker-compose.yml interpolates them from .env or the shell).
#
#   payments_owner  owns the database and its schema; Alembic migrates as this role.
#   payments_app    the service: CONNECT, and DML (SELECT/INSERT/UPDATE/DELETE) plus sequence
#                   use on whatever payments_owner creates, through default privileges. It
#                   cannot create, alter or drop anything.
#   datadog         Database Monitoring (pg_monitor, the `datadog` schema and
#                   datadog.explain_statement in every database it samples).
#
# pg_stat_statements is preloaded by the server's command line (docker-compose.yml) and
# created here in both databases.
set -Eeuo pipefail

: "${PAYMENTS_DB:=payments}"
: "${PAYMENTS_OWNER_PASSWORD:?PAYMENTS_OWNER_PASSWORD must be set}"
: "${PAYMENTS_APP_PASSWORD:?PAYMENTS_APP_PASSWORD must be set}"
: "${DATADOG_DB_PASSWORD:?DATADOG_DB_PASSWORD must be set}"

run_sql() {
    local db=$1
    shift
    psql --no-psqlrc --no-password -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" \
        --dbname "$db" "$@"
}

echo "initdb: roles payments_owner, payments_app, datadog; database ${PAYMENTS_DB}"
run_sql "${POSTGRES_DB:-postgres}" \
    -v db="$PAYMENTS_DB" \
    -v owner_password="$PAYMENTS_OWNER_PASSWORD" \
    -v app_password="$PAYMENTS_APP_PASSWORD" \
    -v datadog_password="$DATADOG_DB_PASSWORD" <<'SQL'
CREATE ROLE payments_owner LOGIN PASSWORD :'owner_password';
CREATE ROLE payments_app LOGIN PASSWORD :'app_password';
CREATE ROLE datadog LOGIN INHERIT CONNECTION LIMIT 10 PASSWORD :'datadog_password';
GRANT pg_monitor TO datadog;

CREATE DATABASE :"db" OWNER payments_owner;
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO payments_app, datadog;
-- The maintenance database is for the superuser and the monitoring role only.
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
GRANT CONNECT ON DATABASE postgres TO datadog;
SQL

echo "initdb: default privileges for payments_app in ${PAYMENTS_DB}"
run_sql "$PAYMENTS_DB" <<'SQL'
-- PostgreSQL 15+: public belongs to pg_database_owner (payments_owner) and PUBLIC may not
-- create in it; say so anyway, for servers initialised differently.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO payments_app;

ALTER DEFAULT PRIVILEGES FOR ROLE payments_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO payments_app;
ALTER DEFAULT PRIVILEGES FOR ROLE payments_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO payments_app;
ALTER DEFAULT PRIVILEGES FOR ROLE payments_owner IN SCHEMA public
    GRANT EXECUTE ON FUNCTIONS TO payments_app;
SQL

# Datadog DBM, per Datadog's setup for self-hosted Postgres: in every database the Agent
# samples, the extension, the `datadog` schema and the explain function (SECURITY DEFINER,
# read-only transaction; only the datadog role may call it).
for db in "${POSTGRES_DB:-postgres}" "$PAYMENTS_DB"; do
    echo "initdb: pg_stat_statements and the datadog schema in ${db}"
    run_sql "$db" <<'SQL'
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE SCHEMA IF NOT EXISTS datadog;
GRANT USAGE ON SCHEMA datadog TO datadog;
GRANT USAGE ON SCHEMA public TO datadog;

CREATE OR REPLACE FUNCTION datadog.explain_statement(
    l_query TEXT,
    OUT explain JSON
)
RETURNS SETOF JSON AS
$$
DECLARE
    curs REFCURSOR;
    plan JSON;
BEGIN
    SET TRANSACTION READ ONLY;
    OPEN curs FOR EXECUTE pg_catalog.concat('EXPLAIN (FORMAT JSON) ', l_query);
    FETCH curs INTO plan;
    CLOSE curs;
    RETURN QUERY SELECT plan;
END;
$$
LANGUAGE 'plpgsql'
RETURNS NULL ON NULL INPUT
SECURITY DEFINER;

REVOKE ALL ON FUNCTION datadog.explain_statement(TEXT) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION datadog.explain_statement(TEXT) TO datadog;
SQL
done
echo "initdb: done"
