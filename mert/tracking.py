"""Experiment tracking behind a small interface: ``log_dict / log_config / close`` (rank 0 only).

:class:`MLflowLogger` (the tracker of record), :class:`DiskLogger` (``metrics.jsonl``) and :class:`StdoutLogger`
implement it; :class:`MultiLogger` fans out. This is the only module that imports ``mlflow`` (lazily, inside the
functions), so ``mert`` imports and tests without it.

MLflow 3 notes (``stack-notes.md``): the default store is ``sqlite:///mlflow.db`` in the working directory with
artifacts in ``mlartifacts/`` (the file store raises in 3.13+); models are logged with ``name=`` as pyfunc
"models from code"; ``MLFLOW_RUN_ID`` is read once, because ``start_run`` deletes it when it resumes a run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import threading
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
    """The run's metric journal: appends one JSON object per call to ``path``; the config goes beside it.

    Each line is ``{"step": k, "time_ms": <unix ms>, ...metrics}``. A line cut short by a kill is skipped by
    :func:`read_jsonl` and removed when the journal is opened again, so appending (not atomic rewriting) is safe.

    Replay-safe: a resumed run recomputes the steps after its last checkpoint (with the same values: resume is
    exact), so a value for a key at a step at or before the last step journaled for that key before this logger
    opened is dropped (``dropped`` counts them): each (key, step) is journaled once, however often the run restarts.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_cut_tail(self.path)
        self.journaled: dict[str, int] = {}  # key -> last step journaled before this logger opened
        if self.path.exists():
            for row in read_jsonl(self.path):
                for k in row.keys() - JOURNAL_FIELDS:
                    self.journaled[k] = max(self.journaled.get(k, row["step"]), row["step"])
        self.dropped = 0
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        fresh = {k: float(v) for k, v in metrics.items() if step > self.journaled.get(k, -1)}
        self.dropped += len(metrics) - len(fresh)
        if fresh:
            self._f.write(json.dumps({"step": step, "time_ms": int(time.time() * 1000), **fresh}) + "\n")
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
        if self.dropped:
            log.info("%s: %d values of steps already journaled before a restart were not written again", self.path,
                     self.dropped)  # fmt: skip
        self._f.close()


JOURNAL_FIELDS = frozenset({"step", "time_ms"})  # the other fields of a journal line are metrics


def _drop_cut_tail(path: Path) -> None:
    """Truncate ``path`` after its last newline.

    A kill mid-write leaves a partial last line, which the next append would otherwise glue to a whole one.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = pos = f.tell()
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                pos = pos - step + nl + 1
                break
            pos -= step
        if pos != size:
            f.truncate(pos)
            log.warning("%s: removed a partial last line (%d bytes) left by a killed run", path, size - pos)


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

    def close(self, status: str = "FINISHED", wait: float | None = None) -> list[str]:
        """Close every logger; returns what the loggers that track remotely could not send (see MLflowLogger)."""
        unsent: list[str] = []
        for lg in self.loggers:
            if isinstance(lg, MLflowLogger):
                unsent += lg.close(status) if wait is None else lg.close(status, wait=wait)
            else:
                lg.close(status)
        return unsent


# ---------------------------------------------------------------------------------------------- MLflow
def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _env_offline() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for any other store)."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


SQLITE_LOCK_TIMEOUT = 600.0  # seconds another process may hold a sqlite store's first-use lock (its migration: ~3 s)


def connect(uri: str | None = None, experiment: str = "mert-pretrain") -> tuple[Any, str]:
    """Check the tracking backend and get the experiment id; :class:`TrackingError` if it is unusable.

    A sqlite store gets a local artifact root ``mlartifacts/`` beside the database. Its first use by a process
    (creating or migrating the schema, creating the experiment) holds an inter-process file lock
    (``<db>.lock``): two processes opening a new ``mlflow.db`` at once otherwise both migrate it, and the second
    fails half-way (``table ... already exists``, ``Online migration expected to match one row``). An experiment
    created by another client between our lookup and our create is looked up again, on any store.
    """
    _env_offline()
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(uri)
    db = sqlite_path(uri)
    try:
        lock = _sqlite_lock(db) if db is not None else contextlib.nullcontext()
        with lock:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            client = MlflowClient(uri, registry_uri=uri)
            exp = client.get_experiment_by_name(experiment)
            if exp is not None:
                return client, exp.experiment_id
            artifacts = (db.parent / DEFAULT_ARTIFACTS).resolve().as_uri() if db is not None else None
            try:
                return client, client.create_experiment(experiment, artifact_location=artifacts)
            except Exception:  # created meanwhile by another client (a server store has no lock of ours)
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                return client, exp.experiment_id
    except Exception as e:  # every backend failure mode (connection, auth, schema) ends here
        raise TrackingError(_unusable(uri, e)) from e


def _sqlite_lock(db: Path):
    import filelock

    db.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(db) + ".lock", timeout=SQLITE_LOCK_TIMEOUT)


def _unusable(uri: str, e: Exception) -> str:
    what = f"{type(e).__name__}: {e}"
    if sqlite_path(uri) is not None:
        return (f"MLflow sqlite store {uri!r} could not be opened ({what}). Check that the file is a MLflow "
                "database of this version (mlflow db upgrade) on a local disk, or set MLFLOW_TRACKING_URI to another "
                "store (a tracking server: infra/local/start.sh --team), or use pretrain.tracker: disk")  # fmt: skip
    return (f"MLflow tracking at {uri!r} is unreachable or unusable ({what}). Start the server (infra/local/start.sh "
            "--team), set MLFLOW_TRACKING_URI / pretrain.tracking_uri to a working store, or use pretrain.tracker: "
            "disk")  # fmt: skip


def _permanent(e: Exception) -> bool:
    """An MLflow error that a retry cannot fix: the store answered 4xx (bad value, conflict, not found)."""
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover
        return False
    if not isinstance(e, MlflowException):
        return False
    status = e.get_http_status_code()
    return 400 <= status < 500 and status not in (408, 429)


class MLflowLogger:
    """Logs to one MLflow run; a tracking failure never stops or slows the caller.

    Two ways to hold what is not sent yet:

    * ``journal=None`` (probe and report runs): metrics that fail to send are kept in memory (at most
      ``MAX_BUFFER``) and retried at the next call and at :meth:`close`.
    * ``journal=PATH`` (pretraining): every call is first appended to the run's journal ``PATH`` (a
      :class:`DiskLogger`: ``metrics.jsonl``), and a background thread sends the journal's new lines to MLflow,
      retrying with backoff (1 s doubling to 30 s) while the server is away. How far the run got is kept in
      ``<journal stem>.mlflow.json`` (run id, store, byte offset), so a run killed or closed while the tracker was
      down sends the rest when it is next opened. Each metric keeps the time it was journaled: sending a line
      again (a kill between the send and the cursor update) is ignored by the store (same key, step, time, value).

    Tags, params and artifacts that fail are retried the same way, in order. :meth:`close` waits up to
    ``close_wait`` seconds for everything to be sent, then ends the run if this logger owns it; what is still
    unsent is in :attr:`unsent` (and said at ERROR level), and the run is left RUNNING for a later
    :meth:`close` (e.g. ``mert pretrain`` run again) to complete.

    Args:
        uri: tracking URI (see :func:`resolve_tracking_uri`).
        experiment: experiment name.
        run_id: an existing run to log into (e.g. opened by a Prefect flow); default ``$MLFLOW_RUN_ID`` as read
            at import. Otherwise a new run is created, nested under the active fluent run if there is one.
        run_name: name of a new run.
        tags: tags set on the run.
        system_metrics: sample CPU/GPU/memory into the run every ``system_interval`` seconds (restarted after an
            outage; samples taken while the server was away are lost: they are not journaled).
        own_run: end the run in :meth:`close` (default: only if this logger created it).
        journal: the run's metric journal (see above); None keeps unsent metrics in memory.
        close_wait: seconds :meth:`close` keeps trying to send what is pending.
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
        journal: str | Path | None = None,
        close_wait: float = 5.0,
    ):
        import mlflow

        self.client, self.experiment_id = connect(uri, experiment)
        self.uri = resolve_tracking_uri(uri)
        run_id = run_id or _ENV_RUN_ID
        self.owned = run_id is None if own_run is None else own_run
        resumed = run_id is not None and self.owned
        if run_id is None:
            run_id = self._create_run(mlflow, run_name)
        elif self.owned:  # our own run, resumed after a kill or a failure
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.close_wait = close_wait
        self._pending: list[Any] = []  # in-memory mode: Metric objects not sent yet
        self._ops: list[tuple[str, Any]] = []  # (what, call) not sent yet: tags, params, artifacts, run status
        self._failures = 0
        self._rejected = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.unsent: list[str] = []
        self.ended = False
        self.journal = DiskLogger(journal) if journal is not None else None
        if self.journal is not None:
            self._cursor_path = self.journal.path.with_name(self.journal.path.stem + ".mlflow.json")
            self._offset, self._artifacts, self._params = self._read_cursor()
            if resumed:
                self._resend_state()
        if tags:
            self.set_tags(tags)
        self._system = (system_interval, resumed) if system_metrics else None
        self._monitor = self._start_monitor(resume=resumed) if system_metrics else None
        self._sender = None
        if self.journal is not None:
            self._sender = threading.Thread(target=self._send_loop, name="mlflow-journal-sender", daemon=True)
            self._sender.start()
            self._wake.set()  # send what an earlier process journaled and could not send

    def _create_run(self, mlflow, run_name: str | None) -> str:
        tags = {}
        parent = mlflow.active_run()
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.info.run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        return run.info.run_id

    def _start_monitor(self, resume: bool):
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self._system[0], resume_logging=resume,
                                           tracking_uri=self.uri)  # fmt: skip
            monitor.start()
            return monitor
        except Exception as e:  # optional: psutil/pynvml missing
            log.warning("MLflow system metrics disabled: %s", e)
            return None

    # ------------------------------------------------------------------ the calls
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        if self.journal is not None:
            self.journal.set_tags(tags)
        tags = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self._op("tags", lambda: self.client.log_batch(self.run_id, tags=tags))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy the file ``path`` into the run's artifacts (replacing an earlier copy); retried like the rest.

        With a journal, the file is remembered and sent again when the run is reopened (its newest content).
        """
        if self.journal is not None and [str(path), artifact_path] not in self._artifacts:
            self._artifacts.append([str(path), artifact_path])
            self._write_cursor()
        self._op("artifact", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Flattened ``config`` as run params (100 per request, values cut to 500 characters)."""
        from mlflow.entities import Param

        params = [Param(k, str(v)[:500]) for k, v in sorted(flatten(config).items())]
        if self.journal is not None:
            self.journal.log_config(config)
            self._params = {p.key: p.value for p in params}  # exactly as sent, to send again on reopening
            self._write_cursor()
        for i in range(0, len(params), 100):
            chunk = params[i : i + 100]
            self._op("params", lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk))

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` at ``step``: journaled and sent in the background, or queued and sent now."""
        from mlflow.entities import Metric

        if self.journal is not None:
            self.journal.log_dict(metrics, step)
            self._wake.set()
            return
        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v)))
        if len(self._pending) > MAX_BUFFER:
            dropped = len(self._pending) - MAX_BUFFER
            self._pending = self._pending[dropped:]
            log.warning("MLflow metric buffer full: dropped the %d oldest metrics", dropped)
        self.flush()

    def _op(self, what: str, fn) -> None:
        """Run a non-metric call now, or keep it (in order) for the next attempt if the backend fails."""
        with self._lock:
            self._ops.append((what, fn))
        if self.journal is None:
            self.flush()
        else:
            self._wake.set()

    # ------------------------------------------------------------------ sending
    def flush(self) -> bool:
        """Send everything pending: ops in order, then metrics (1000 per request).

        Returns:
            False if the backend failed (what failed stays pending).
        """
        with self._lock:
            while self._ops:
                what, fn = self._ops[0]
                if not self._call(fn, what) and not self._rejected:
                    return False
                self._ops.pop(0)
            if self.journal is not None:
                return self._send_journal()
            while self._pending:
                chunk = self._pending[:1000]
                sent = self._call(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk), "metrics")
                if not sent and not self._rejected:
                    return False
                del self._pending[: len(chunk)]
            return True

    def _send_journal(self) -> bool:
        """Send the journal's complete lines after the cursor, in groups of whole lines; advance the cursor."""
        from mlflow.entities import Metric

        with open(self.journal.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        pos, stop, batch = self._offset, self._offset + end, []
        for raw in data[:end].splitlines(keepends=True):
            pos += len(raw)
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                continue
            ts = int(row.get("time_ms") or time.time() * 1000)
            batch += [Metric(k, float(v), ts, int(row["step"])) for k, v in row.items()
                      if k not in JOURNAL_FIELDS and math.isfinite(float(v))]  # fmt: skip
            if len(batch) >= 1000 or pos == stop:
                for i in range(0, len(batch), 1000):
                    chunk = batch[i : i + 1000]
                    sent = self._call(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk), "metrics")
                    if not sent and not self._rejected:
                        return False
                batch = []
                self._offset = pos
                self._write_cursor()
        return True

    def _read_cursor(self) -> tuple[int, list[list[str | None]], dict[str, str]]:
        """(byte offset of the journal sent to this run, artifacts logged, params logged); nothing for another run."""
        try:
            cur = json.loads(self._cursor_path.read_text())
        except (OSError, json.JSONDecodeError):
            return 0, [], {}
        if cur.get("run_id") != self.run_id or cur.get("tracking_uri") != self.uri:
            return 0, [], {}
        size = self.journal.path.stat().st_size if self.journal.path.exists() else 0
        return min(int(cur.get("offset", 0)), size), list(cur.get("artifacts", [])), dict(cur.get("params", {}))

    def _write_cursor(self) -> None:
        from mert.utils.io import atomic_write_json

        state = {"run_id": self.run_id, "tracking_uri": self.uri, "offset": self._offset, "artifacts": self._artifacts,
                 "params": self._params}  # fmt: skip
        atomic_write_json(self._cursor_path, state)

    def _resend_state(self) -> None:
        """Reopening our own run: send again what a process that ended during an outage may not have sent.

        The tags beside the journal (``tags.json``), the params and the artifacts it logged (kept in the cursor file,
        params exactly as sent): the store keeps one copy of each.
        """
        from mlflow.entities import Param, RunTag

        tags_file = self.journal.path.with_name("tags.json")
        if tags_file.exists():
            tags = [RunTag(k, str(v)[:5000]) for k, v in json.loads(tags_file.read_text()).items()]
            for i in range(0, len(tags), 100):
                chunk = tags[i : i + 100]
                self._op("tags", lambda chunk=chunk: self.client.log_batch(self.run_id, tags=chunk))
        params = [Param(k, v) for k, v in sorted(self._params.items())]
        for i in range(0, len(params), 100):
            chunk = params[i : i + 100]
            self._op("params", lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk))
        for path, artifact_path in self._artifacts:
            if Path(path).exists():
                self._op("artifact", lambda p=path, a=artifact_path: self.client.log_artifact(self.run_id, p, a))

    def _send_loop(self) -> None:
        """The journal sender: wait for new lines (or the backoff), send; until :meth:`close`."""
        backoff = 0.0
        while not self._stop.is_set():
            self._wake.wait(timeout=backoff or None)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self.flush():
                backoff = 0.0
                self._revive_monitor()
            else:
                backoff = min(30.0, max(1.0, 2 * backoff))

    def _revive_monitor(self) -> None:
        """Restart system metrics after an outage (MLflow's monitor stops at its first failed request)."""
        mon = self._monitor
        if self._system is None or self._stop.is_set() or mon is None or getattr(mon, "_process", None) is None:
            return
        if not mon._process.is_alive():
            self._monitor = self._start_monitor(resume=True)

    def _call(self, fn, what: str) -> bool:
        """Run one request; False if it failed. A request the store refuses for what it is (HTTP 4xx: an invalid
        or conflicting value) sets ``_rejected``: retrying cannot help, so the caller drops it (logged as an error).
        """
        self._rejected = False
        try:
            fn()
        except Exception as e:  # a tracking hiccup must never kill a training run
            if _permanent(e):
                self._rejected = True
                log.error("MLflow refused %s for run %s (%s: %s); dropped (retrying cannot help)", what, self.run_id,
                          type(e).__name__, e)  # fmt: skip
                return False
            self._failures += 1
            if self._failures == 1 or self._failures % 10 == 0:
                log.warning("MLflow %s logging failed (%s: %s); %s, retrying", what, type(e).__name__,
                            str(e).splitlines()[0][:300] if str(e) else "", self._pending_text())  # fmt: skip
            return False
        if self._failures:
            log.info("MLflow logging recovered after %d failed attempts", self._failures)
            self._failures = 0
        return True

    def _pending_text(self) -> str:
        if self.journal is None:
            return f"{len(self._pending)} metrics buffered"
        return f"journal {self.journal.path} holds {self._journal_backlog()[0]} metric values not sent yet"

    def _journal_backlog(self) -> tuple[int, int | None, int | None]:
        """(metric values, first step, last step) of the journal's complete lines after the cursor."""
        n, lo, hi = 0, None, None
        with open(self.journal.path, "rb") as f:
            f.seek(self._offset)
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                n += len(row.keys() - JOURNAL_FIELDS)
                lo = row["step"] if lo is None else min(lo, row["step"])
                hi = row["step"] if hi is None else max(hi, row["step"])
        return n, lo, hi

    # ------------------------------------------------------------------ the end
    def close(self, status: str = "FINISHED", wait: float | None = None) -> list[str]:
        """Send what is pending (for up to ``wait`` s, default ``close_wait``), stop system metrics, end the run if
        this logger owns it. Returns (and keeps in :attr:`unsent`) what could not be sent, in words; [] when the run
        is complete in MLflow.
        """
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        self._stop.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join()
        deadline = time.monotonic() + (self.close_wait if wait is None else wait)
        pause = 1.0
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(10.0, 2 * pause)
        if not self._ops and self.owned and self._journal_done():
            self._op("run status", lambda: self._end_run(status))
            if self.journal is not None:
                self.flush()
        self.unsent = self._unsent_report()
        if self.unsent:
            log.error("MLflow at %s could not be reached to complete run %s: not logged: %s", self.uri, self.run_id,
                      "; ".join(self.unsent))  # fmt: skip
        if self.journal is not None:
            self.journal.close()
        return self.unsent

    def _end_run(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)
        self.ended = True

    def _journal_done(self) -> bool:
        return self.journal is None or self._journal_backlog()[0] == 0

    def _unsent_report(self) -> list[str]:
        out = []
        if self.journal is not None:
            n, lo, hi = self._journal_backlog()
            if n:
                out.append(f"{n} metric values of steps {lo}-{hi} (kept in {self.journal.path}; sent when the run is "
                           "next opened)")  # fmt: skip
        elif self._pending:
            out.append(f"{len(self._pending)} metric values (lost: not journaled)")
        whats = sorted({w for w, _ in self._ops} - {"run status"})
        if whats:
            out.append(", ".join(whats))
        if self.owned and not self.ended:
            out.append("the run's end (it stays RUNNING until it is completed)")
        return out


def local_artifacts(location: str, uri: str | None = None) -> Path:
    """A directory of artifacts on this machine: ``location`` itself when it is local (``file:`` or a path; the
    default sqlite + ``mlartifacts/`` setup), else downloaded once from the tracking server into the model cache.

    The cache (``$MERT_MODEL_CACHE``, default ``~/.cache/mert/models``) holds one directory per (tracking URI,
    location): registered versions never change, so a download is reused; it is written to a temporary directory
    and renamed into place, so a killed or concurrent download never leaves a partial one.

    Raises:
        TrackingError: the server could not be reached or has no such artifacts.
    """
    import hashlib
    import shutil
    import tempfile
    from urllib.parse import unquote, urlparse

    if location.startswith("file:") or "://" not in location and ":/" not in location:
        return Path(unquote(urlparse(location).path)) if location.startswith("file:") else Path(location)
    uri = resolve_tracking_uri(uri)
    cache = Path(os.environ.get("MERT_MODEL_CACHE") or Path.home() / ".cache/mert/models")
    final = cache / hashlib.sha256(f"{uri}\n{location}".encode()).hexdigest()[:20]
    if final.is_dir():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    _env_offline()
    import mlflow

    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(tmp), tracking_uri=uri)
        try:
            tmp.rename(final)
        except OSError:  # downloaded meanwhile by another process: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrackingError(f"could not download the artifacts {location} from {uri} ({type(e).__name__}: {e})") from e
    log.info("downloaded %s from %s into %s", location, uri, final)
    return final


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


def log_encoder_model(logger: MLflowLogger, export_dir: str | Path, name: str = "encoder", step: int = 0) -> str:
    """Log the HF-layout encoder ``export_dir`` into ``logger``'s run as a pyfunc; returns the model URI.

    The model is tagged with ``step``; a model of that name and step already logged (READY) in the run is reused,
    so a retry after a tracker failure does not log it twice.
    """
    import tempfile

    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    import mert

    found = _logged_model(logger, name, step)
    if found is not None:
        return found
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
                step=step,
                tags={"mert.step": str(step)},
            )
    return info.model_uri


def _logged_model(logger: MLflowLogger, name: str, step: int) -> str | None:
    """The URI of a READY model ``name`` logged in ``logger``'s run at ``step``, if there is one."""
    found = logger.client.search_logged_models(
        experiment_ids=[logger.experiment_id],
        filter_string=f"source_run_id = '{logger.run_id}' AND name = '{name}'",
    )
    for m in found:
        if str(m.status) in ("READY", "LoggedModelStatus.READY") and m.tags.get("mert.step") == str(step):
            return m.model_uri
    return None


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


def register_candidate(model_uri: str, name: str, tags: Mapping[str, Any], alias: str = "candidate",
                       run_id: str | None = None, step: int | None = None) -> str:  # fmt: skip
    """Register ``model_uri`` as a new version of ``name``, tag it, point ``alias`` at it and write its model card
    (:mod:`mert.model_card`); returns the version.

    With ``run_id`` and ``step``, a version already registered from that run at that step is reused (its alias and
    card set again) instead of registering a second one: registration is idempotent across retries and reruns.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    mv = _registered_version(client, name, run_id, step) if run_id is not None and step is not None else None
    if mv is None:
        mv = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    _alias_newest(client, name, alias)
    from mert.model_card import try_write_model_card

    try_write_model_card(client, name, mv.version)  # the version's description; rewritten when probed
    return str(mv.version)


def _alias_newest(client: Any, name: str, alias: str) -> str:
    """Point ``alias`` at the newest version of ``name`` and check it still is afterwards.

    Two registrations at once (two pipelines, one registry) may set the alias in either order; each writer re-reads
    after writing and writes again if a newer version appeared, so the last one to stop leaves it on the newest.
    """
    while True:
        newest = str(max(int(v.version) for v in client.search_model_versions(f"name = '{name}'")))
        client.set_registered_model_alias(name, alias, newest)
        if str(max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))) == newest:
            return newest


def _registered_version(client: Any, name: str, run_id: str, step: int):
    """The version of ``name`` registered from ``run_id`` at ``step`` (its ``step`` tag), or None."""
    for mv in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if mv.tags.get("step") == str(step):
            return mv
    return None
