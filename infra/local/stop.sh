#!/usr/bin/env bash
# Stop what infra/local/start.sh started (and nothing else): the process groups in its pid files.
set -uo pipefail
cd "$(dirname "$0")/../.."
STATE="${MERT_LOCAL_STATE:-$PWD/.local-services}"
for pidfile in "$STATE"/*.pid; do
  [[ -f "$pidfile" ]] || continue
  name=$(basename "$pidfile" .pid); pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null   # servers do not always exit on SIGTERM
    echo "local: stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
done
