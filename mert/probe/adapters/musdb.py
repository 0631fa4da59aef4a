"""MUSDB18 source separation (SDR of vocals, drums, bass, other), the wav ("HQ"/decoded) variant.

Layout (``root``): ``{train,test}/<track>/{mixture,vocals,drums,bass,other}.wav``. The 14 tracks of the
official validation subset (``musdb``'s ``setup.yaml``) are the valid split, the rest of ``train`` trains.
Tracks are cut into ``EXCERPT`` s excerpts (the last shorter one kept if >= 2 s), so probes train and are
scored on excerpts (MARBLE scores whole tracks with museval: see DATASETS.md).
"""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from mert.probe.adapters.common import require
from mert.probe.tasks import Example, Task, TaskError, validate

SOURCES = ("vocals", "drums", "bass", "other")
EXCERPT = 10.0
VALID_TRACKS = frozenset({
    "Actions - One Minute Smile", "Clara Berry And Wooldog - Waltz For My Victims", "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave", "Triviul - Angelsaint", "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants", "Leaf - Summerghost", "Skelpolu - Human Mistakes", "Young Griffo - Pennies",
    "ANiMAL - Rockshow", "James May - On The Line", "Meaxic - Take A Step", "Traffic Experiment - Sirens",
})  # fmt: skip


def _excerpts(track: Path, split: str, seconds: float) -> list[Example]:
    stems = {s: require(track / f"{s}.wav", f"MUSDB18 {s} stem") for s in SOURCES}
    mixture = require(track / "mixture.wav", "MUSDB18 mixture")
    try:
        duration = sf.info(str(mixture)).duration
    except (sf.LibsndfileError, RuntimeError) as e:
        raise TaskError(f"{mixture}: unreadable header ({e})") from e
    starts = [s * seconds for s in range(int(duration // seconds) + 1)]
    return [Example(mixture, split, stems, start, min(seconds, duration - start))
            for start in starts if duration - start >= min(2.0, duration)]  # fmt: skip


def musdb18(root: Path, seconds: float = EXCERPT) -> Task:
    """MUSDB18 (wav) separation task: one example per excerpt of each track."""
    examples = []
    for part in ("train", "test"):
        for track in sorted(p for p in require(root / part, f"MUSDB18 {part}/").iterdir() if p.is_dir()):
            split = "test" if part == "test" else ("valid" if track.name in VALID_TRACKS else "train")
            examples += _excerpts(track, split, seconds)
    return validate(Task("musdb18", "separation", examples, list(SOURCES), root=root))
