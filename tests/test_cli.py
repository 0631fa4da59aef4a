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
