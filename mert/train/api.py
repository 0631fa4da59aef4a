"""``pretrain(corpus, labels, out, params)``: the pretraining stage as one plain function (CLI, DVC, Prefect).

Rerunning the same call continues from the newest checkpoint in ``out`` (and the same MLflow run). At the end
rank 0 exports the encoder in the released HF layout, logs it as an MLflow pyfunc model and registers a new
version of the profile's model name with alias ``candidate``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mert.train.params import PretrainParams

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
TRACKING_FILE = "tracking.json"


def pretrain(
    corpus: str | Path,
    labels: str | Path,
    out: str | Path,
    params: PretrainParams | None = None,
    *,
    max_steps: int | None = None,
    device: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Pretrain (or resume) a MERT encoder on an ingested corpus with teacher labels.

    Args:
        corpus: corpus directory (``mert ingest``).
        labels: label store directory (``mert label``); ``teacher:random`` / ``hash:K:C`` for offline tests.
        out: run directory: ``checkpoints/``, ``export/`` (HF layout), ``metrics.jsonl``, ``result.json``.
        params: the ``pretrain`` section (default: its defaults, i.e. ``mert-tiny``).
        max_steps: override of the profile's ``max_steps``.
        device: ``cpu`` / ``cuda`` (default: CUDA when available).
        run_id: log into this existing MLflow run (e.g. a Prefect flow's).

    Returns:
        ``{"checkpoint", "export", "run_id", "registered_model", "registered_version", "step", "val"}``.
    """
    from mert.data.shards import Corpus
    from mert.train.distributed import close_distributed, init_distributed
    from mert.train.labels import open_labels
    from mert.train.trainer import Trainer

    params = params or PretrainParams()
    profile = params.resolve(max_steps=max_steps)
    out = Path(out)
    done = _finished(out, profile.max_steps)
    if done is not None:
        log.info("%s already finished %d steps: nothing to do", out, profile.max_steps)
        return done
    info = init_distributed(device)
    try:
        corpus_ = Corpus(corpus)
        labels_ = open_labels(labels, corpus_)
        logger = _open_logger(params, corpus_, labels_, out, info, run_id)
        trainer = Trainer(profile, corpus_, labels_, out, info, logger)
        try:
            res = trainer.setup().fit()
            res.update(_register(params, logger, res, info, corpus_, labels_))
        except BaseException:
            trainer.close(status="FAILED")
            raise
        trainer.close()
        return _write_result(out, res, info)
    finally:
        close_distributed()


def _finished(out: Path, max_steps: int) -> dict[str, Any] | None:
    """The stored result if ``out`` already holds a finished run of ``max_steps`` steps (rerun = no-op)."""
    from mert.train.checkpoint import list_checkpoints

    path = out / RESULT_FILE
    if not path.exists():
        return None
    res = json.loads(path.read_text())
    ckpts = list_checkpoints(out / "checkpoints")
    return res if res.get("step") == max_steps and ckpts and ckpts[-1][0] == max_steps else None


def run_tags(params: PretrainParams, corpus, labels) -> dict[str, str]:
    """Lineage tags: git commit, corpus manifest hash (+ DVC hash), teacher identity, profile."""
    from mert.tracking import dvc_out_hash, git_commit
    from mert.utils.io import sha256_file

    ident = labels.identity()
    tags = {
        "git_commit": git_commit(Path(__file__).resolve().parent),  # the code that trained, whatever the cwd
        "corpus_manifest_sha256": sha256_file(Path(corpus.root) / "manifest.csv"),
        "corpus_path": str(corpus.root),
        "teacher": str(ident.get("name", "unknown")),
        "teacher_hash": str(ident.get("hash", "")),
        "profile": params.profile,
    }
    dvc = dvc_out_hash(corpus.root)
    if dvc:
        tags["corpus_dvc_md5"] = dvc
    return tags


def _open_logger(params: PretrainParams, corpus, labels, out: Path, info, run_id: str | None):
    """Rank 0's loggers (MLflow, if chosen, is checked here, before any compute); None on other ranks."""
    from mert.train.distributed import broadcast_object

    logger, error = None, None
    if info.is_main:
        try:
            logger = _main_logger(params, corpus, labels, out, run_id)
        except Exception as e:
            error = e
    msg = broadcast_object(None if error is None else str(error), info)
    if error is not None:
        raise error
    if msg is not None:
        raise RuntimeError(f"rank 0 could not start tracking: {msg}")
    return logger


def _main_logger(params: PretrainParams, corpus, labels, out: Path, run_id: str | None):
    from mert.tracking import DiskLogger, MLflowLogger, MultiLogger, StdoutLogger, resolve_tracking_uri
    from mert.utils.io import atomic_write_json

    loggers: list[Any] = [DiskLogger(out / "metrics.jsonl")]
    if params.tracker == "stdout":
        loggers.append(StdoutLogger())
    if params.tracker == "mlflow":
        saved = out / TRACKING_FILE
        prev = json.loads(saved.read_text()) if saved.exists() else {}
        # Resuming: continue the run this directory created, if it lives in the same store.
        own = run_id is None and prev.get("tracking_uri") == resolve_tracking_uri(params.tracking_uri)
        run_id = run_id or (prev["run_id"] if own else None)
        tags = run_tags(params, corpus, labels)
        ml = MLflowLogger(
            params.tracking_uri,
            params.experiment,
            run_id=run_id,
            run_name=out.name,
            tags=tags,
            own_run=True if own else None,
        )
        atomic_write_json(saved, {"run_id": ml.run_id, "tracking_uri": ml.uri})
        loggers.insert(0, ml)
    return MultiLogger(*loggers)


def _register(params: PretrainParams, logger, res: dict[str, Any], info, corpus, labels) -> dict[str, Any]:
    """Log the exported encoder as a pyfunc model and register it (rank 0, MLflow tracker, ``register``)."""
    from mert.tracking import MLflowLogger, log_encoder_model, register_candidate

    ml = next((lg for lg in getattr(logger, "loggers", ()) if isinstance(lg, MLflowLogger)), None)
    if not info.is_main or ml is None:
        return {"run_id": None, "registered_model": None, "registered_version": None}
    if not params.register:
        return {"run_id": ml.run_id, "registered_model": None, "registered_version": None}
    uri = log_encoder_model(ml, res["export"])
    tags = {
        **run_tags(params, corpus, labels),
        "run_id": ml.run_id,
        "step": res["step"],
        "checkpoint": str(res["checkpoint"]),
    }
    version = register_candidate(uri, params.profile, tags)
    log.info("registered %s version %s (alias candidate) from run %s", params.profile, version, ml.run_id)
    return {"run_id": ml.run_id, "model_uri": uri, "registered_model": params.profile, "registered_version": version}


def _write_result(out: Path, res: dict[str, Any], info) -> dict[str, Any]:
    from mert.utils.io import atomic_write_json

    res = {k: (str(v) if isinstance(v, Path) else v) for k, v in res.items()}
    if info.is_main:
        atomic_write_json(out / RESULT_FILE, res)
    return res
