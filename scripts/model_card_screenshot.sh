#!/usr/bin/env bash
# A registered version's model card in the MLflow UI, rendered by headless Chromium -> a PNG (docs/model-card.png).
#   usage: scripts/model_card_screenshot.sh [WORK_DIR] [OUT_PNG]
# A small real run in WORK_DIR (default: a temp dir): demo corpus -> ingest -> label -> pretrain mert-tiny (registers
# version 1 with its card) -> probe pitch and key with --mlflow (the card gets the probe table) -> `mlflow server` on
# loopback -> Chromium screenshot of the version page; the rendered DOM is checked for the card's sections.
# Needs the .venv (scripts/setup.sh) and Chromium (Debian: apt-get install chromium). Run as root, Chromium needs
# --no-sandbox. About 10 minutes on 2 CPU cores.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(realpath -m "${1:-$(mktemp -d)}")"
out="$(realpath -m "${2:-$repo/docs/model-card.png}")"
chrome="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[[ -n "$chrome" ]] || { echo "model_card_screenshot: Chromium not found (apt-get install chromium)" >&2; exit 1; }
mkdir -p "$work" && cd "$work"
export PATH="$repo/.venv/bin:$PATH" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" MLFLOW_DISABLE_TELEMETRY=true
cat > params.yaml <<'YAML'
demo:
  n_clips: 10
  task_clips: 48
  workers: 1
pretrain:
  tracker: mlflow
probe:
  lrs: [1.0e-3]
  max_epochs: 20
  cache_dir: ""
YAML
[[ -d demo/raw ]] || mert demo-corpus demo --params params.yaml
mert ingest demo/raw corpus --params params.yaml --no-progress
mert label corpus labels --params params.yaml --no-progress
mert pretrain corpus labels run --params params.yaml --max-steps 40 > pretrain.json
for task in pitch key; do
  mert probe --model models:/mert-tiny@candidate --task "demo/tasks/$task" --out "probe/$task.json" --mlflow \
    --params params.yaml
done

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mlflow server --backend-store-uri "$MLFLOW_TRACKING_URI" --host 127.0.0.1 --port "$port" > mlflow-server.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 1; done
url="http://127.0.0.1:$port/#/models/mert-tiny/versions/1"
flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
       --disable-sync --no-first-run --hide-scrollbars --window-size=1920,2000 --virtual-time-budget=30000)
"$chrome" "${flags[@]}" --user-data-dir="$(mktemp -d)" --dump-dom "$url" > card.html 2> chromium.log
for want in "<h2" "Lineage" "Final losses" "Probe scores" "How to load it" "<table" "mlflow.pyfunc.load_model"; do
  grep -q "$want" card.html || { echo "model_card_screenshot: the page lacks '$want' (see $work/card.html)" >&2; exit 1; }
done
mkdir -p "$(dirname "$out")"
"$chrome" "${flags[@]}" --user-data-dir="$(mktemp -d)" --screenshot="$out" "$url" 2>> chromium.log
# keep the page's main column down to the end of the description (drops the assistant side panel)
python -c "from PIL import Image; im = Image.open('$out'); im.crop((0, 0, 1430, 1440)).save('$out', optimize=True)"
echo "model card of mert-tiny version 1 rendered by $("$chrome" --version) -> $out (work dir $work)"
