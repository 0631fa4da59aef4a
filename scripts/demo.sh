#!/usr/bin/env bash
# README command 1: set up from nothing and run the main job: the whole pipeline (demo corpus -> ingest ->
# label -> pretrain mert-small-lowcqt (params.yaml pretrain.profile) -> probe with baselines -> register/promote) on CPU, with embedded defaults:
# a local ephemeral Prefect, MLflow in ./mlflow.db, everything else under ./data.
#   scripts/demo.sh [flow options]     e.g. --max-steps 50   (see: .venv/bin/python -m flows.pipeline --help)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=180
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
unset PREFECT_API_URL MLFLOW_TRACKING_URI
python -m flows.pipeline "$@"
cat <<MSG

Done in $(( $(date +%s) - start )) s. Where to look:
  MLflow UI (runs, registry: mert-small-lowcqt @candidate/@champion, probe tags):
      .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1    -> http://127.0.0.1:5000
  probe results and plots    data/probe/mert-small-lowcqt/<task>/*.json, *.png
  ingested corpus            data/corpus/manifest.csv   (rejected files: data/corpus/rejects.csv)
  the same pipeline with DVC .venv/bin/dvc repro        (dvc metrics show, dvc plots show)
MSG
