#!/usr/bin/env bash
# Stop what infra/local/start.sh started (and nothing else): the process groups in its pid files. In tiers: the
# workers, then the servers, PostgreSQL last (a fast shutdown: SIGINT to the postmaster, which ends its backends).
# Each tier gets SIGTERM together, 10 s (PostgreSQL 30 s) to exit, then SIGKILL: servers do not always exit on SIGTERM.
set -uo pipefail
cd "$(dirname "$0")/../.."
STATE="${MERT_LOCAL_STATE:-$PWD/.local-services}"

stop_tier() {  # pidfiles...
  local pidfile name pid live=() t0=$SECONDS
  for pidfile in "$@"; do
    name=$(basename "$pidfile" .pid); pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      if [[ "$name" == postgres ]]; then kill -INT "$pid" 2>/dev/null; else kill -TERM -- "-$pid" 2>/dev/null; fi
      live+=("$pidfile")
    else
      rm -f "$pidfile"
    fi
  done
  local tries=20; [[ "${live[*]:-}" == *postgres.pid* ]] && tries=60
  for _ in $(seq 1 "$tries"); do
    local any=0
    for pidfile in "${live[@]}"; do kill -0 "$(cat "$pidfile")" 2>/dev/null && any=1; done
    (( any )) || break
    sleep 0.5
  done
  for pidfile in "${live[@]}"; do
    name=$(basename "$pidfile" .pid); pid=$(cat "$pidfile")
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
    echo "local: stopped $name (pid $pid, $((SECONDS - t0)) s)"
    rm -f "$pidfile"
  done
}

workers=() servers=()
for pidfile in "$STATE"/*.pid; do
  [[ -f "$pidfile" ]] || continue
  case "$(basename "$pidfile")" in
    worker*.pid) workers+=("$pidfile") ;;
    postgres.pid) ;;
    *) servers+=("$pidfile") ;;
  esac
done
(( ${#workers[@]} )) && stop_tier "${workers[@]}"
(( ${#servers[@]} )) && stop_tier "${servers[@]}"
[[ -f "$STATE/postgres.pid" ]] && stop_tier "$STATE/postgres.pid"
exit 0
