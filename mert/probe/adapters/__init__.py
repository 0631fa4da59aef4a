"""Adapters: the 14 MARBLE tasks read from each public dataset's native published layout.

Each adapter is ``adapter(root: Path) -> Task`` (validated, nothing decoded yet). ``mert probe --task
<name>:<root>`` or ``probe.datasets.<name>`` in params.yaml points one at a dataset; see
``mert/probe/DATASETS.md`` for where to get each dataset and what ``root`` must contain.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mert.probe.adapters.gtzan import gtzan_genre, gtzan_rhythm
from mert.probe.adapters.keys_emotion import emomusic, giantsteps_key
from mert.probe.adapters.musdb import musdb18
from mert.probe.adapters.nsynth_vocalset import nsynth_instrument, nsynth_pitch, vocalset_singer, vocalset_technique
from mert.probe.adapters.tagging import mtg_genre, mtg_instrument, mtg_moodtheme, mtg_top50, mtt
from mert.probe.tasks import Task

ADAPTERS: dict[str, Callable[[Path], Task]] = {
    "mtt": mtt,
    "giantsteps-key": giantsteps_key,
    "gtzan-genre": gtzan_genre,
    "gtzan-rhythm": gtzan_rhythm,
    "emomusic": emomusic,
    "nsynth-instrument": nsynth_instrument,
    "nsynth-pitch": nsynth_pitch,
    "vocalset-technique": vocalset_technique,
    "vocalset-singer": vocalset_singer,
    "mtg-instrument": mtg_instrument,
    "mtg-moodtheme": mtg_moodtheme,
    "mtg-genre": mtg_genre,
    "mtg-top50": mtg_top50,
    "musdb18": musdb18,
}
"""MARBLE task name -> adapter (the 14 tasks of reference section 5)."""

__all__ = ["ADAPTERS"]
