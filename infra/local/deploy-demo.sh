#!/usr/bin/env bash
# The three steps behind `prefect deployment run 'mert-pipeline/demo'`, on this machine, on loopback:
#   1. a Prefect server (infra/local/start.sh prefect)
#   2. the work pool mert-cpu and a process worker serving it (infra/local/start.sh worker)
#   3. the deployments of prefect.yaml, pulled from MERT_PROJECT_DIR (default: this clone)
# then runs the demo deployment and waits for it. Stop everything with infra/local/stop.sh.
#   infra/local/deploy-demo.sh [--no-run]
set -euo pipefail
cd "$(dirname "$0")/../.."
export MERT_PROJECT_DIR="${MERT_PROJECT_DIR:-$PWD}"
BIN="${MERT_VENV:-$PWD/.venv}/bin"
eval "$(bash infra/local/start.sh prefect | grep '^export PREFECT_API_URL')"
export PREFECT_API_URL
bash infra/local/start.sh worker >/dev/null
(cd "$MERT_PROJECT_DIR" && "$BIN/prefect" --no-prompt deploy --all)
[[ "${1:-}" == "--no-run" ]] && exit 0
"$BIN/prefect" deployment run 'mert-pipeline/demo' --watch
