#!/usr/bin/env bash
# The three steps behind `prefect deployment run 'mert-pipeline/demo'`, on this machine, on loopback:
#   1. a Prefect server (infra/local/start.sh prefect), or with --team the team stack (start.sh --team: PostgreSQL,
#      MLflow tracking server, Prefect server, two workers; flow runs then log to the tracking server)
#   2. the work pool mert-cpu and a process worker serving it (infra/local/start.sh worker; --team: two)
#   3. the deployments of prefect.yaml, pulled from MERT_PROJECT_DIR (default: this clone)
# then runs the demo deployment and waits for it. Stop everything with infra/local/stop.sh.
#   infra/local/deploy-demo.sh [--team] [--no-run]
set -euo pipefail
cd "$(dirname "$0")/../.."
export MERT_PROJECT_DIR="${MERT_PROJECT_DIR:-$PWD}"
BIN="${MERT_VENV:-$PWD/.venv}/bin"
team=0; run=1
for arg in "$@"; do
  case "$arg" in
    --team) team=1 ;;
    --no-run) run=0 ;;
    *) echo "deploy-demo: unknown option $arg ([--team] [--no-run])" >&2; exit 2 ;;
  esac
done
if (( team )); then
  eval "$(bash infra/local/start.sh --team | grep '^export ')"
  export PREFECT_API_URL MLFLOW_TRACKING_URI
else
  eval "$(bash infra/local/start.sh prefect | grep '^export PREFECT_API_URL')"
  export PREFECT_API_URL
  bash infra/local/start.sh worker >/dev/null
fi
# The GPU deployments target pool mert-gpu: create it (empty) so they deploy; start a worker for it on a GPU host
# with `PREFECT_API_URL=... prefect worker start --pool mert-gpu` (or use infra/k8s/prefect-gpu-job-template.json).
"$BIN/prefect" work-pool inspect mert-gpu >/dev/null 2>&1 || "$BIN/prefect" work-pool create mert-gpu --type process >/dev/null
(cd "$MERT_PROJECT_DIR" && "$BIN/prefect" --no-prompt deploy --all)
(( run )) || exit 0
"$BIN/prefect" deployment run 'mert-pipeline/demo' --watch
