"""``pretrain(corpus, labels, out, params)``: the pretraining stage as one plain function (CLI, DVC, Prefect).

A run directory holds one run, bound to what defines it (:mod:`mert.train.identity`, recorded in ``run.json``).
Calling again with the same identity continues from the newest checkpoint in ``out`` (and the same MLflow run), or
does nothing when the run is finished; a different ``max_steps`` extends (or shortens) the run with the decay
re-planned. A different identity (corpus, labels, recipe, code, ``init_from``) is never resumed and never
"already finished": ``on_change="refuse"`` (the CLI's default) raises :class:`RunIdentityError` saying what
differs, ``on_change="fresh"`` (the DVC stage and the Prefect flow) moves the old run to ``OUT.superseded/`` and
trains a new one. At the end rank 0 exports the encoder in the released HF layout, logs it as an MLflow pyfunc
model and registers a new version of the profile's model name with alias ``candidate``, tagged with the run's
recorded lineage.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mert.train.identity import RunIdentityError
from mert.train.params import PretrainParams

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
TRACKING_FILE = "tracking.json"
__all__ = ["RESULT_FILE", "RunIdentityError", "TrackingIncomplete", "pretrain"]


def pretrain(
    corpus: str | Path,
    labels: str | Path,
    out: str | Path,
    params: PretrainParams | None = None,
    *,
    max_steps: int | None = None,
    device: str | None = None,
    run_id: str | None = None,
    init_from: str | None = None,
    on_change: Literal["refuse", "fresh"] = "refuse",
    allow_code_change: bool = False,
) -> dict[str, Any]:
    """Pretrain (or resume, or extend) a MERT encoder on an ingested corpus with teacher labels.

    Args:
        corpus: corpus directory (``mert ingest``).
        labels: label store directory (``mert label``); ``teacher:random`` / ``hash:K:C`` for offline tests.
        out: run directory: ``run.json``, ``checkpoints/``, ``export/`` (HF layout), ``metrics.jsonl``,
            ``result.json``.
        params: the ``pretrain`` section (default: its defaults, i.e. ``mert-tiny``).
        max_steps: override of the profile's ``max_steps`` (on an existing run: extend it, decay re-planned).
        device: ``cpu`` / ``cuda`` (default: CUDA when available).
        run_id: log into this existing MLflow run (e.g. a Prefect flow's).
        init_from: override of the profile's ``init_from``: a released-layout checkpoint whose encoder starts the
            run (:mod:`mert.train.init_from`).
        on_change: what to do when ``out`` holds a run of another identity: ``refuse`` (raise) or ``fresh`` (move
            it to ``OUT.superseded/<identity>-<time>/`` and start a new run).
        allow_code_change: continue a run whose only difference is the training code (recorded in its lineage).

    Returns:
        ``{"checkpoint", "export", "run_id", "registered_model", "registered_version", "step", "val"}``.

    Raises:
        RunIdentityError: ``out`` holds another run and ``on_change`` is ``refuse`` (the message says what differs
            and what to do).
    """
    from mert.data.shards import Corpus
    from mert.train.distributed import broadcast_object, close_distributed, init_distributed
    from mert.train.labels import open_labels
    from mert.train.trainer import Trainer

    if on_change not in ("refuse", "fresh"):
        raise ValueError(f"on_change must be 'refuse' or 'fresh', got {on_change!r}")
    params = params or PretrainParams()
    profile = params.resolve(max_steps=max_steps, init_from=init_from)
    out = Path(out)
    info = init_distributed(device)
    try:
        corpus_ = Corpus(corpus)
        labels_ = open_labels(labels, corpus_)
        entry = _on_rank0(info, lambda: _enter(out, params, profile, corpus_, labels, labels_, on_change,
                                               allow_code_change))  # fmt: skip
        if entry.done is not None:
            if entry.done.get(PENDING_KEY) and params.tracker == "mlflow":
                return _complete_tracking(params, entry.done, entry.record, out, info, run_id)
            log.info("%s already finished %d steps of this run: nothing to do", out, profile.max_steps)
            return entry.done
        init_state = _parent_state(profile, labels_) if entry.fresh and profile.init_from else None
        if init_state is not None and info.is_main:
            from mert.train.init_from import parent_record

            entry.record["lineage"]["parent"] = parent_record(profile.init_from, init_state)
        _on_rank0(info, lambda: _commit(out, entry))
        record = broadcast_object(entry.record if info.is_main else None, info)
        logger = _open_logger(params, record, out, info, run_id)
        trainer = Trainer(profile, corpus_, labels_, out, info, logger, init_state=init_state)
        try:
            res = trainer.setup().fit()
            deadline = time.monotonic() + params.tracking_wait
            res.update(_register(params, logger, res, info, record, deadline))
        except BaseException:
            trainer.close(status="FAILED", wait=0.0)
            raise
        unsent = trainer.close(wait=max(0.0, deadline - time.monotonic())) or []
        return _finish(out, res, info, unsent + res.pop("_register_failed", []))
    finally:
        close_distributed()


PENDING_KEY = "tracking_pending"


class TrackingIncomplete(RuntimeError):
    """Training finished and its checkpoint and export are on disk, but the tracker could not be reached to log all
    of it (metrics, the model, its registration, the run's end). Running the same command again completes it.
    """


def _finish(out: Path, res: dict[str, Any], info, unsent: list[str]) -> dict[str, Any]:
    """Write ``result.json`` (with what the tracker still lacks, if anything) and return it, or raise
    :class:`TrackingIncomplete` saying plainly what was not logged and how to complete it.
    """
    if unsent:
        res[PENDING_KEY] = unsent
    else:
        res.pop(PENDING_KEY, None)
    res = _write_result(out, res, info)
    if unsent and info.is_main:
        raise TrackingIncomplete(
            f"training finished at step {res['step']} (checkpoint {res['checkpoint']}, export {res['export']}), but "
            f"MLflow at {_tracking_uri(out)} could not be reached to complete run {res.get('run_id')}: not logged: "
            + "; ".join(unsent)
            + ". Nothing is lost: the metrics are in the run's journal (metrics.jsonl). Run the same command again "
            "once the tracking server is back: it trains nothing and completes the MLflow run and the registration."
        )
    return res


def _tracking_uri(out: Path) -> str:
    saved = out / TRACKING_FILE
    return json.loads(saved.read_text()).get("tracking_uri", "?") if saved.exists() else "?"


def _complete_tracking(params: PretrainParams, done: dict[str, Any], record: dict[str, Any], out: Path, info,
                       run_id: str | None) -> dict[str, Any]:  # fmt: skip
    """A finished run whose tracking was left incomplete: send the journal, register, end the run (rank 0)."""
    if not info.is_main:
        return done
    log.info("%s: training is finished; completing its MLflow run (pending: %s)", out, "; ".join(done[PENDING_KEY]))
    logger = _main_logger(params, record, out, run_id)
    res = {k: v for k, v in done.items() if k != PENDING_KEY}
    deadline = time.monotonic() + params.tracking_wait
    try:
        if res.get("registered_version") is None:
            res.update(_register(params, logger, res, info, record, deadline))
    except BaseException:
        logger.close("FAILED", wait=0.0)
        raise
    unsent = logger.close(wait=max(0.0, deadline - time.monotonic())) or []
    return _finish(out, res, info, unsent + res.pop("_register_failed", []))


def _on_rank0(info, fn):
    """Run ``fn`` on rank 0 only; its result (or its error) reaches every rank."""
    from mert.train.distributed import broadcast_object

    value, error = None, None
    if info.is_main:
        try:
            value = fn()
        except Exception as e:
            error = e
    msg = broadcast_object(None if error is None else (type(error).__name__, str(error)), info)
    if error is not None:
        raise error
    if msg is not None:
        cls = RunIdentityError if msg[0] == "RunIdentityError" else RuntimeError
        raise cls(msg[1] if cls is RunIdentityError else f"rank 0: {msg[0]}: {msg[1]}")
    return broadcast_object(value, info)


@dataclass
class Entry:
    """What re-entering ``out`` means: ``done`` (the stored result) or train (``fresh`` or resumed) with ``record``."""

    done: dict[str, Any] | None = None
    fresh: bool = False
    record: dict[str, Any] = field(default_factory=dict)
    clips: list[str] | None = None


def _enter(out: Path, params: PretrainParams, profile, corpus, labels_arg, labels, on_change: str,
           allow_code_change: bool) -> Entry:  # fmt: skip
    """Compare the run recorded in ``out`` with the one asked for; decide (and, for ``fresh``, move the old run)."""
    from mert.tracking import git_commit
    from mert.train import identity as idn
    from mert.train.checkpoint import list_checkpoints
    from mert.train.trainer import build_configs

    current = idn.current_identity(profile, corpus, labels, *build_configs(profile, labels))
    clips = corpus.clips.ids()  # from the id column: no Clip per row
    record = idn.read_record(out)
    ckpts = list_checkpoints(out / "checkpoints")
    reached = ckpts[-1][0] if ckpts else 0
    git = git_commit(Path(__file__).resolve().parent)  # the code that trains, whatever the cwd
    if record is None and (ckpts or (out / RESULT_FILE).exists()):
        why = "recorded no identity (trained before runs recorded one), so it cannot be checked against the request"
        diffs = [idn.Difference("unrecorded", f"{out} holds a run that {why}")]
    elif record is None:
        diffs = []
    else:
        diffs = idn.differences(record, current, idn.read_clips(out), clips)
        if diffs and allow_code_change and all(d.section == "code" for d in diffs):
            idn.accept_code(record, current, reached, git)
            log.warning("%s: continuing at step %d with changed code (--allow-code-change): %s", out, reached,
                        diffs[0].message)  # fmt: skip
            diffs = []
        if not diffs and reached > profile.max_steps:
            diffs = [idn.Difference("max_steps", f"max_steps {profile.max_steps} is below the step this run has "
                                    f"reached ({reached}): a shorter run is a different run")]  # fmt: skip
    if diffs and on_change == "refuse":
        raise RunIdentityError(idn.refusal(out, diffs, record))
    if diffs:
        moved = idn.supersede(out, record)
        log.warning("%s: starting a fresh run; the previous one moved to %s because:\n%s", out, moved,
                    "\n".join(f"  - {d.message}" for d in diffs))  # fmt: skip
        record = None
    if record is None:
        lineage = {
            "git_commit": git,
            "corpus_path": str(corpus.root),
            "labels_path": str(labels_arg),
            "profile": params.profile,
            "parent": None,
        }
        dvc = _corpus_dvc_md5(corpus.root)
        if dvc:
            lineage["corpus_dvc_md5"] = dvc
        teacher = labels.identity().get("lineage")  # a hidden-state teacher: its parent model, layer, k-means
        if teacher:
            lineage["teacher_lineage"] = teacher
        return Entry(fresh=True, record=idn.new_record(current, profile.max_steps, lineage), clips=clips)
    if idn.replan(record, reached, profile.max_steps):
        log.info("%s: max_steps now %d from step %d (the LR decay is re-planned to end there)", out,
                 profile.max_steps, reached)  # fmt: skip
    done = _finished(out, profile.max_steps)
    return Entry(done=done, record=record)


def _commit(out: Path, entry: Entry) -> None:
    from mert.train.identity import write_record

    write_record(out, entry.record, entry.clips)


def _parent_state(profile, labels) -> dict[str, Any]:
    """Every rank reads the parent's encoder (checked against the profile's architecture) for a fresh run."""
    from mert.train.init_from import load_for
    from mert.train.trainer import build_configs

    return load_for(profile.init_from, build_configs(profile, labels)[0], profile.model)


def _corpus_dvc_md5(root: Path) -> str | None:
    """The corpus's md5 from ``dvc.lock``, only if the lock's file count and size match the directory now."""
    from mert.tracking import dvc_out_hash

    return dvc_out_hash(root, verify=True)


def _finished(out: Path, max_steps: int) -> dict[str, Any] | None:
    """The stored result if ``out`` already holds this run finished at ``max_steps`` steps (rerun = no-op)."""
    from mert.train.checkpoint import list_checkpoints

    path = out / RESULT_FILE
    if not path.exists():
        return None
    res = json.loads(path.read_text())
    ckpts = list_checkpoints(out / "checkpoints")
    return res if res.get("step") == max_steps and ckpts and ckpts[-1][0] == max_steps else None


def run_tags(record: dict[str, Any]) -> dict[str, str]:
    """Lineage tags of the run and its registered versions, from its record (``identity.lineage_tags``)."""
    from mert.train.identity import lineage_tags

    return lineage_tags(record)


def _open_logger(params: PretrainParams, record: dict[str, Any], out: Path, info, run_id: str | None):
    """Rank 0's loggers (MLflow, if chosen, is checked here, before any compute); None on other ranks."""
    from mert.train.distributed import broadcast_object

    logger, error = None, None
    if info.is_main:
        try:
            logger = _main_logger(params, record, out, run_id)
        except Exception as e:
            error = e
    msg = broadcast_object(None if error is None else str(error), info)
    if error is not None:
        raise error
    if msg is not None:
        raise RuntimeError(f"rank 0 could not start tracking: {msg}")
    return logger


def _main_logger(params: PretrainParams, record: dict[str, Any], out: Path, run_id: str | None):
    from mert.tracking import DiskLogger, MLflowLogger, MultiLogger, StdoutLogger, resolve_tracking_uri
    from mert.utils.io import atomic_write_json

    loggers: list[Any] = [] if params.tracker == "mlflow" else [DiskLogger(out / "metrics.jsonl")]
    if params.tracker == "stdout":
        loggers.append(StdoutLogger())
    if params.tracker == "mlflow":  # the MLflow logger journals to metrics.jsonl itself and sends from the journal
        saved = out / TRACKING_FILE
        prev = json.loads(saved.read_text()) if saved.exists() else {}
        # Resuming: continue the run this directory created, if it lives in the same store.
        own = run_id is None and prev.get("tracking_uri") == resolve_tracking_uri(params.tracking_uri)
        run_id = run_id or (prev["run_id"] if own else None)
        ml = MLflowLogger(
            params.tracking_uri,
            params.experiment,
            run_id=run_id,
            run_name=out.name,
            own_run=True if own else None,
            journal=out / "metrics.jsonl",
            close_wait=params.tracking_wait,
        )
        atomic_write_json(saved, {"run_id": ml.run_id, "tracking_uri": ml.uri})
        loggers.insert(0, ml)
    logger = MultiLogger(*loggers)
    logger.set_tags(run_tags(record))  # MLflow run tags / tags.json beside metrics.jsonl
    return logger


def _register(params: PretrainParams, logger, res: dict[str, Any], info, record: dict[str, Any],
              deadline: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Log the exported encoder as a pyfunc model and register it (rank 0, MLflow tracker, ``register``).

    Idempotent: a version already registered from this run at this step (a rerun after a kill, or after the tracker
    failed between registering and writing ``result.json``) is reused, never registered twice. Tracker failures are
    retried with backoff until ``deadline`` (``time.monotonic()``); after it the result says what is pending
    (``_register_failed``) and the caller tells the user.
    """
    from mert.tracking import MLflowLogger, log_encoder_model, register_candidate

    ml = next((lg for lg in getattr(logger, "loggers", ()) if isinstance(lg, MLflowLogger)), None)
    if not info.is_main or ml is None:
        return {"run_id": None, "registered_model": None, "registered_version": None}
    if not params.register:
        return {"run_id": ml.run_id, "registered_model": None, "registered_version": None}
    tags = {
        **run_tags(record),
        "run_id": ml.run_id,
        "step": res["step"],
        "checkpoint": str(res["checkpoint"]),
    }
    pause = 1.0
    while True:
        try:
            uri = log_encoder_model(ml, res["export"], step=int(res["step"]))
            version = register_candidate(uri, params.profile, tags, run_id=ml.run_id, step=int(res["step"]))
            break
        except Exception as e:  # the tracker is away: retry until the deadline, then report it as pending
            if deadline is None or time.monotonic() + pause > deadline:
                log.error("could not log and register the model in MLflow (%s: %s)", type(e).__name__, e)
                return {"run_id": ml.run_id, "registered_model": None, "registered_version": None,
                        "_register_failed": [f"the encoder model and its registration as a version of "
                                             f"{params.profile!r}"]}  # fmt: skip
            log.warning("MLflow model logging/registration failed (%s: %s); retrying in %.0f s", type(e).__name__,
                        str(e).splitlines()[0][:300] if str(e) else "", pause)  # fmt: skip
            time.sleep(pause)
            pause = min(30.0, 2 * pause)
    log.info("registered %s version %s (alias candidate) from run %s", params.profile, version, ml.run_id)
    return {"run_id": ml.run_id, "model_uri": uri, "registered_model": params.profile, "registered_version": version}


def _write_result(out: Path, res: dict[str, Any], info) -> dict[str, Any]:
    from mert.utils.io import atomic_write_json

    res = {k: (str(v) if isinstance(v, Path) else v) for k, v in res.items()}
    if info.is_main:
        atomic_write_json(out / RESULT_FILE, res)
    return res
