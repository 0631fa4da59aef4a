#!/usr/bin/env python3
"""Build the optional "open-music" corpus: openly licensed game soundtracks from Debian packages (~9 h of OGG).

    .venv/bin/python scripts/open_music_corpus.py data/raw/open-music          # download, extract, dvc add
    .venv/bin/python scripts/open_music_corpus.py data/raw/open-music --debs /tmp/debs --no-dvc

Needs a Debian/Ubuntu machine that reaches its package archive (``apt-get download`` needs no root) and
``dpkg-deb``. For each package it keeps only the music (no sound effects), copies the package's Debian copyright
file next to it (``<package>/COPYRIGHT``), and writes ``SOURCES.csv`` (package, version, licence, files, hours).
The directory is then versioned with ``dvc add`` (commit the ``.dvc`` file, never the audio). Pretrain on it::

    dvc exp run -S corpus.source=data/raw/open-music      # or: mert ingest data/raw/open-music data/corpus-open ...

``drascula-music`` (4.7 h) is left out: its licence allows free redistribution but not modification, which is not
an open licence. Licences were read from each package's copyright file on 2026-11-29 (Debian bookworm).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = {
    # package -> (directories inside the package that hold the music, licence of the music)
    "wesnoth-1.16-music": (["usr/share/games/wesnoth/1.16/data/core/music"], "GPL-2.0-or-later"),
    "warzone2100-music": (["usr/share/games/warzone2100"], "GPL-2.0-or-later (Files: *)"),
    "singularity-music": (["usr/share/games/singularity/music"], "CC-BY-SA-3.0"),
    "nexuiz-music": (["usr/share/games/nexuiz/data/music.pk3"], "GPL-2.0-or-later"),
    "hyperrogue-music": (["usr/share/hyperrogue/music"], "CC-BY-SA-3.0 / CC-BY-SA-4.0 / CC0-1.0 per track (COPYRIGHT)"),
}
AUDIO = (".ogg", ".mp3", ".flac", ".wav", ".opus")


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"open-music: {' '.join(cmd)} failed: {r.stderr.strip()}")
    return r.stdout


def _download(pkg: str, debs: Path) -> Path:
    found = sorted(debs.glob(f"{pkg}_*.deb"))
    if not found:
        _run(["apt-get", "download", pkg], cwd=debs)
        found = sorted(debs.glob(f"{pkg}_*.deb"))
    if not found:
        sys.exit(f"open-music: apt-get download {pkg} wrote no .deb into {debs}")
    return found[-1]


def _collect(pkg: str, deb: Path, out: Path, music_dirs: list[str]) -> list[Path]:
    """Extract ``deb`` and copy its music (and copyright file) into ``out/<pkg>``; returns the audio files."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _run(["dpkg-deb", "-x", str(deb), str(root)])
        dst = out / pkg
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "usr/share/doc" / pkg / "copyright", dst / "COPYRIGHT")
        files = []
        for rel in music_dirs:
            src = root / rel
            if src.suffix == ".pk3":  # a zip archive of game data: take its audio members
                with zipfile.ZipFile(src) as z:
                    for name in z.namelist():
                        if name.lower().endswith(AUDIO):
                            target = dst / Path(name).name
                            target.write_bytes(z.read(name))
                            files.append(target)
                continue
            for f in sorted(src.rglob("*")):
                if f.is_file() and f.suffix.lower() in AUDIO:
                    target = dst / f.relative_to(src)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(f, target)
                    files.append(target)
    if not files:
        sys.exit(f"open-music: no audio found in {deb.name} under {music_dirs}")
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="corpus directory, e.g. data/raw/open-music")
    ap.add_argument("--debs", type=Path, help="where .deb files are (downloaded there when missing); default: temp")
    ap.add_argument("--packages", nargs="+", default=list(PACKAGES), choices=list(PACKAGES))
    ap.add_argument("--no-dvc", action="store_true", help="do not run `dvc add` on the result")
    args = ap.parse_args(argv)
    import soundfile as sf

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        debs = args.debs or Path(tmp)
        debs.mkdir(parents=True, exist_ok=True)
        for pkg in args.packages:
            deb = _download(pkg, debs)
            files = _collect(pkg, deb, args.out, PACKAGES[pkg][0])
            seconds = sum(sf.info(str(f)).duration for f in files)
            version = deb.stem.split("_")[1].replace("%3a", ":")
            rows.append({"package": pkg, "version": version, "licence": PACKAGES[pkg][1], "files": len(files),
                         "hours": round(seconds / 3600, 3), "copyright": f"{pkg}/COPYRIGHT"})  # fmt: skip
            print(f"{pkg} {version}: {len(files)} files, {seconds / 3600:.2f} h ({PACKAGES[pkg][1]})")
    with open(args.out / "SOURCES.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"open-music: {sum(r['hours'] for r in rows):.2f} h in {args.out} (licences: {args.out / 'SOURCES.csv'})")
    if not args.no_dvc:
        _run(["dvc", "add", str(args.out)])
        print(f"versioned: git add {args.out}.dvc && git commit -m 'open-music corpus'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
