"""Build the teacher that ``params.yaml`` section ``label`` selects (heavy imports stay inside)."""

from __future__ import annotations

import logging
from pathlib import Path

from mert.data.shards import Corpus
from mert.teachers.base import TeacherError

log = logging.getLogger(__name__)


def build_teacher(
    params, corpus_dir: str | Path | None = None, labels_dir: str | Path | None = None, progress: bool = True
):
    """The teacher ``params`` (a ``LabelParams``) selects.

    What a teacher needs from the corpus (k-means centroids, mel statistics, a fitted Mel-RVQ) is computed on
    ``corpus_dir`` and saved under ``labels_dir`` when the params name no file, and reused by later runs.
    """
    if params.teacher == "rvq":
        from mert.teachers.rvq import build_rvq_teacher

        r = params.rvq
        return build_rvq_teacher(r.weights, r.seed, r.bandwidth, r.context_seconds, params.chunk_seconds)
    if params.teacher == "bestrq":
        return build_bestrq_teacher(params, corpus_dir, labels_dir)
    if params.teacher == "melrvq":
        return build_melrvq_teacher(params, corpus_dir, labels_dir, progress)
    if params.teacher == "hidden":
        return build_hidden_teacher(params, corpus_dir, labels_dir, progress)
    return build_kmeans_teacher(params, corpus_dir, labels_dir)


def _chunk(params) -> int:
    return max(1, round(params.chunk_seconds * 75))


def build_bestrq_teacher(params, corpus_dir: str | Path | None = None, labels_dir: str | Path | None = None):
    """Mel BEST-RQ with ``label.bestrq.stats``, or the corpus statistics computed earlier / now."""
    from mert.teachers.bestrq import BestRQTeacher
    from mert.teachers.mel import MelSpec, corpus_mel_stats

    b = params.bestrq
    spec = MelSpec(24_000, b.n_fft, b.n_mels, b.stack)
    stats = corpus_mel_stats(spec, b.stats, b.fit_frames, corpus_dir, labels_dir)
    return BestRQTeacher(spec, stats, b.n_codebooks, b.codebook_size, b.codebook_dim, b.seed, _chunk(params), b.norm)


def melrvq_model_dir(params, corpus: Corpus, labels_dir: str | Path) -> Path:
    """``<labels_dir>/melrvq-models/<key>``: keyed by the fit settings and the corpus clips' hashes."""
    from mert.utils.io import sha256_json

    settings = params.melrvq.settings().as_dict()
    key = sha256_json({"settings": settings, "clips": [c.sha256 for c in corpus]})
    return Path(labels_dir) / "melrvq-models" / key[:12]


def fit_melrvq_model(params, corpus_dir: str | Path, out_dir: str | Path, stats_dir: str | Path, progress: bool):
    """Fit (or resume fitting) the Mel-RVQ of ``label.melrvq`` on the corpus into ``out_dir``.

    The mel statistics are computed on the corpus (saved under ``stats_dir/mel-stats/``) and stored in the model.
    """
    from mert.teachers.mel import corpus_mel_stats
    from mert.teachers.melrvq import fit_melrvq

    m = params.melrvq
    settings = m.settings()
    stats = corpus_mel_stats(settings.spec, None, m.fit_frames, corpus_dir, stats_dir)
    corpus = Corpus(corpus_dir, verify=False)
    log.info("Mel-RVQ: fitting %d x %d codes on %d clips -> %s", m.n_codebooks, m.codebook_size, len(corpus), out_dir)
    return fit_melrvq(corpus, settings, stats, out_dir, checkpoint_every=m.checkpoint_every, progress=progress)


def build_melrvq_teacher(
    params, corpus_dir: str | Path | None = None, labels_dir: str | Path | None = None, progress: bool = True
):
    """Load ``label.melrvq.model``, or the model fitted earlier on this corpus, or fit and save one.

    The fit is seeded, so processes on one machine that label shards of the same corpus fit the same model;
    across machines fit once (``mert teacher fit``) and pass ``label.melrvq.model``.
    """
    from mert.teachers.melrvq import MODEL_FILE, MelRVQModel, MelRVQTeacher

    m = params.melrvq
    if m.model:
        model = MelRVQModel.load(m.model)
        if model.settings != m.settings():
            raise TeacherError(
                f"Mel-RVQ model {m.model} was fitted with {model.settings.as_dict()}, "
                f"params say {m.settings().as_dict()}"
            )
        return MelRVQTeacher(model, _chunk(params))
    if corpus_dir is None or labels_dir is None:
        raise TeacherError("label.melrvq.model is null: a corpus and a labels dir are needed to fit one")
    path = melrvq_model_dir(params, Corpus(corpus_dir, verify=False), labels_dir)
    if (path / MODEL_FILE).exists():
        log.info("Mel-RVQ: reusing the model fitted on this corpus: %s", path)
        return MelRVQTeacher(MelRVQModel.load(path), _chunk(params))
    model = fit_melrvq_model(params, corpus_dir, path, labels_dir, progress)
    return MelRVQTeacher(model, _chunk(params))


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
    chunk = _chunk(params)
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


def hidden_features(params):
    """The parent of ``label.hidden.model`` and its hidden state ``label.hidden.layer`` (:mod:`mert.teachers.hidden`).

    Raises:
        TeacherError: no parent named, or it does not load (the message names the file and the reason).
    """
    from mert.teachers.hidden import HiddenFeatures, context_frames
    from mert.teachers.parent import load_parent, resolve_layer

    h = params.hidden
    if not h.model:
        raise TeacherError(
            "label.hidden.model is null: name the trained encoder whose hidden states are clustered (an export "
            "dir, a checkpoint, a hub id or models:/name@alias), e.g. `mert label CORPUS LABELS --teacher hidden "
            "--parent data/pretrain/mert-small-lowcqt/export`"
        )
    parent = load_parent(h.model)
    layer = resolve_layer(parent.model.config, h.layer)
    return HiddenFeatures(parent, layer, _chunk(params), context_frames(h.context_seconds))


def hidden_model_dir(settings: dict, corpus: Corpus, labels_dir: str | Path) -> Path:
    """``<labels_dir>/hidden-models/<key>``: keyed by the fit settings (parent, layer, k, fit) and the corpus clips."""
    from mert.utils.io import sha256_json

    key = sha256_json({"settings": settings, "clips": [c.sha256 for c in corpus]})
    return Path(labels_dir) / "hidden-models" / key[:12]


def fit_hidden_model(params, features, corpus_dir: str | Path, progress: bool = True):
    """Fit the hidden-state k-means of ``label.hidden`` on the corpus (on ``label.device``); not saved."""
    from mert.teachers.hidden import fit_hidden_kmeans, kmeans_settings
    from mert.teachers.label_run import resolve_device

    settings = kmeans_settings(features, params.hidden)
    corpus = Corpus(corpus_dir, verify=False)
    log.info("hidden k-means: fitting %d clusters on layer %d of %s over %d clips", params.hidden.n_clusters,
             features.layer, params.hidden.model, len(corpus))  # fmt: skip
    dev = resolve_device(params.device)
    return fit_hidden_kmeans(corpus, features, settings, dev, progress, params.hidden.fit_threads)


def build_hidden_teacher(
    params, corpus_dir: str | Path | None = None, labels_dir: str | Path | None = None, progress: bool = True
):
    """HuBERT iteration: k-means of ``label.hidden.model``'s hidden state ``label.hidden.layer``.

    The k-means is ``label.hidden.kmeans_model``, or the one fitted earlier on this corpus with these settings, or
    fitted now and saved under ``<labels_dir>/hidden-models/`` (seeded: processes on one machine fit the same one;
    across machines fit once with ``mert teacher fit --teacher hidden`` and pass ``label.hidden.kmeans_model``).

    Raises:
        TeacherError: no or an unloadable parent, a layer it does not have, a k-means model of another parent or
            layer, or too few frames for the clusters.
    """
    from mert.teachers.hidden import HiddenTeacher, kmeans_settings
    from mert.teachers.kmeans import MODEL_FILE, KMeansModel

    h = params.hidden
    features = hidden_features(params)
    if h.kmeans_model:
        return HiddenTeacher(features, KMeansModel.load(h.kmeans_model), h.kmeans_model)
    if corpus_dir is None or labels_dir is None:
        raise TeacherError("label.hidden.kmeans_model is null: a corpus and a labels dir are needed to fit one")
    path = hidden_model_dir(kmeans_settings(features, h), Corpus(corpus_dir, verify=False), labels_dir)
    if (path / MODEL_FILE).exists():
        log.info("hidden k-means: reusing the model fitted on this corpus: %s", path)
        return HiddenTeacher(features, KMeansModel.load(path), str(path))
    model = fit_hidden_model(params, features, corpus_dir, progress)
    model.save(path)
    return HiddenTeacher(features, model, str(path))
