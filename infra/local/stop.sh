#!/usr/bin/env bash
# Stop what infra/local/start.sh started (and nothing else): the process groups in its pid files, the workers first,
# then the servers, PostgreSQL last (a fast shutdown: SIGINT to the postmaster, which ends its backends).
set -uo pipefail
cd "$(dirname "$0")/../.."
STATE="${MERT_LOCAL_STATE:-$PWD/.local-services}"
order=()
for pidfile in "$STATE"/worker*.pid; do [[ -f "$pidfile" ]] && order+=("$pidfile"); done
for pidfile in "$STATE"/*.pid; do
  [[ -f "$pidfile" && "$pidfile" != */worker*.pid && "$pidfile" != */postgres.pid ]] && order+=("$pidfile")
done
[[ -f "$STATE/postgres.pid" ]] && order+=("$STATE/postgres.pid")
for pidfile in "${order[@]}"; do
  name=$(basename "$pidfile" .pid); pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    if [[ "$name" == postgres ]]; then kill -INT "$pid" 2>/dev/null; tries=60; else kill -TERM -- "-$pid" 2>/dev/null; tries=20; fi
    for _ in $(seq 1 "$tries"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null   # servers do not always exit on SIGTERM
    echo "local: stopped $name (pid $pid, $SECONDS s)"
  fi
  rm -f "$pidfile"
done
