"""Probe results in MLflow, through ``mert.tracking`` (the only module that imports ``mlflow``).

* :func:`log_probe`: one MLflow run per probe (params, per-layer validation curve with the layer index as
  step, test metrics, ``results.json`` + plot + DVC metrics as artifacts). If the probed MODEL was a registry
  URI (``models:/name@alias`` or ``models:/name/version``), the scores are also written as tags of that model
  version (``probe.<task>.<metric>``, ``probe.<task>.best_layer``, and the evidence: ``probe.<task>.ci_low``,
  ``.ci_high``, ``.n_test``, ``.majority_rate``) so the registry UI shows them.
* :func:`promote`: move the ``champion`` alias to the ``candidate`` version when the candidate beats the
  champion on the chosen tasks (mean test-score difference > ``min_delta``, no task missing), saying why.

Everything goes through the client returned by :func:`mert.tracking.connect`; nothing here imports MLflow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mert.probe.report import EVIDENCE, dvc_metrics, output_paths

log = logging.getLogger(__name__)

EXPERIMENT = "mert-probe"


def parse_registry_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` -> ``(name, alias, None)``; ``models:/name/3`` -> ``(name, None, "3")``."""
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri!r} is not a models:/ registry URI")
    body = uri[len("models:/") :]
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, alias, None
    name, _, version = body.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"{uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    return name, None, version


def resolve_version(client: Any, uri: str) -> tuple[str, str]:
    """``(name, version)`` of a registry URI (an alias is looked up)."""
    name, alias, version = parse_registry_uri(uri)
    if alias is not None:
        version = str(client.get_model_version_by_alias(name, alias).version)
    return name, str(version)


def score_tags(report: dict[str, Any]) -> dict[str, str]:
    """Model-version tags for one probe report: the score, its metric and best layer, and its evidence (95% CI,
    number of test clips, majority rate; absent for a report written before the evidence existed).
    """
    task, metric = report["task"], report["metric"]
    tags = {f"probe.{task}.{metric}": f"{report['test_score']:.6g}", f"probe.{task}.best_layer": report["best_layer"]}
    for key in EVIDENCE:
        if report.get(key) is not None:
            value = report[key]
            tags[f"probe.{task}.{key}"] = str(value) if isinstance(value, int) else f"{value:.6g}"
    return tags | {f"probe.{task}.metric": metric}


def tag_model_version(client: Any, uri: str, report: dict[str, Any]) -> tuple[str, str]:
    """Write the probe scores of ``report`` as tags of the version ``uri`` points to, and rewrite its model card."""
    name, version = resolve_version(client, uri)
    for key, value in score_tags(report).items():
        client.set_model_version_tag(name, version, key, value)
    from mert.model_card import try_write_model_card

    try_write_model_card(client, name, version)  # the card's probe table now includes this task
    return name, version


def log_probe(report: dict[str, Any], out: str | Path, uri: str | None = None, experiment: str = EXPERIMENT) -> str:
    """Log one probe as an MLflow run (and tag the registered version if MODEL was a registry URI).

    Args:
        report: the dict :func:`mert.probe.api.probe` returned.
        out: its ``results.json`` path (the plot and metrics file beside it are logged too).
        uri: tracking URI (default: ``mert.tracking.resolve_tracking_uri``).
        experiment: experiment name.

    Returns:
        The MLflow run id.
    """
    from mert.tracking import MLflowLogger, connect
    from mert.utils.io import sha256_file

    model = report["model"]
    key = sha256_file(out) if Path(out).exists() else None
    if key is not None:
        done = _logged_probe(*connect(uri, experiment), key)
        if done is not None:
            log.info("probe %s is already logged as MLflow run %s", out, done)
            return done
    tags = {"task": report["task"], "task_kind": report["task_kind"], "model": model.get("label", ""),
            "model_hash": model.get("hash", ""), "best_layer": report["best_layer"]}  # fmt: skip
    if key is not None:
        tags[PROBE_KEY] = key
    if report.get("majority_baseline"):
        tags["majority_baseline"] = report["majority_baseline"]
    logger = MLflowLogger(uri, experiment, run_name=f"probe {report['task']} {model.get('label', '')}", tags=tags,
                          system_metrics=False)  # fmt: skip
    try:
        logger.log_config({"params": report["params"], "model": model, "task": report["task"]})
        for layer, score in report["per_layer"].items():
            if layer.isdigit():
                logger.log_dict({"valid/layer_score": score, "test/layer_score": report["per_layer_test"][layer]},
                                step=int(layer))  # fmt: skip
        flat = {k: v for k, v in dvc_metrics(report).items() if isinstance(v, (int, float))}
        logger.log_dict(flat | {"n_skipped": report["n_skipped"]}, step=0)
        for path in output_paths(out).values():
            if path.exists():
                logger.client.log_artifact(logger.run_id, str(path))
        if str(model.get("registry_uri", "")).startswith("models:/"):
            name, version = tag_model_version(logger.client, model["registry_uri"], report)
            logger.set_tags({"registered_model": name, "registered_version": version})
        logger.close()
    except BaseException:
        logger.close("FAILED")
        raise
    return logger.run_id


PROBE_KEY = "mert.results_sha256"  # a probe run's results.json: logging the same file again finds it


def _logged_probe(client: Any, experiment_id: str, key: str) -> str | None:
    """The FINISHED run that logged the results file with SHA-256 ``key`` (a retry or a rerun of the same probe);
    an unfinished one (logging was interrupted) is deleted, so that the probe is recorded once, complete.
    """
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{PROBE_KEY}` = '{key}'")
    for run in runs:
        if run.info.status == "FINISHED":
            return run.info.run_id
    for run in runs:
        client.delete_run(run.info.run_id)
        log.warning("deleted the incomplete MLflow run %s of an interrupted probe logging; logging it again",
                    run.info.run_id)  # fmt: skip
    return None


@dataclass
class Decision:
    """What :func:`promote` decided, and why."""

    promoted: bool
    reason: str
    candidate: str | None
    champion: str | None
    rows: list[dict[str, Any]] = field(default_factory=list)


def _scores(tags: dict[str, str], tasks: list[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for task in tasks:
        metric = tags.get(f"probe.{task}.metric")
        value = tags.get(f"probe.{task}.{metric}") if metric else None
        out[task] = float(value) if value is not None else None
    return out


def _version(client: Any, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:  # MLflow raises its own RestException for a missing alias
        return None


def decide(cand: dict[str, float | None], champ: dict[str, float | None] | None, min_delta: float) -> tuple[bool, str]:
    """The promotion rule on per-task test scores (higher is better for every probe metric)."""
    missing = [t for t, v in cand.items() if v is None]
    if missing:
        return False, f"candidate has no probe score for {missing}"
    if champ is None:
        return True, "there is no champion yet"
    absent = [t for t, v in champ.items() if v is None]
    if absent:
        return True, f"the champion was never probed on {absent}"
    deltas = {t: cand[t] - champ[t] for t in cand}
    mean = sum(deltas.values()) / len(deltas)
    wins = sum(d > 0 for d in deltas.values())
    summary = f"mean test-score difference {mean:+.4f} (threshold {min_delta:+.4f}), better on {wins}/{len(deltas)}"
    return mean > min_delta, summary


def promote(name: str, tasks: list[str], candidate: str = "candidate", champion: str = "champion",
            min_delta: float = 0.0, uri: str | None = None, dry_run: bool = False,
            version: str | None = None) -> Decision:  # fmt: skip
    """Move ``champion`` to the ``candidate`` version if it beats the champion on ``tasks`` (see :func:`decide`).

    ``version``: judge this version instead of the one the ``candidate`` alias points to now. A pipeline passes the
    version it registered: with two pipelines at once, ``candidate`` may already point at the other run's version.
    Reading the champion and moving it is not atomic: callers that may run at once serialise it (the flow holds a
    Prefect global concurrency limit of 1 per registered model).
    """
    from mert.tracking import connect

    client, _ = connect(uri, EXPERIMENT)
    cand = client.get_model_version(name, version) if version is not None else _version(client, name, candidate)
    if cand is None:
        return Decision(False, f"{name} has no version with alias {candidate!r}", None, None)
    champ = _version(client, name, champion)
    cand_scores = _scores(dict(cand.tags), tasks)
    champ_scores = _scores(dict(champ.tags), tasks) if champ is not None else None
    rows = [{"task": t, "candidate": cand_scores[t], "champion": champ_scores[t] if champ_scores else None}
            for t in tasks]  # fmt: skip
    if champ is not None and str(champ.version) == str(cand.version):
        return Decision(False, f"version {cand.version} already is the champion", str(cand.version), None, rows)
    ok, reason = decide(cand_scores, champ_scores, min_delta)
    if ok and not dry_run:
        client.set_registered_model_alias(name, champion, cand.version)
    return Decision(ok, reason, str(cand.version), str(champ.version) if champ else None, rows)
