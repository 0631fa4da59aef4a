#!/usr/bin/env bash
# Create .venv (if missing) and install the project with pinned versions. Idempotent and quick when
# nothing changed: a stamp records the hash of what was installed.
#   usage: scripts/setup.sh [--dev]      (--dev adds the test tools: pytest, ruff, transformers, librosa)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then PY="$cand"; break; fi
  done
fi
[[ -n "$PY" ]] || { echo "setup: Python >= 3.11 is required" >&2; exit 1; }

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=".venv/.mert-install-stamp"
want="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)${extras}"
have="$(cat "$stamp" 2>/dev/null || true)"
if [[ "$have" == "$want" || ( -z "$extras" && "$have" == "${want}[dev]" ) ]]; then
  echo "setup: .venv is up to date"
else
  echo "setup: installing mert${extras} into .venv (first time: a few minutes, torch is large)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c requirements/constraints.txt -e ".${extras}"
  # the SoundFont synthesiser for the demo corpus; --no-deps: its pyaudio requirement (live playback only) needs
  # system headers to build
  .venv/bin/python -m pip install --quiet --no-deps -c requirements/constraints.txt tinysoundfont
  echo "$want" > "$stamp"
fi
