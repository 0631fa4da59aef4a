"""Build the teacher that ``params.yaml`` section ``label`` selects (heavy imports stay inside)."""

from __future__ import annotations

import logging
from pathlib import Path

from mert.data.shards import Corpus
from mert.teachers.base import TeacherError

log = logging.getLogger(__name__)


def build_teacher(params, corpus_dir: str | Path | None = None, labels_dir: str | Path | None = None):
    """The teacher ``params`` (a ``LabelParams``) selects; a k-means teacher is fitted on the corpus if needed."""
    if params.teacher == "rvq":
        from mert.teachers.rvq import build_rvq_teacher

        r = params.rvq
        return build_rvq_teacher(r.weights, r.seed, r.bandwidth, r.context_seconds, params.chunk_seconds)
    return build_kmeans_teacher(params, corpus_dir, labels_dir)


def build_kmeans_teacher(params, corpus_dir: str | Path | None = None, labels_dir: str | Path | None = None):
    """Load ``label.kmeans.model``, or the model fitted earlier on this corpus, or fit and save one.

    The fit is seeded, so processes on one machine that label shards of the same corpus fit the
    same model. Across machines (different BLAS) fit once and pass ``label.kmeans.model``.
    """
    from mert.teachers.kmeans import MODEL_FILE, KMeansModel, KMeansTeacher, fit_kmeans
    from mert.utils.io import sha256_json

    k = params.kmeans
    settings = {"features": list(k.features), "n_clusters": list(k.n_clusters), "n_mels": k.n_mels}
    settings.update(n_mfcc=k.n_mfcc, sample_rate=24_000, seed=k.seed)
    chunk = max(1, round(params.chunk_seconds * 75))
    if k.model:
        model = KMeansModel.load(k.model)
        if {key: model.settings.get(key) for key in settings} != settings:
            raise TeacherError(f"k-means model {k.model} was fitted with {model.settings}, params say {settings}")
        return KMeansTeacher(model, chunk)
    if corpus_dir is None or labels_dir is None:
        raise TeacherError("label.kmeans.model is null: a corpus and a labels dir are needed to fit one")
    corpus = Corpus(corpus_dir, verify=False)
    settings["sample_rate"] = corpus.sample_rate
    key = sha256_json({"settings": settings, "fit_frames": k.fit_frames, "clips": [c.sha256 for c in corpus]})
    path = Path(labels_dir) / "kmeans-models" / f"{'+'.join(k.features)}-{key[:12]}"
    if (path / MODEL_FILE).exists():
        log.info("k-means: reusing the model fitted on this corpus: %s", path)
        return KMeansTeacher(KMeansModel.load(path), chunk)
    log.info("k-means: fitting %s on %d clips -> %s", settings["features"], len(corpus), path)
    model = fit_kmeans(corpus, settings, k.fit_frames)
    model.save(path)
    return KMeansTeacher(model, chunk)
