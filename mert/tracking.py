"""Experiment tracking behind a small interface: ``log_dict / log_config / close`` (rank 0 only).

:class:`MLflowLogger` (the tracker of record), :class:`DiskLogger` (``metrics.jsonl``) and :class:`StdoutLogger`
implement it; :class:`MultiLogger` fans out. This is the only module that imports ``mlflow`` (lazily, inside the
functions), so ``mert`` imports and tests without it.

MLflow 3 notes (``stack-notes.md``): the default store is ``sqlite:///mlflow.db`` in the working directory with
artifacts in ``mlartifacts/`` (the file store raises in 3.13+); models are logged with ``name=`` as pyfunc
"models from code"; ``MLFLOW_RUN_ID`` is read once, because ``start_run`` deletes it when it resumes a run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
MAX_BUFFER = 200_000
_ENV_RUN_ID = os.environ.get("MLFLOW_RUN_ID")  # read once, at import (start_run may delete it later)


class TrackingError(RuntimeError):
    """The tracking backend cannot be used (raised before any compute is spent)."""


class MetricLogger(Protocol):
    def log_dict(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


class RunLogger(MetricLogger, Protocol):
    """A logger that can also tag the run and attach files (all loggers here; callers check with hasattr)."""

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (lists and tuples stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class StdoutLogger:
    """Prints ``step k: key=value ...`` lines (a few keys per line)."""

    def __init__(self, keys: tuple[str, ...] = ("loss/total", "acc/", "optim/lr", "perf/audio")):
        self.keys = keys

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        shown = {k: v for k, v in metrics.items() if any(s in k for s in self.keys)}
        print(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in sorted(shown.items())), flush=True)

    def log_config(self, config: Mapping[str, Any]) -> None:
        print(json.dumps(config, default=str, sort_keys=True))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        print("tags: " + " ".join(f"{k}={v}" for k, v in sorted(tags.items())), flush=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass  # the file is already on disk

    def close(self, status: str = "FINISHED") -> None:
        pass


class DiskLogger:
    """Appends one JSON object per call to ``path`` (``{"step": k, ...metrics}``); the config goes beside it.

    A line cut short by a kill is skipped by :func:`read_jsonl`, so appending (not atomic rewriting) is safe.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        self._f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")
        self._f.flush()

    def log_config(self, config: Mapping[str, Any]) -> None:
        from mert.utils.io import atomic_write_json

        atomic_write_json(self.path.with_name("config.json"), json.loads(json.dumps(config, default=str)))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Merge ``tags`` (values as strings) into ``tags.json`` beside the metrics file."""
        from mert.utils.io import atomic_write_json

        path = self.path.with_name("tags.json")
        old = json.loads(path.read_text()) if path.exists() else {}
        atomic_write_json(path, {**old, **{k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass  # the file is already in the run directory

    def close(self, status: str = "FINISHED") -> None:
        self._f.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The complete lines of a :class:`DiskLogger` file."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MultiLogger:
    """Sends every call to each logger."""

    def __init__(self, *loggers: MetricLogger):
        self.loggers = loggers

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.log_dict(metrics, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_config(config)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for lg in self.loggers:
            if hasattr(lg, "set_tags"):
                lg.set_tags(tags)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        for lg in self.loggers:
            if hasattr(lg, "log_artifact"):
                lg.log_artifact(path, artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        for lg in self.loggers:
            lg.close(status)


# ---------------------------------------------------------------------------------------------- MLflow
def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _env_offline() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def connect(uri: str | None = None, experiment: str = "mert-pretrain") -> tuple[Any, str]:
    """Check the tracking backend and get the experiment id; :class:`TrackingError` if it is unusable.

    A sqlite store gets a local artifact root ``mlartifacts/`` beside the database.
    """
    _env_offline()
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(uri)
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        client = MlflowClient(uri, registry_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            return client, exp.experiment_id
        artifacts = None
        if uri.startswith("sqlite:///"):
            artifacts = (Path(uri[len("sqlite:///") :]).parent / DEFAULT_ARTIFACTS).resolve().as_uri()
        return client, client.create_experiment(experiment, artifact_location=artifacts)
    except Exception as e:  # every backend failure mode (connection, auth, schema) ends here
        raise TrackingError(
            f"MLflow tracking at {uri!r} is unreachable or unusable ({type(e).__name__}: {e}). Start the server, "
            "set MLFLOW_TRACKING_URI / pretrain.tracking_uri to a working store, or use pretrain.tracker: disk"
        ) from e


class MLflowLogger:
    """Logs to one MLflow run; metrics that fail to send are buffered and retried, never raised.

    Args:
        uri: tracking URI (see :func:`resolve_tracking_uri`).
        experiment: experiment name.
        run_id: an existing run to log into (e.g. opened by a Prefect flow); default ``$MLFLOW_RUN_ID`` as read
            at import. Otherwise a new run is created, nested under the active fluent run if there is one.
        run_name: name of a new run.
        tags: tags set on the run.
        system_metrics: sample CPU/GPU/memory into the run every ``system_interval`` seconds.
        own_run: end the run in :meth:`close` (default: only if this logger created it).
    """

    def __init__(
        self,
        uri: str | None = None,
        experiment: str = "mert-pretrain",
        run_id: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        system_metrics: bool = True,
        system_interval: float = 30.0,
        own_run: bool | None = None,
    ):
        import mlflow

        self.client, self.experiment_id = connect(uri, experiment)
        self.uri = resolve_tracking_uri(uri)
        run_id = run_id or _ENV_RUN_ID
        self.owned = run_id is None if own_run is None else own_run
        if run_id is None:
            run_id = self._create_run(mlflow, run_name)
        elif self.owned:  # our own run, resumed after a kill or a failure
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self._pending: list[Any] = []
        self._failures = 0
        if tags:
            self.set_tags(tags)
        self._monitor = self._start_monitor(system_interval) if system_metrics else None

    def _create_run(self, mlflow, run_name: str | None) -> str:
        tags = {}
        parent = mlflow.active_run()
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.info.run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        return run.info.run_id

    def _start_monitor(self, interval: float):
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval, tracking_uri=self.uri)
            monitor.start()
            return monitor
        except Exception as e:  # optional: psutil/pynvml missing
            log.warning("MLflow system metrics disabled: %s", e)
            return None

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self._call(lambda: self.client.log_batch(self.run_id, tags=tags), "tags")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy the file ``path`` into the run's artifacts (replacing an earlier copy); failures are logged only."""
        self._call(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path), "artifact")

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Flattened ``config`` as run params (100 per request, values cut to 500 characters)."""
        from mlflow.entities import Param

        params = [Param(k, str(v)[:500]) for k, v in sorted(flatten(config).items())]
        for i in range(0, len(params), 100):
            chunk = params[i : i + 100]
            self._call(lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk), "params")

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step`` and try to send everything queued (failures stay queued)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v)))
        if len(self._pending) > MAX_BUFFER:
            dropped = len(self._pending) - MAX_BUFFER
            self._pending = self._pending[dropped:]
            log.warning("MLflow metric buffer full: dropped the %d oldest metrics", dropped)
        self.flush()

    def flush(self) -> bool:
        """Send the queued metrics (1000 per request); False if the backend failed (they stay queued)."""
        while self._pending:
            chunk = self._pending[:1000]
            if not self._call(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk), "metrics"):
                return False
            del self._pending[: len(chunk)]
        return True

    def _call(self, fn, what: str) -> bool:
        try:
            fn()
        except Exception as e:  # a tracking hiccup must never kill a training run
            self._failures += 1
            log.warning(
                "MLflow %s logging failed (%s: %s); %d metrics buffered, retrying at the next log",
                what,
                type(e).__name__,
                e,
                len(self._pending),
            )
            return False
        if self._failures:
            log.info("MLflow logging recovered after %d failed attempts", self._failures)
            self._failures = 0
        return True

    def close(self, status: str = "FINISHED", retries: int = 3, backoff: float = 1.0) -> None:
        """Flush (with retries), stop system metrics, and end the run if this logger created it."""
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        for attempt in range(retries):
            if self.flush():
                break
            time.sleep(backoff * (attempt + 1))
        else:
            log.error("MLflow: %d metrics could not be sent to %s", len(self._pending), self.uri)
        if self.owned:
            self._call(lambda: self.client.set_terminated(self.run_id, status=status), "run status")


# ---------------------------------------------------------------------------------------------- lineage
def git_commit(cwd: str | Path = ".") -> str:
    """``HEAD``'s commit (with ``-dirty`` if the tree has changes), or ``unknown`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def dvc_out_hash(path: str | Path, lock: str | Path = "dvc.lock", verify: bool = False) -> str | None:
    """The md5 that ``dvc.lock`` records for the stage output ``path`` (None if not tracked there).

    Args:
        path: a stage output (file or directory).
        lock: the lock file.
        verify: return it only if the lock's ``nfiles`` and ``size`` for it still match ``path`` on disk, so a
            lock left stale by a manual run (e.g. ``mert ingest`` outside ``dvc repro``) is not reported as the
            data's hash. A cheap check (no content hashing): a change that keeps both counts slips through.
    """
    import yaml

    lock = Path(lock)
    if not lock.exists():
        return None
    target = os.path.normpath(os.path.relpath(Path(path).resolve(), lock.parent.resolve()))
    for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
        for out in stage.get("outs", []) or []:
            if os.path.normpath(out.get("path", "")) == target:
                if verify and not _matches_lock(Path(path), out):
                    log.info("dvc.lock's entry for %s does not match the directory now: its DVC hash is not recorded",
                             path)  # fmt: skip
                    return None
                return out.get("md5") or out.get("hash")
    return None


def _matches_lock(path: Path, out: Mapping[str, Any]) -> bool:
    if path.is_file():
        return out.get("size") == path.stat().st_size
    files = [f for f in path.rglob("*") if f.is_file()]
    return out.get("nfiles") == len(files) and out.get("size") == sum(f.stat().st_size for f in files)


# ---------------------------------------------------------------------------------------------- model registry
PYFUNC_CODE = '''"""MERT encoder as an MLflow pyfunc ("models from code"): 24 kHz audio -> per-layer features."""

import mlflow
import numpy as np


class MERTFeatures(mlflow.pyfunc.PythonModel):
    """``predict(audio)``: (B, L) or (L,) float32 mono 24 kHz -> (B, layers + 1, T, D) float32 hidden states."""

    def load_context(self, context):
        from mert.model import MERT

        self.model = MERT.from_pretrained(context.artifacts["encoder"]).eval()

    def predict(self, context, model_input, params=None):
        import torch

        wav = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        wav = wav[None] if wav.dim() == 1 else wav  # (B, L)
        with torch.no_grad():
            out = self.model(wav, output_hidden_states=True)
        return torch.stack(out.hidden_states, dim=1).numpy()  # (B, layers + 1, T, D)


mlflow.models.set_model(MERTFeatures())
'''


def pip_requirements() -> list[str]:
    """Explicit requirements of the pyfunc model (the ``mert`` package itself travels as code)."""
    import mlflow
    import numpy
    import safetensors
    import torch

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={numpy.__version__}",
        f"safetensors=={safetensors.__version__}",
        f"mlflow=={mlflow.__version__}",
        "pyyaml",
    ]


def log_encoder_model(logger: MLflowLogger, export_dir: str | Path, name: str = "encoder") -> str:
    """Log the HF-layout encoder ``export_dir`` into ``logger``'s run as a pyfunc; returns the model URI."""
    import tempfile

    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    import mert

    example = np.zeros((1, 24_000), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "mert_pyfunc.py"
        code.write_text(PYFUNC_CODE)
        signature = infer_signature(example, _predict_example(export_dir, example))
        with _in_run(mlflow, logger):
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(code),
                artifacts={"encoder": str(export_dir)},
                code_paths=[str(Path(mert.__file__).parent)],
                pip_requirements=pip_requirements(),
                signature=signature,
            )
    return info.model_uri


def _predict_example(export_dir: str | Path, example) -> Any:
    import torch

    from mert.model import MERT

    model = MERT.from_pretrained(export_dir).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(example), output_hidden_states=True)
    return torch.stack(out.hidden_states, dim=1).numpy()


class _in_run:
    """Make ``logger.run_id`` the active fluent run for ``log_model``, without ending a run we do not own."""

    def __init__(self, mlflow, logger: MLflowLogger):
        self.mlflow, self.logger, self.ctx = mlflow, logger, None

    def __enter__(self):
        active = self.mlflow.active_run()
        if active is None or active.info.run_id != self.logger.run_id:
            self.ctx = self.mlflow.start_run(run_id=self.logger.run_id, nested=active is not None)
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.mlflow.end_run("RUNNING")  # leave the run open: the logger (or its owner) ends it


def register_candidate(model_uri: str, name: str, tags: Mapping[str, Any], alias: str = "candidate") -> str:
    """Register ``model_uri`` as a new version of ``name``, tag it, point ``alias`` at it and write its model card
    (:mod:`mert.model_card`); returns the version.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    mv = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    client = MlflowClient()
    client.set_registered_model_alias(name, alias, mv.version)
    from mert.model_card import try_write_model_card

    try_write_model_card(client, name, mv.version)  # the version's description; rewritten when probed
    return str(mv.version)
