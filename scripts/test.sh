#!/usr/bin/env bash
# README command 2: set up from nothing and run the tests.
#   scripts/test.sh            the default suite (fast; slow end-to-end tests are deselected)
#   scripts/test.sh -m slow    only the slow end-to-end tests
#   extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
exec .venv/bin/python -m pytest "$@"
