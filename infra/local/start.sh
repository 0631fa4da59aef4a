#!/usr/bin/env bash
# Start a local Prefect server, MLflow server and Prefect process worker natively (no Docker), bound to
# 127.0.0.1, with their state under .local-services/ (sqlite DBs, artifacts, logs, pid files).
# Idempotent; prints the env to use.
#   infra/local/start.sh [prefect|mlflow|worker ...]     (default: prefect mlflow)
# The worker serves pool $PREFECT_WORK_POOL (default mert-cpu; created if missing) against the local server.
set -euo pipefail
cd "$(dirname "$0")/../.."
STATE="${MERT_LOCAL_STATE:-$PWD/.local-services}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
WORKER_PORT="${WORKER_PORT:-8081}"
POOL="${PREFECT_WORK_POOL:-mert-cpu}"
BIN="${MERT_VENV:-$PWD/.venv}/bin"
mkdir -p "$STATE"
export PREFECT_HOME="$STATE/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1

running() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

wait_http() {  # name url timeout_s
  local deadline=$(( $(date +%s) + $3 ))
  until "$BIN/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$2" 2>/dev/null; do
    if (( $(date +%s) > deadline )); then echo "local: $1 did not answer at $2 (log: $STATE/$1.log)" >&2; return 1; fi
    sleep 1
  done
}

start() {  # name url cmd...
  local name=$1 url=$2; shift 2
  if running "$name"; then echo "local: $name already running (pid $(cat "$STATE/$name.pid"))"; return; fi
  setsid "$@" >"$STATE/$name.log" 2>&1 < /dev/null &   # own process group: stop.sh kills exactly this group
  echo $! > "$STATE/$name.pid"
  wait_http "$name" "$url" 180
  echo "local: $name up at $url (pid $(cat "$STATE/$name.pid"))"
}

services=("$@"); (( ${#services[@]} )) || services=(prefect mlflow)
for s in "${services[@]}"; do
  case "$s" in
    prefect) start prefect "http://127.0.0.1:$PREFECT_PORT/api/health" \
               "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT" ;;
    mlflow)  mkdir -p "$STATE/mlartifacts"
             start mlflow "http://127.0.0.1:$MLFLOW_PORT/health" \
               "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
               --backend-store-uri "sqlite:///$STATE/mlflow.db" --artifacts-destination "$STATE/mlartifacts" ;;
    worker)  export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
             "$BIN/prefect" work-pool inspect "$POOL" >/dev/null 2>&1 \
               || "$BIN/prefect" work-pool create "$POOL" --type process >/dev/null
             PREFECT_WORKER_WEBSERVER_HOST=127.0.0.1 PREFECT_WORKER_WEBSERVER_PORT="$WORKER_PORT" \
               start worker "http://127.0.0.1:$WORKER_PORT/health" \
               "$BIN/prefect" worker start --pool "$POOL" --type process --with-healthcheck ;;
    *) echo "local: unknown service $s (prefect|mlflow|worker)" >&2; exit 2 ;;
  esac
done
cat <<ENV
export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
ENV
