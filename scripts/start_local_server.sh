#!/usr/bin/env bash
# Start a PostgreSQL-backed Prefect server on 127.0.0.1 for local use (Ctrl-C stops both).
#
# Usage: scripts/start_local_server.sh [DATA_DIR] [PORT]
#   DATA_DIR  where the PostgreSQL cluster lives (default: ./out/postgres; kept between runs)
#   PORT      the Prefect server's port (default: 4200; PostgreSQL listens on PORT+1000)
# As root, PostgreSQL runs as the `postgres` user. Needs scripts/install_system_deps.sh.
set -euo pipefail
DATA_DIR="$(realpath -m "${1:-out/postgres}")"
PORT="${2:-4200}"
PG_PORT=$((PORT + 1000))
PG_BIN="$(dirname "$(ls /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -1 || command -v postgres)")"
AS_PG=()
PG_USER="$(id -un)"
if [ "$(id -u)" -eq 0 ]; then AS_PG=(runuser -u postgres --); PG_USER=postgres; fi

mkdir -p "$DATA_DIR"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$DATA_DIR"
if [ ! -f "$DATA_DIR/PG_VERSION" ]; then
    "${AS_PG[@]}" "$PG_BIN/initdb" -D "$DATA_DIR" -U "$PG_USER" --auth=trust -E UTF8 >/dev/null
fi
"${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$DATA_DIR" -l "$DATA_DIR/postgres.log" -w \
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$DATA_DIR" start
trap '"${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$DATA_DIR" -m fast -w stop' EXIT
"${AS_PG[@]}" "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" prefect 2>/dev/null || true

export PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://$PG_USER@127.0.0.1:$PG_PORT/prefect"
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
echo "Prefect UI: http://127.0.0.1:$PORT  (clients: export PREFECT_API_URL=http://127.0.0.1:$PORT/api)"
prefect server start --host 127.0.0.1 --port "$PORT"
