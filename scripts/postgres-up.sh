#!/usr/bin/env bash
# Start PostgreSQL (Debian's) on 127.0.0.1 with a scratch data dir and a database for MLflow.
#
#   scripts/postgres-up.sh       install if missing, initdb once, start, create role+database;
#                                prints the SQLAlchemy URI for `mlflow server --backend-store-uri`.
#                                Re-running while it is up only prints the URI.
#   scripts/postgres-down.sh     stop it by its recorded PID.
# Env: GM_SCRATCH (default /tmp/gm-bench-services), GM_PG_PORT (default 55432, away from a system
# cluster on 5432). The URI is also written to $GM_SCRATCH/postgres/uri. The role's password is a
# fixed test value: this server listens on 127.0.0.1 only and is for tests and single-host demos.
# The MLflow server needs the driver psycopg2-binary in the venv.
set -euo pipefail
. "$(dirname "$0")/daemon-lib.sh"

BASE="$GM_SCRATCH/postgres"; DATA="$BASE/data"; RUN_DIR="$BASE/run"; LOG_DIR="$BASE/log"
PORT="${GM_PG_PORT:-55432}"
DB=mlflow; ROLE=mlflow; PASSWORD=mlflow
URI="postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and drops to the postgres user)"

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
psql_admin() { as_postgres "$BIN/psql" -h "$RUN_DIR" -p "$PORT" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 "$@"; }

apt_install postgresql
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

if pid_alive postgres && psql_admin -c 'select 1' >/dev/null 2>&1; then
    log "PostgreSQL already up on 127.0.0.1:$PORT"; echo "$URI"; exit 0
fi

t0=$(date +%s)
mkdir -p "$BASE" "$RUN_DIR" "$LOG_DIR"
chown postgres:postgres "$BASE" "$RUN_DIR" "$LOG_DIR"
if [ ! -s "$DATA/PG_VERSION" ]; then
    install -d -o postgres -g postgres -m 0700 "$DATA"
    as_postgres "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 >"$LOG_DIR/initdb.log" 2>&1 || die "initdb failed: see $LOG_DIR/initdb.log"
fi
rm -f "$DATA/postmaster.pid"          # stale after an unclean stop; our own PID file says it is not running
start_daemon postgres setpriv --reuid=postgres --regid=postgres --init-groups -- \
    "$BIN/postgres" -D "$DATA" -h 127.0.0.1 -p "$PORT" -k "$RUN_DIR" -c max_connections=100
wait_for 30 "PostgreSQL on 127.0.0.1:$PORT" psql_admin -c 'select 1'

psql_admin <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE $ROLE;
  END IF;
END \$\$;
ALTER ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';   -- CREATEDB: tests use a fresh database each
SQL
psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
    || psql_admin -c "CREATE DATABASE $DB OWNER $ROLE"
echo "$URI" >"$BASE/uri"
log "PostgreSQL up in $(( $(date +%s) - t0 ))s: database '$DB' at 127.0.0.1:$PORT"
echo "$URI"
