#!/usr/bin/env bash
# The local stack without Docker: PostgreSQL 15, PgBouncer (transaction pooling, Debian's
# package), ZooKeeper + Kafka 3.9.1, MockServer 5.15.0 and the Datadog APM test agent, each
# on 127.0.0.1.
#
#   scripts/stack.sh up [SERVICE...]     start (all by default); a running service is left alone
#   scripts/stack.sh down [SERVICE...]   stop (all by default); a stopped service is fine
#   scripts/stack.sh status              one line per service
#   scripts/stack.sh logs SERVICE [-f]   tail a service's log
#   scripts/stack.sh pin                 re-fetch the jars and rewrite checksums.sha256
#   scripts/stack.sh purge               stop everything and delete data and logs (not the cache)
#
# Services: postgres pgbouncer zookeeper kafka mockserver testagent.
#
# All state lives under $REPO/.stack (git-ignored): pg/ (cluster, owned by the postgres
# user), pgbouncer/ (its rendered config), zookeeper/, kafka/ (data dirs), logs/, run/ (pid files) and cache/ (jars fetched
# with Maven; STACK_CACHE overrides). Jars are pinned by version and verified against
# scripts/stack/checksums.sha256 on every `up`; Maven only runs when a jar is missing.
#
# PgBouncer comes from apt (`apt-get install pgbouncer`, as root) when it is missing.
#
# Ports (env overrides): POSTGRES_PORT=5432 PGBOUNCER_PORT=6432 ZOOKEEPER_PORT=2181 KAFKA_PORT=9092
# MOCKSERVER_PORT=1080 TESTAGENT_PORT=8126 (+ its OTLP ports TESTAGENT_OTLP_HTTP_PORT=4318,
# TESTAGENT_OTLP_GRPC_PORT=4317). KAFKA_TOPIC=payments.events is created with 3 partitions.
# STACK_TIMEOUT (default 120 s) bounds the wait for each service to answer.
#
# `up` without service names skips what the environment already points elsewhere:
# DATABASE_URL -> postgres and pgbouncer, KAFKA_BOOTSTRAP_SERVERS -> zookeeper + kafka,
# BANK_API_URL -> mockserver.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUPPORT=$REPO/scripts/stack
STACK_DIR=$REPO/.stack
CACHE=${STACK_CACHE:-$STACK_DIR/cache}
LOGS=$STACK_DIR/logs
RUN=$STACK_DIR/run
MANIFEST=$SUPPORT/checksums.sha256

# Pinned versions: changing one means `stack.sh pin` and committing the new manifest.
KAFKA_VERSION=3.9.1
MOCKSERVER_VERSION=5.15.0
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
KAFKA_LIBS_REL=kafka-$KAFKA_VERSION/libs
MOCKSERVER_JAR_REL=mockserver-$MOCKSERVER_VERSION/mockserver-netty-$MOCKSERVER_VERSION-jar-with-dependencies.jar

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
POSTGRES_PORT=${POSTGRES_PORT:-5432}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-6432}
ZOOKEEPER_PORT=${ZOOKEEPER_PORT:-2181}
KAFKA_PORT=${KAFKA_PORT:-9092}
MOCKSERVER_PORT=${MOCKSERVER_PORT:-1080}
TESTAGENT_PORT=${TESTAGENT_PORT:-8126}
TESTAGENT_OTLP_HTTP_PORT=${TESTAGENT_OTLP_HTTP_PORT:-4318}
TESTAGENT_OTLP_GRPC_PORT=${TESTAGENT_OTLP_GRPC_PORT:-4317}
KAFKA_TOPIC=${KAFKA_TOPIC:-payments.events}
KAFKA_TOPIC_PARTITIONS=3
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}
STACK_TIMEOUT=${STACK_TIMEOUT:-120}
MOCKSERVER_EXPECTATIONS=$REPO/deploy/mockserver/expectations.json

PG_DIR=$STACK_DIR/pg
PG_DATA=$PG_DIR/data
PG_SOCKET_DIR=$PG_DIR/run

PGBOUNCER_DIR=$STACK_DIR/pgbouncer

ALL_SERVICES=(postgres pgbouncer zookeeper kafka mockserver testagent)

# `uv run --frozen`: use the locked environment and never rewrite uv.lock as a side
# effect of starting the stack (other people edit pyproject.toml concurrently).
UV_RUN=(uv run --project "$REPO" --frozen)

# ---------------------------------------------------------------------------- helpers

log() { printf '[stack] %s\n' "$*"; }
warn() { printf '[stack] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[stack] ERROR: %s\n' "$*" >&2
    exit 1
}

now_ms() { date +%s%3N; }
# Milliseconds since $1, printed as seconds with one decimal.
elapsed_since() {
    local ms=$(($(now_ms) - $1))
    printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

pid_file() { echo "$RUN/$1.pid"; }

# True while $1 is a live process. A zombie counts as dead: the script's children are
# reparented when it exits, and an exited one may linger unreaped for a moment.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Log files of a service, main log first (the failure report tails all of them).
log_files() {
    case $1 in
    postgres) echo "$LOGS/postgres.log" ;;
    zookeeper | kafka) echo "$LOGS/$1.log $LOGS/$1.out" ;;
    *) echo "$LOGS/$1.log" ;;
    esac
}

print_log_tail() {
    local f
    for f in $(log_files "$1"); do
        [[ -s $f ]] || continue
        printf -- '----- last 40 lines of %s -----\n' "$f" >&2
        tail -n 40 "$f" >&2
    done
}

fail_service() {
    printf '[stack] ERROR: %s: %s\n' "$1" "$2" >&2
    print_log_tail "$1"
    exit 1
}

# PID of a service we started, if that process is still alive. The command line must
# carry the service's marker so a recycled PID is never mistaken for ours.
service_pid() {
    local name=$1 marker=$2 pid
    local file
    file=$(pid_file "$name")
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker"; then
        echo "$pid"
        return 0
    fi
    rm -f "$file" # stale
    return 1
}

# Start "$@" in its own session (so `down` can signal the whole process group, e.g. uv
# and its child) with output appended to $2. setsid does not fork here because a
# background job of a non-interactive shell is not a group leader: $! is the real PID.
spawn() {
    local name=$1 out=$2
    shift 2
    printf '===== %s: stack.sh starting %s\n' "$(date -Is)" "$name" >>"$out"
    setsid "$@" >>"$out" 2>&1 </dev/null &
    echo $! >"$(pid_file "$name")"
}

# Stop the process group led by the pid in run/NAME.pid: SIGTERM, wait, then SIGKILL.
stop_group() {
    local name=$1 marker=$2 grace=$3 pid i
    pid=$(service_pid "$name" "$marker") || {
        log "$name: not running"
        return 0
    }
    local t0
    t0=$(now_ms)
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        warn "$name: still running after ${grace}s, sending SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$(pid_file "$name")"
    log "$name: stopped (pid $pid) in $(elapsed_since "$t0")s"
}

# Poll CHECK (a command) until it succeeds. Fail with the log tail when the process
# ($2, a pid, or "" to skip) dies or STACK_TIMEOUT passes.
wait_ready() {
    local name=$1 pid=$2
    shift 2
    local deadline=$((SECONDS + STACK_TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if [[ -n $pid ]] && ! alive "$pid"; then
            rm -f "$(pid_file "$name")"
            fail_service "$name" "process $pid exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            fail_service "$name" "not ready after ${STACK_TIMEOUT}s (process ${pid:-?} left running; stop it with: $0 down $name)"
        fi
        sleep 0.3
    done
}

require_free_port() {
    port_open "$2" && die "$1: port $2 is already in use by a process this script did not start"
    return 0
}

# Render a template from scripts/stack, replacing @KEY@ with values given as KEY=value.
render() {
    local src=$1 dst=$2
    shift 2
    local expr=() kv
    for kv in "$@"; do
        expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
    done
    sed "${expr[@]}" "$src" >"$dst"
}

# ----------------------------------------------------------------- downloads (Maven)

# Manifest lines (sha256sum format, paths relative to the cache) under a prefix.
manifest_entries() {
    [[ -f $MANIFEST ]] || die "missing $MANIFEST; generate it with: scripts/stack.sh pin"
    grep -E "^[0-9a-f]{64}  $1" "$MANIFEST" || die "no entry for $1 in $MANIFEST; run: scripts/stack.sh pin"
}

all_present() {
    local entries path
    entries=$(manifest_entries "$1") # not a pipe: an early return must not SIGPIPE grep
    while read -r _ path; do
        [[ -f $CACHE/$path ]] || return 1
    done <<<"$entries"
}

# sha256sum -c over the manifest entries, and no jar that the manifest does not list
# (kafka's classpath is libs/*, so a stray jar would be loaded unverified).
verify_cache() {
    local prefix=$1 dir=$2
    (cd "$CACHE" && manifest_entries "$prefix" | sha256sum --check --strict --quiet -) ||
        die "checksum mismatch in $CACHE/$prefix (see above): delete it and run up again; if the pinned versions changed on purpose, run: scripts/stack.sh pin"
    local extra
    extra=$(comm -13 <(manifest_entries "$prefix" | awk '{print $2}' | sort) \
        <(cd "$CACHE" && find "$dir" -name '*.jar' | sort))
    [[ -z $extra ]] || die "unexpected jars in the cache, not in $MANIFEST: $extra"
}

mvn_run() {
    command -v mvn >/dev/null || die "mvn not found (needed once to fetch jars)"
    mkdir -p "$LOGS"
    # A local repository inside the cache: the cache is self-contained and deleting it
    # really means a fresh download.
    if ! mvn -B --no-transfer-progress -Dmaven.repo.local="$CACHE/m2" "$@" >>"$LOGS/maven.log" 2>&1; then
        tail -n 40 "$LOGS/maven.log" >&2
        die "Maven failed (full log: $LOGS/maven.log)"
    fi
}

fetch_kafka() {
    local dir=$CACHE/kafka-$KAFKA_VERSION
    mkdir -p "$dir"
    cp "$SUPPORT/kafka-pom.xml" "$dir/pom.xml"
    rm -rf "$dir/libs.tmp"
    mvn_run -f "$dir/pom.xml" "$DEPENDENCY_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$dir/libs.tmp"
    rm -rf "$dir/libs"
    mv "$dir/libs.tmp" "$dir/libs" # only a complete download becomes libs/
}

fetch_mockserver() {
    local dir=$CACHE/mockserver-$MOCKSERVER_VERSION
    mkdir -p "$dir"
    # dependency:copy needs no project; run it where there is no pom.xml.
    (cd "$dir" && mvn_run "$DEPENDENCY_PLUGIN:copy" \
        -Dartifact="org.mock-server:mockserver-netty:$MOCKSERVER_VERSION:jar:jar-with-dependencies" \
        -DoutputDirectory="$dir")
}

# Make sure a component's jars are in the cache and match the manifest.
declare -A VERIFIED=()
ensure_jars() {
    local what=$1 prefix dir
    [[ -n ${VERIFIED[$what]:-} ]] && return 0
    case $what in
    kafka) prefix=$KAFKA_LIBS_REL/ dir=$KAFKA_LIBS_REL ;;
    mockserver) prefix=$MOCKSERVER_JAR_REL dir=mockserver-$MOCKSERVER_VERSION ;;
    esac
    if ! all_present "$prefix"; then
        local t0
        t0=$(now_ms)
        log "$what: fetching jars with Maven into $CACHE ..."
        "fetch_$what"
        LAST_FETCH=$(elapsed_since "$t0")
        log "$what: fetched in ${LAST_FETCH}s"
    fi
    verify_cache "$prefix" "$dir"
    VERIFIED[$what]=1
}
LAST_FETCH="" ALREADY_RUNNING=""

cmd_pin() {
    log "re-fetching pinned jars into $CACHE and rewriting $MANIFEST"
    rm -rf "$CACHE/kafka-$KAFKA_VERSION" "$CACHE/mockserver-$MOCKSERVER_VERSION"
    fetch_kafka
    fetch_mockserver
    (cd "$CACHE" && find "$KAFKA_LIBS_REL" "$MOCKSERVER_JAR_REL" -name '*.jar' | LC_ALL=C sort |
        xargs sha256sum) >"$MANIFEST.tmp"
    mv "$MANIFEST.tmp" "$MANIFEST"
    log "wrote $(wc -l <"$MANIFEST") entries; review and commit $MANIFEST"
}

# ------------------------------------------------------------------------ postgres

# Run a command as the postgres system user (pg_ctl refuses root); as-is when not root.
as_pg() {
    if ((EUID == 0)); then
        (cd "$PG_DIR" && runuser -u postgres -- "$@")
    else
        (cd "$PG_DIR" && "$@")
    fi
}

# The cluster runs as `postgres`, which needs to traverse every directory down to
# .stack/pg. Fix missing o+x bits on the ancestors (as root) rather than move the
# cluster out of the repo; this is reported, never silent.
ensure_pg_traversable() {
    ((EUID == 0)) || return 0
    local d=$STACK_DIR dirs=()
    while [[ $d != / ]]; do
        dirs=("$d" "${dirs[@]}")
        d=$(dirname "$d")
    done
    for d in "${dirs[@]}"; do
        if ! runuser -u postgres -- test -x "$d"; then
            log "postgres: chmod o+x $d so the postgres user can reach the cluster"
            chmod o+x "$d"
        fi
    done
}

pg_running() { [[ -f $PG_DATA/postmaster.pid ]] && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; }
pg_ready() { as_pg "$PG_BIN/psql" -h "$PG_SOCKET_DIR" -p "$POSTGRES_PORT" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; }

pg_init() {
    mkdir -p "$PG_DIR"
    if ((EUID == 0)); then chown postgres:postgres "$PG_DIR"; fi
    ensure_pg_traversable
    as_pg mkdir -p "$PG_SOCKET_DIR"
    touch "$LOGS/postgres.log"
    if ((EUID == 0)); then chown postgres:postgres "$LOGS/postgres.log"; fi
    if [[ ! -f $PG_DATA/PG_VERSION ]]; then
        log "postgres: initdb $PG_DATA"
        as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 \
            --locale=C.UTF-8 >>"$LOGS/postgres.log" 2>&1 || fail_service postgres "initdb failed"
        echo "include 'stack.conf'" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
    fi
    # Rewritten on every start so port / template changes apply.
    render "$SUPPORT/postgresql.conf" "$STACK_DIR/run/stack.conf" \
        "PORT=$POSTGRES_PORT" "SOCKET_DIR=$PG_SOCKET_DIR"
    as_pg tee "$PG_DATA/stack.conf" <"$STACK_DIR/run/stack.conf" >/dev/null
    as_pg tee "$PG_DATA/pg_hba.conf" <"$SUPPORT/pg_hba.conf" >/dev/null
}

# Role `payments` and its two databases, plus pg_stat_statements in each (for DBM).
pg_bootstrap() {
    local psql=("$PG_BIN/psql" -h "$PG_SOCKET_DIR" -p "$POSTGRES_PORT" -U postgres -v ON_ERROR_STOP=1 -Atq)
    as_pg "${psql[@]}" -d postgres >/dev/null <<'SQL' || fail_service postgres "bootstrap SQL failed"
SELECT 'CREATE ROLE payments LOGIN CREATEDB'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'payments')\gexec
SELECT 'CREATE DATABASE payments OWNER payments'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'payments')\gexec
SELECT 'CREATE DATABASE payments_test OWNER payments'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'payments_test')\gexec
SQL
    local db
    for db in payments payments_test; do
        as_pg "${psql[@]}" -d "$db" -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' \
            >/dev/null 2>&1 || fail_service postgres "CREATE EXTENSION in $db failed"
    done
}

up_postgres() {
    [[ -x $PG_BIN/pg_ctl ]] || die "postgres: $PG_BIN/pg_ctl not found (set PG_BIN)"
    mkdir -p "$LOGS" "$RUN"
    if pg_running; then
        wait_ready postgres "" pg_ready
        pg_bootstrap
        log "postgres: already running on 127.0.0.1:$POSTGRES_PORT"
        ALREADY_RUNNING=1
        return 0
    fi
    require_free_port postgres "$POSTGRES_PORT"
    pg_init
    # -W: don't let pg_ctl wait; wait_ready below gives the common timeout + log tail.
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$LOGS/postgres.log" -W start >/dev/null ||
        fail_service postgres "pg_ctl start failed"
    local pid="" i
    for ((i = 0; i < 50; i++)); do
        [[ -f $PG_DATA/postmaster.pid ]] && pid=$(head -n1 "$PG_DATA/postmaster.pid") && break
        sleep 0.1
    done
    wait_ready postgres "$pid" pg_ready
    pg_bootstrap
}

down_postgres() {
    if ! pg_running; then
        log "postgres: not running"
        return 0
    fi
    local t0
    t0=$(now_ms)
    # fast = roll back open transactions and exit cleanly; the cluster keeps its data.
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -t 60 stop >/dev/null
    log "postgres: stopped in $(elapsed_since "$t0")s"
}

status_postgres() {
    if pg_running; then
        local state=running
        pg_ready || state="running (not answering)"
        echo "postgres|$state|$(head -n1 "$PG_DATA/postmaster.pid")|127.0.0.1:$POSTGRES_PORT"
    else
        echo "postgres|stopped||127.0.0.1:$POSTGRES_PORT"
    fi
}

# ----------------------------------------------------------------------- pgbouncer

PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}

# Debian's package. Its postinst would start the distribution's own instance on port 6432
# where init scripts may run; a policy-rc.d (only if none exists) keeps it from starting.
install_pgbouncer() {
    ((EUID == 0)) || die "pgbouncer: $PGBOUNCER_BIN not found; install it with: sudo apt-get install pgbouncer"
    command -v apt-get >/dev/null || die "pgbouncer: $PGBOUNCER_BIN not found and no apt-get"
    log "pgbouncer: installing Debian's pgbouncer package with apt-get ..."
    local policy=/usr/sbin/policy-rc.d added=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added=1
    fi
    local status=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer ||
            { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer; }
    } >>"$LOGS/apt.log" 2>&1 || status=$?
    [[ -n $added ]] && rm -f "$policy"
    ((status == 0)) || { tail -n 20 "$LOGS/apt.log" >&2; die "pgbouncer: apt-get install failed (log: $LOGS/apt.log)"; }
}

pgbouncer_ready() {
    PGCONNECT_TIMEOUT=3 "$PG_BIN/psql" -h 127.0.0.1 -p "$PGBOUNCER_PORT" -U payments -d payments \
        -Atqc 'select 1' >/dev/null 2>&1
}

up_pgbouncer() {
    mkdir -p "$LOGS" "$RUN"
    local pid
    if pid=$(service_pid pgbouncer "$PGBOUNCER_DIR/pgbouncer.ini"); then
        wait_ready pgbouncer "$pid" pgbouncer_ready
        log "pgbouncer: already running (pid $pid) on 127.0.0.1:$PGBOUNCER_PORT"
        ALREADY_RUNNING=1
        return 0
    fi
    pg_running || die "pgbouncer: PostgreSQL is not running (run: $0 up postgres)"
    [[ -x $PGBOUNCER_BIN ]] || install_pgbouncer
    require_free_port pgbouncer "$PGBOUNCER_PORT"
    mkdir -p "$PGBOUNCER_DIR"
    # Trust auth behind it, but PgBouncer only admits the users its auth_file lists.
    printf '"payments" ""\n"postgres" ""\n' >"$PGBOUNCER_DIR/userlist.txt"
    render "$SUPPORT/pgbouncer.ini" "$PGBOUNCER_DIR/pgbouncer.ini" \
        "PORT=$PGBOUNCER_PORT" "PG_PORT=$POSTGRES_PORT" \
        "AUTH_FILE=$PGBOUNCER_DIR/userlist.txt" "PIDFILE=$PGBOUNCER_DIR/pgbouncer.pid"
    # PgBouncer refuses to run as root: like the cluster, it runs as postgres.
    if ((EUID == 0)); then chown -R postgres:postgres "$PGBOUNCER_DIR"; fi
    ensure_pg_traversable
    local run=("$PGBOUNCER_BIN" "$PGBOUNCER_DIR/pgbouncer.ini")
    if ((EUID == 0)); then run=(runuser -u postgres -- "${run[@]}"); fi
    spawn pgbouncer "$LOGS/pgbouncer.log" "${run[@]}"
    wait_ready pgbouncer "$(<"$(pid_file pgbouncer)")" pgbouncer_ready
}

down_pgbouncer() { stop_group pgbouncer "$PGBOUNCER_DIR/pgbouncer.ini" 20; }
status_pgbouncer() {
    local pid state
    if pid=$(service_pid pgbouncer "$PGBOUNCER_DIR/pgbouncer.ini"); then
        state=running
        pgbouncer_ready || state="running (not answering)"
        echo "pgbouncer|$state|$pid|127.0.0.1:$PGBOUNCER_PORT"
    else
        echo "pgbouncer|stopped||127.0.0.1:$PGBOUNCER_PORT"
    fi
}

# ----------------------------------------------------------------- zookeeper, kafka

KAFKA_CP() { echo "$CACHE/$KAFKA_LIBS_REL/*"; }
JAVA_COMMON=(-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true)

# Send a ZooKeeper four-letter command (whitelisted in zookeeper.properties).
zk_cmd() {
    timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$ZOOKEEPER_PORT; printf $1 >&3; cat <&3" 2>/dev/null || true
}
zk_ready() { [[ $(zk_cmd ruok) == imok ]]; }

# After a hard kill, the broker's ephemeral /brokers/ids/0 survives until its ZooKeeper
# session expires (zookeeper.session.timeout.ms=6000 in server.properties), and a broker
# started before that dies with NodeExistsException. `dump` lists live ephemeral nodes.
wait_broker_unregistered() {
    zk_cmd dump | grep -q '/brokers/ids/0$' || return 0
    log "kafka: previous broker still registered in ZooKeeper (killed?); waiting for its session to expire"
    local deadline=$((SECONDS + 30))
    while zk_cmd dump | grep -q '/brokers/ids/0$'; do
        ((SECONDS < deadline)) || die "kafka: /brokers/ids/0 still registered after 30s; is another broker using ZooKeeper on port $ZOOKEEPER_PORT?"
        sleep 0.5
    done
}

up_zookeeper() {
    mkdir -p "$LOGS" "$RUN" "$STACK_DIR/zookeeper/data"
    local pid
    if pid=$(service_pid zookeeper -Dstack.service=zookeeper); then
        wait_ready zookeeper "$pid" zk_ready
        log "zookeeper: already running (pid $pid) on 127.0.0.1:$ZOOKEEPER_PORT"
        ALREADY_RUNNING=1
        return 0
    fi
    ensure_jars kafka
    require_free_port zookeeper "$ZOOKEEPER_PORT"
    render "$SUPPORT/zookeeper.properties" "$STACK_DIR/zookeeper/zk.properties" \
        "DATA_DIR=$STACK_DIR/zookeeper/data" "PORT=$ZOOKEEPER_PORT"
    spawn zookeeper "$LOGS/zookeeper.out" java -Dstack.service=zookeeper \
        -Xmx256m -Xms64m "${JAVA_COMMON[@]}" \
        -Dlog4j.configuration="file:$SUPPORT/zookeeper-log4j.properties" \
        -Dzookeeper.log.dir="$LOGS" \
        -cp "$(KAFKA_CP)" org.apache.zookeeper.server.quorum.QuorumPeerMain \
        "$STACK_DIR/zookeeper/zk.properties"
    wait_ready zookeeper "$(<"$(pid_file zookeeper)")" zk_ready
}

# The broker is ready when it answers metadata with itself registered and a controller
# elected (a TCP connect succeeds long before that).
kafka_ready() {
    "${UV_RUN[@]}" python "$REPO/scripts/create_topics.py" \
        --bootstrap "127.0.0.1:$KAFKA_PORT" --check --timeout 3
}

create_topic() {
    "${UV_RUN[@]}" python "$REPO/scripts/create_topics.py" --bootstrap "127.0.0.1:$KAFKA_PORT" \
        --topic "$KAFKA_TOPIC" --partitions "$KAFKA_TOPIC_PARTITIONS" --replication-factor 1 \
        --timeout 30 | sed 's/^/[stack] kafka: topic /' ||
        fail_service kafka "could not create topic $KAFKA_TOPIC"
}

up_kafka() {
    mkdir -p "$LOGS" "$RUN" "$STACK_DIR/kafka/data"
    local pid
    if pid=$(service_pid kafka -Dstack.service=kafka); then
        wait_ready kafka "$pid" kafka_ready
        create_topic
        log "kafka: already running (pid $pid) on 127.0.0.1:$KAFKA_PORT"
        ALREADY_RUNNING=1
        return 0
    fi
    zk_ready || die "kafka: ZooKeeper is not answering on 127.0.0.1:$ZOOKEEPER_PORT (run: $0 up zookeeper)"
    ensure_jars kafka
    require_free_port kafka "$KAFKA_PORT"
    wait_broker_unregistered
    render "$SUPPORT/server.properties" "$STACK_DIR/kafka/server.properties" \
        "DATA_DIR=$STACK_DIR/kafka/data" "PORT=$KAFKA_PORT" "ZOOKEEPER_PORT=$ZOOKEEPER_PORT"
    # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS holds several JVM flags
    spawn kafka "$LOGS/kafka.out" java -Dstack.service=kafka $KAFKA_HEAP_OPTS \
        "${JAVA_COMMON[@]}" -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent \
        -Dlog4j.configuration="file:$SUPPORT/kafka-log4j.properties" \
        -Dkafka.logs.dir="$LOGS" \
        -cp "$(KAFKA_CP)" kafka.Kafka "$STACK_DIR/kafka/server.properties"
    wait_ready kafka "$(<"$(pid_file kafka)")" kafka_ready
    create_topic
}

# Kafka gets a long grace period: a controlled shutdown flushes logs and lets the next
# start skip recovery; SIGKILL only if it hangs (e.g. ZooKeeper already gone).
down_kafka() { stop_group kafka -Dstack.service=kafka 60; }
down_zookeeper() {
    # Kafka cannot shut down cleanly without ZooKeeper: stop it first.
    if service_pid kafka -Dstack.service=kafka >/dev/null; then down_kafka; fi
    stop_group zookeeper -Dstack.service=zookeeper 20
}

status_java() {
    local name=$1 port=$2 check=$3 pid state
    if pid=$(service_pid "$name" "-Dstack.service=$name"); then
        state=running
        "$check" >/dev/null 2>&1 || state="running (not answering)"
        echo "$name|$state|$pid|127.0.0.1:$port"
    else
        echo "$name|stopped||127.0.0.1:$port"
    fi
}
status_zookeeper() { status_java zookeeper "$ZOOKEEPER_PORT" zk_ready; }
status_kafka() { status_java kafka "$KAFKA_PORT" kafka_ready; }

# ---------------------------------------------------------------------- mockserver

mockserver_ready() {
    curl -fsS -o /dev/null -m 3 -X PUT "http://127.0.0.1:$MOCKSERVER_PORT/mockserver/status"
}

up_mockserver() {
    mkdir -p "$LOGS" "$RUN"
    local pid
    if pid=$(service_pid mockserver -Dstack.service=mockserver); then
        wait_ready mockserver "$pid" mockserver_ready
        log "mockserver: already running (pid $pid) on 127.0.0.1:$MOCKSERVER_PORT"
        ALREADY_RUNNING=1
        return 0
    fi
    [[ -f $MOCKSERVER_EXPECTATIONS ]] || die "mockserver: $MOCKSERVER_EXPECTATIONS is missing"
    ensure_jars mockserver
    require_free_port mockserver "$MOCKSERVER_PORT"
    # localBoundIP: listen on loopback only (MockServer binds 0.0.0.0 by default).
    spawn mockserver "$LOGS/mockserver.log" java -Dstack.service=mockserver \
        -Xmx256m -Xms64m "${JAVA_COMMON[@]}" \
        -Dmockserver.localBoundIP=127.0.0.1 \
        -Dmockserver.initializationJsonPath="$MOCKSERVER_EXPECTATIONS" \
        -Dmockserver.logLevel=WARN \
        -jar "$CACHE/$MOCKSERVER_JAR_REL" -serverPort "$MOCKSERVER_PORT"
    wait_ready mockserver "$(<"$(pid_file mockserver)")" mockserver_ready
}

down_mockserver() { stop_group mockserver -Dstack.service=mockserver 20; }
status_mockserver() { status_java mockserver "$MOCKSERVER_PORT" mockserver_ready; }

# ----------------------------------------------------------------------- testagent

testagent_ready() { curl -fsS -o /dev/null -m 3 "http://127.0.0.1:$TESTAGENT_PORT/info"; }

up_testagent() {
    mkdir -p "$LOGS" "$RUN"
    local pid
    if pid=$(service_pid testagent ddapm-test-agent); then
        wait_ready testagent "$pid" testagent_ready
        log "testagent: already running (pid $pid) on 127.0.0.1:$TESTAGENT_PORT"
        ALREADY_RUNNING=1
        return 0
    fi
    require_free_port testagent "$TESTAGENT_PORT"
    # The test agent is a dev dependency of the project: run it from the locked venv.
    spawn testagent "$LOGS/testagent.log" "${UV_RUN[@]}" ddapm-test-agent \
        --host 127.0.0.1 --port "$TESTAGENT_PORT" \
        --otlp-http-port "$TESTAGENT_OTLP_HTTP_PORT" --otlp-grpc-port "$TESTAGENT_OTLP_GRPC_PORT"
    wait_ready testagent "$(<"$(pid_file testagent)")" testagent_ready
}

down_testagent() { stop_group testagent ddapm-test-agent 20; }
status_testagent() {
    local pid state
    if pid=$(service_pid testagent ddapm-test-agent); then
        state=running
        testagent_ready || state="running (not answering)"
        echo "testagent|$state|$pid|127.0.0.1:$TESTAGENT_PORT"
    else
        echo "testagent|stopped||127.0.0.1:$TESTAGENT_PORT"
    fi
}

# ------------------------------------------------------------------------ commands

valid_service() {
    local s
    for s in "${ALL_SERVICES[@]}"; do [[ $s == "$1" ]] && return 0; done
    die "unknown service '$1' (one of: ${ALL_SERVICES[*]})"
}

# Echo the requested services in ALL_SERVICES order (start order; reversed for down).
ordered() {
    local s r
    for s in "${ALL_SERVICES[@]}"; do
        for r in "$@"; do [[ $r == "$s" ]] && echo "$s" && break; done
    done
}

cmd_up() {
    local requested=("$@") s
    if ((${#requested[@]} == 0)); then
        requested=()
        for s in "${ALL_SERVICES[@]}"; do
            case $s in
            postgres | pgbouncer) [[ -n ${DATABASE_URL:-} ]] && { log "$s: skipped, DATABASE_URL is set"; continue; } ;;
            zookeeper | kafka) [[ -n ${KAFKA_BOOTSTRAP_SERVERS:-} ]] && { log "$s: skipped, KAFKA_BOOTSTRAP_SERVERS is set"; continue; } ;;
            mockserver) [[ -n ${BANK_API_URL:-} ]] && { log "mockserver: skipped, BANK_API_URL is set"; continue; } ;;
            esac
            requested+=("$s")
        done
    else
        for s in "${requested[@]}"; do valid_service "$s"; done
        # Kafka runs on ZooKeeper: `up kafka` brings it along (a no-op if it is running);
        # PgBouncer in front of PostgreSQL likewise.
        if [[ " ${requested[*]} " == *" kafka "* ]]; then requested+=(zookeeper); fi
        if [[ " ${requested[*]} " == *" pgbouncer "* ]]; then requested+=(postgres); fi
    fi
    local summary=() t0 took
    for s in $(ordered "${requested[@]}"); do
        t0=$(now_ms)
        LAST_FETCH="" ALREADY_RUNNING=""
        "up_$s"
        took=$(elapsed_since "$t0")
        if [[ -n $ALREADY_RUNNING ]]; then
            summary+=("$(printf '%-10s %6ss  (already running)' "$s" "$took")")
            continue
        fi
        log "$s: ready in ${took}s${LAST_FETCH:+ (of which jar download ${LAST_FETCH}s)}"
        summary+=("$(printf '%-10s %6ss%s' "$s" "$took" "${LAST_FETCH:+  (incl. download ${LAST_FETCH}s)}")")
    done
    log "start times (seconds until the service answered):"
    for s in "${summary[@]}"; do log "  $s"; done
}

cmd_down() {
    local requested=("$@") s
    if ((${#requested[@]} == 0)); then requested=("${ALL_SERVICES[@]}"); fi
    for s in "${requested[@]}"; do valid_service "$s"; done
    for s in $(ordered "${requested[@]}" | tac); do "down_$s"; done
}

cmd_status() {
    {
        echo "SERVICE|STATE|PID|ADDRESS"
        for s in "${ALL_SERVICES[@]}"; do "status_$s"; done
    } | column -t -s '|'
}

cmd_logs() {
    (($# >= 1)) || die "usage: $0 logs SERVICE [-f]"
    valid_service "$1"
    local main
    main=$(log_files "$1" | awk '{print $1}')
    [[ -f $main ]] || die "no log yet: $main"
    if [[ ${2:-} == -f ]]; then exec tail -n 100 -F "$main"; fi
    tail -n "${LINES_TO_SHOW:-200}" "$main"
}

cmd_purge() {
    cmd_down
    log "deleting data and logs under $STACK_DIR (keeping the cache)"
    rm -rf "$PG_DIR" "$PGBOUNCER_DIR" "$STACK_DIR/zookeeper" "$STACK_DIR/kafka" "$LOGS" "$RUN"
}

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    pin) cmd_pin ;;
    purge) cmd_purge ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
