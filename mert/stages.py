"""The pipeline's stages as plain functions: paths and params in, paths and summaries out.

The CLI (and therefore ``dvc.yaml``) and the Prefect flows call these and nothing else, so
each stage exists once. Stages never import Prefect and never decide what runs next.
"""

from __future__ import annotations

from pathlib import Path

from mert.data.ingest import IngestParams, IngestSummary, ingest
from mert.data.synth import DemoParams, generate


def demo_corpus(out: str | Path, params: DemoParams | None = None) -> Path:
    """Write the built-in demo corpus (``raw/`` for pretraining, ``tasks/`` for probing) to ``out``."""
    return generate(out, params)


def ingest_corpus(
    src: str | Path, out: str | Path, params: IngestParams | None = None, progress: bool = True
) -> IngestSummary:
    """Ingest ``src`` (a directory tree of audio) into the sharded corpus ``out``."""
    return ingest(src, out, params, progress=progress)
