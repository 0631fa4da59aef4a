"""The pipeline's stages as plain functions: paths and params in, paths and summaries out.

The CLI (and therefore ``dvc.yaml``) and the Prefect flows call these and nothing else, so
each stage exists once. Stages never import Prefect and never decide what runs next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mert.data.demo import DemoParams, generate
from mert.data.ingest import IngestParams, IngestSummary, ingest


def demo_corpus(out: str | Path, params: DemoParams | None = None) -> Path:
    """Write the built-in demo corpus (``raw/`` for pretraining, ``tasks/`` for probing) to ``out``."""
    return generate(out, params)


def ingest_corpus(
    src: str | Path, out: str | Path, params: IngestParams | None = None, progress: bool = True
) -> IngestSummary:
    """Ingest ``src`` (a directory tree of audio) into the sharded corpus ``out``."""
    return ingest(src, out, params, progress=progress)


def label(corpus: str | Path, labels: str | Path, params=None, *, shard_index: int = 0, num_shards: int = 1,
          progress: bool = True):  # fmt: skip
    """Teacher-label the corpus (the ``label`` section picks the teacher); one block of ``num_shards``."""
    from mert.teachers.config import LabelParams
    from mert.teachers.label_run import run_label

    return run_label(corpus, labels, params or LabelParams(), shard_index=shard_index, num_shards=num_shards,
                     progress=progress)  # fmt: skip


def iteration_label_params(params, parent: str):
    """The ``label`` section of a HuBERT-style next iteration: the ``hidden`` teacher on ``parent``'s hidden state.

    Args:
        params: the ``label`` section (``LabelParams``; None: its defaults); ``label.hidden`` gives the layer, the
            clusters and the fit.
        parent: the previous iteration's model (an export dir or ``models:/name/version``).

    Returns:
        A copy with ``teacher: hidden`` and ``hidden.model: parent``.
    """
    import dataclasses

    from mert.teachers.config import LabelParams

    params = params or LabelParams()
    return dataclasses.replace(params, teacher="hidden", hidden=dataclasses.replace(params.hidden, model=parent))


def iteration_dir(path: str | Path, iteration: int) -> str:
    """Where iteration ``n`` of a run or label store lives: ``path`` for 1, ``<path>-iter<n>`` after."""
    if iteration < 1:
        raise ValueError(f"iteration must be >= 1, got {iteration}")
    return str(path) if iteration == 1 else f"{path}-iter{iteration}"


def prepare_teacher(corpus: str | Path, labels: str | Path, params=None, progress: bool = False) -> str:
    """Build the teacher of ``params`` once, fitting (and saving under ``labels``) what it fits on the corpus.

    Run before labelling shards concurrently, so that they reuse one fit instead of each fitting its own.

    Returns:
        The teacher's key (its label store's directory name under ``labels``).
    """
    from mert.teachers.build import build_teacher
    from mert.teachers.config import LabelParams

    return build_teacher(params or LabelParams(), corpus, labels, progress=progress).key


def pretrain(corpus: str | Path, labels: str | Path, out: str | Path, params=None, *, nproc_per_node: int = 1,
             params_file: str | Path | None = None, max_restarts: int = 0,
             **kwargs: Any) -> dict[str, Any]:  # fmt: skip
    """Pretrain (or resume) on ``corpus`` + ``labels`` into ``out``; returns the run's result dict.

    ``kwargs`` go to :func:`mert.train.api.pretrain` (``max_steps``, ``device``, ``run_id``, ``init_from``,
    ``on_change``: the pipelines pass ``"fresh"`` so that a changed corpus, labels, recipe or code retrains,
    ``allow_code_change``). With ``nproc_per_node > 1`` or ``max_restarts > 0`` the same entry point is launched
    under ``torchrun --standalone`` (c10d rendezvous on a free localhost port, so concurrent launches on one host do
    not collide; DDP/FSDP as the profile says, ``params_file`` passed on) and the result is read from
    ``out/result.json`` written by rank 0. ``max_restarts``: a failed rank makes torchrun stop and restart the whole
    group up to this many times; each restart resumes from the newest checkpoint (exact), in the same MLflow run.

    Raises:
        subprocess.CalledProcessError: the torchrun group failed more often than ``max_restarts`` (the ranks'
            messages are on stderr).
    """
    from mert.train.api import RESULT_FILE
    from mert.train.api import pretrain as _pretrain

    if nproc_per_node <= 1 and max_restarts <= 0:
        return _pretrain(corpus, labels, out, params, **kwargs)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
           f"--max-restarts={max_restarts}", "-m", "mert.cli", "pretrain", str(corpus), str(labels),
           str(out)]  # fmt: skip
    if params_file is not None:
        cmd += ["--params", str(params_file)]
    if params is not None:
        cmd += ["--profile", params.profile]
    for flag in ("max_steps", "device", "run_id", "init_from", "on_change"):
        if kwargs.get(flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(kwargs[flag])]
    if kwargs.get("allow_code_change"):
        cmd += ["--allow-code-change"]
    subprocess.run(cmd, check=True, env=torchrun_env())
    return json.loads((Path(out) / RESULT_FILE).read_text())


def torchrun_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a ``torchrun`` launch that may restart its group.

    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (unless set): by default torch (2.4+) keeps the rendezvous' TCP store
    across restarts, and the restarted ranks can read the previous group's keys: the restarted group then hangs in
    ``init_process_group`` (seen here with 2 nodes on one host, a rank SIGKILLed; pytorch/pytorch#135712). With it,
    rank 0 hosts a fresh store on a free port at every restart.
    """
    env = dict(os.environ if env is None else env)
    env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    return env


def probe(model: str, task: str | Path, out: str | Path, params=None, *, track: bool = False,
          **kwargs: Any) -> dict[str, Any]:  # fmt: skip
    """Probe a frozen ``model`` on ``task`` layer by layer; writes ``out`` (results.json) + plot + metrics.

    With ``track`` the probe is an MLflow run, and when ``model`` is a registered version
    (``models:/name/N``) its scores become tags of that version (what ``promote`` compares).
    """
    from mert.probe.api import probe as _probe

    report = _probe(model, task, out, params, **kwargs)
    if track:
        from mert.probe.tracking import log_probe

        report["mlflow_run_id"] = log_probe(report, out)
    return report


def track_probe(out: str | Path) -> str:
    """Log the finished probe whose report is ``out`` (``results.json``) as an MLflow run, as ``probe(track=True)``
    does; returns the run id. For probes computed untracked (e.g. concurrently) and logged afterwards, in order.
    """
    import json

    from mert.probe.tracking import log_probe

    return log_probe(json.loads(Path(out).read_text()), out)


def promote(name: str, tasks: list[str], *, min_delta: float = 0.0, dry_run: bool = False,
            version: str | None = None):  # fmt: skip
    """Move ``name``'s ``champion`` alias to its ``candidate`` (or to ``version``) if it wins on ``tasks``' probe
    scores.
    """
    from mert.probe.tracking import promote as _promote

    return _promote(name, tasks, min_delta=min_delta, dry_run=dry_run, version=version)
