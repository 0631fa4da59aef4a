"""scripts/open_music_corpus.py on a fake Debian package built here (no network): music + licence kept."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian/Ubuntu)")


def _fake_deb(tmp: Path) -> Path:
    """A minimal singularity-music_1.0_all.deb: two OGG tracks, a sound effect elsewhere, a copyright file."""
    pkg = tmp / "pkg"
    music = pkg / "usr/share/games/singularity/music"
    music.mkdir(parents=True)
    tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(24000 * 4) / 24000)
    for name in ("Awakening.ogg", "Deprecation.ogg"):
        sf.write(music / name, tone, 24000, format="OGG", subtype="VORBIS")
    (pkg / "usr/share/games/singularity/sounds").mkdir()
    sf.write(pkg / "usr/share/games/singularity/sounds/click.ogg", tone[:2400], 24000, format="OGG", subtype="VORBIS")
    (pkg / "usr/share/doc/singularity-music").mkdir(parents=True)
    (pkg / "usr/share/doc/singularity-music/copyright").write_text("License: CC-BY-SA-3.0\n")
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text(
        "Package: singularity-music\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: test\n"
    )
    debs = tmp / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "-b", str(pkg), str(debs / "singularity-music_1.0_all.deb")], check=True,
                   capture_output=True)  # fmt: skip
    return debs


def test_builds_corpus_with_licences(tmp_path: Path):
    debs = _fake_deb(tmp_path)
    out = tmp_path / "open-music"
    r = subprocess.run([sys.executable, str(ROOT / "scripts/open_music_corpus.py"), str(out), "--debs", str(debs),
                        "--packages", "singularity-music", "--no-dvc"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in (out / "singularity-music").rglob("*.ogg"))
    assert files == ["Awakening.ogg", "Deprecation.ogg"]  # music only, no sound effects
    assert "CC-BY-SA-3.0" in (out / "singularity-music/COPYRIGHT").read_text()
    (row,) = list(csv.DictReader(open(out / "SOURCES.csv")))
    assert row["licence"] == "CC-BY-SA-3.0" and row["files"] == "2" and abs(float(row["hours"]) - 8 / 3600) < 1e-3
