"""The `mert` console script, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mert.cli import main


def test_ingest_cli_prints_summary_and_exit_codes(demo_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "corpus"
    assert main(["ingest", str(demo_dir / "raw"), str(out), "--workers", "1", "--no-progress", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["found"] == s["ingested"] + s["unchanged"] + s["rejected"] and s["rejected"] == 3
    assert main(["ingest", str(tmp_path / "nope"), str(out), "--no-progress"]) == 1
    assert "input directory not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  typo: 1\n")
    assert main(["ingest", str(demo_dir / "raw"), str(out), "--params", str(bad)]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "mert"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ingest" in r.stdout and "demo-corpus" in r.stdout


HEAVY = ("torch", "mlflow", "prefect", "scipy", "sklearn", "dvc", "torchaudio", "encodec")


def test_parser_and_help_import_no_heavy_library():
    """`mert --help` and every `mert COMMAND --help` build the parser without torch, MLflow, Prefect, SciPy, DVC."""
    code = (
        "import sys, contextlib, io\n"
        "import mert.cli\n"
        "p = mert.cli.build_parser()\n"
        "cmds = sorted(p._subparsers._group_actions[0].choices)\n"
        "for c in [[]] + [[c] for c in cmds]:\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        mert.cli.main([*c, '--help'])\n"
        f"print(len(cmds), sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    n, heavy = r.stdout.strip().split(" ", 1)
    assert int(n) >= 8 and heavy == "[]", f"`mert --help` imported {heavy}"


def test_light_modules_import_without_torch():
    """The parameter dataclasses and the evidence/report helpers stay importable without torch (flows, DVC)."""
    mods = ["mert.params", "mert.train.params", "mert.probe.params", "mert.teachers.config", "mert.probe", "mert.train"]
    code = f"import importlib, sys\nfor m in {mods!r}: importlib.import_module(m)\nprint('torch' in sys.modules)\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
