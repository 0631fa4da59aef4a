"""The model card of a registered encoder version: a Markdown description in the MLflow model registry.

Everything on the card is read back from the registry, so it is a function of what is recorded there:

* the version's lineage tags, written by ``mert pretrain`` at registration (``profile``, ``teacher``,
  ``teacher_hash``, ``corpus_path``, ``corpus_manifest_sha256``, ``corpus_dvc_md5``, ``step``, ``run_id``,
  ``git_commit``, ... any other tag is listed too), and for a model trained on a hidden-state teacher (HuBERT
  iteration 2+) the model its labels came from (``teacher_parent_model``, its weights, layer, k-means, iteration);
* the final losses: the latest ``*loss*`` metrics of the training run (``train/loss/total``, ``val/loss/total``,
  the per-teacher CE and CQT parts; per-codebook metrics are left out);
* the probe table, once probed: ``probe.<task>.*`` tags written by ``mert probe --mlflow``
  (:func:`mert.probe.tracking.score_tags`): test score with its 95% bootstrap CI, n test, majority rate, best
  layer (the evidence of :mod:`mert.probe.evidence`);
* how to load it: ``mlflow.pyfunc.load_model`` and ``MERT.from_pretrained`` on the downloaded artifact.

:func:`write_model_card` sets it as the version's description; ``mert.tracking.register_candidate`` calls it at
registration and ``mert.probe.tracking.tag_model_version`` again whenever probe scores arrive. The module never
imports MLflow: it takes the client of :func:`mert.tracking.connect` (or any ``MlflowClient``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LINEAGE = (
    ("profile", "profile"),
    ("teacher", "teacher"),
    ("teacher_hash", "teacher identity hash"),
    ("teacher_iteration", "HuBERT iteration"),
    ("teacher_parent_model", "teacher's parent model"),
    ("teacher_parent_version", "teacher's parent version"),
    ("teacher_parent_model_sha256", "teacher's parent weights sha256"),
    ("teacher_layer", "teacher's parent layer"),
    ("teacher_n_clusters", "teacher clusters"),
    ("teacher_kmeans_hash", "teacher k-means hash"),
    ("corpus_path", "corpus"),
    ("corpus_manifest_sha256", "corpus manifest sha256"),
    ("corpus_dvc_md5", "corpus DVC md5"),
    ("step", "steps"),
    ("run_id", "training run"),
    ("git_commit", "git commit"),
    ("checkpoint", "checkpoint"),
)
"""Lineage tags shown first, with their labels (other non-probe tags follow under their own names)."""
MAX_LOSSES = 12
DEFAULT_ENCODER_PATH = "artifacts/export"
"""Where ``log_encoder_model`` puts the HF-layout encoder inside the logged model (``artifacts/<export dir name>``)."""


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _num(value: Any, digits: int = 3) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "n/a"


def probe_rows(tags: Mapping[str, str]) -> list[dict[str, str]]:
    """One row per probed task from ``probe.<task>.*`` version tags (sorted by task).

    Returns:
        Dicts with ``task, metric, score, ci_low, ci_high, n_test, majority_rate, best_layer`` (strings as
        tagged; missing evidence is absent).
    """
    rows = []
    for key in sorted(tags):
        if not (key.startswith("probe.") and key.endswith(".metric")):
            continue
        task = key[len("probe.") : -len(".metric")]
        metric = tags[key]
        row = {"task": task, "metric": metric, "score": tags.get(f"probe.{task}.{metric}")}
        for field in ("ci_low", "ci_high", "n_test", "majority_rate", "best_layer"):
            if f"probe.{task}.{field}" in tags:
                row[field] = tags[f"probe.{task}.{field}"]
        rows.append(row)
    return rows


def _above_majority(row: Mapping[str, str]) -> str:
    """Whether the whole 95% CI lies above the majority rate (a score that learned more than class frequencies)."""
    try:
        low, high, rate = float(row["ci_low"]), float(row["ci_high"]), float(row["majority_rate"])
    except (KeyError, TypeError, ValueError):
        return "n/a"
    return "yes" if low > rate else ("no, below" if high < rate else "no, overlaps")


def probe_table(tags: Mapping[str, str], uri: str) -> str:
    """The Markdown probe table (or how to fill it when nothing was probed yet)."""
    rows = probe_rows(tags)
    if not rows:
        return (
            f"Not probed yet. `mert probe --model {uri} --task TASK --mlflow` writes each task's score, 95% CI, "
            "n test and majority rate here."
        )
    head = "| task | metric | score [95% CI] | n test | majority rate | best layer | CI above majority rate |\n"
    head += "|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        ci = f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]" if "ci_low" in r else "[n/a]"
        cells = (r["task"], r["metric"], f"{_num(r['score'])} {ci}", r.get("n_test", "n/a"),
                 _num(r.get("majority_rate")), r.get("best_layer", "n/a"), _above_majority(r))  # fmt: skip
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    note = (
        "\n\nScores are test scores at the layer chosen on validation (MARBLE protocol). The 95% CIs are "
        "percentile bootstraps over the test clips (`mert/probe/evidence.py`): they cover test-clip sampling, not "
        "the probe's training randomness. The majority rate is the score of a predictor that learned nothing. "
        "Paired verdicts against the random-init twin or a handcrafted baseline: `mert probe-compare A.json B.json`."
    )
    return head + "\n".join(lines) + note


def lineage_table(tags: Mapping[str, str]) -> str:
    """Known lineage tags first (labelled), then every other non-probe tag."""
    rows = [(label, tags[key]) for key, label in LINEAGE if tags.get(key) not in (None, "")]
    known = {k for k, _ in LINEAGE}
    rows += [(k, v) for k, v in sorted(tags.items()) if k not in known and not k.startswith(("probe.", "mlflow."))]
    body = "\n".join(f"| {_cell(k)} | `{_cell(v)}` |" for k, v in rows)
    return "| | |\n|---|---|\n" + body if rows else "No lineage tags recorded."


def iteration_line(tags: Mapping[str, str]) -> str:
    """For a model trained on a hidden-state teacher: which model's hidden state its labels clustered (else "")."""
    parent = tags.get("teacher_parent_model")
    if not parent:
        return ""
    it = tags.get("teacher_iteration")
    which = f"HuBERT iteration {it}" if it else "a HuBERT-style iteration"
    version = f" (version `{tags['teacher_parent_version']}`)" if tags.get("teacher_parent_version") else ""
    return (
        f"{which}: its teacher labels are the {tags.get('teacher_n_clusters', '?')}-cluster k-means codes of hidden "
        f"state {tags.get('teacher_layer', '?')} of `{_cell(parent)}`{version}, weights sha256 "
        f"`{tags.get('teacher_parent_model_sha256', '?')[:12]}`.\n\n"
    )


def losses_table(metrics: Mapping[str, float]) -> str:
    """The final (latest) loss metrics of the training run, per-codebook ones left out."""
    keys = [k for k in metrics if "loss" in k and not re.search(r"_\d+$", k)]
    keys.sort(key=lambda k: (not k.startswith("train/"), "total" not in k, k))
    if not keys:
        return "No loss metrics recorded in the training run."
    body = "\n".join(f"| `{_cell(k)}` | {metrics[k]:.4g} |" for k in keys[:MAX_LOSSES])
    return "| metric | final value |\n|---|---|\n" + body


def load_section(uri: str, encoder_path: str = DEFAULT_ENCODER_PATH) -> str:
    """How to load the version: the pyfunc, and the encoder itself from the downloaded artifact."""
    return f"""```python
import mlflow

encoder = mlflow.pyfunc.load_model("{uri}")
features = encoder.predict(wav)  # wav: (B, L) float32 mono 24 kHz -> (B, layers + 1, T, D)
```

```python
import mlflow
from mert import MERT

path = mlflow.artifacts.download_artifacts("{uri}")
model = MERT.from_pretrained(f"{{path}}/{encoder_path}")  # the released HF layout: config.json + weights
out = model(input_values=wav, output_hidden_states=True)  # out.hidden_states: layers + 1 x (B, T, D)
```

The downloaded `{encoder_path}` directory also loads into `transformers.HubertModel` and `mert extract -m`;
`mert probe --model {uri}` reads the version straight from the registry."""


def card_markdown(name: str, version: str, tags: Mapping[str, str], metrics: Mapping[str, float],
                  encoder_path: str = DEFAULT_ENCODER_PATH) -> str:  # fmt: skip
    """The whole card.

    Args:
        name: registered model name.
        version: its version.
        tags: the version's tags (lineage and ``probe.*``).
        metrics: the training run's latest metrics (``{}`` if unknown).
        encoder_path: the HF-layout encoder inside the logged model's artifacts.

    Returns:
        Markdown (GitHub flavour: tables, fenced code), as the MLflow UI renders descriptions.
    """
    uri = f"models:/{name}/{version}"
    profile = tags.get("profile", name)
    return f"""## {name} version {version}: MERT encoder, profile `{profile}`

A MERT-style music encoder (HuBERT architecture over 24 kHz mono audio, 75 Hz frames) pretrained by
`mert pretrain` with masked prediction of teacher codes (and CQT reconstruction when the objective has it).

### Lineage

{iteration_line(tags)}{lineage_table(tags)}

### Final losses (training run)

{losses_table(metrics)}

### Probe scores

{probe_table(tags, uri)}

### How to load it

{load_section(uri, encoder_path)}

_Card written by `mert` (`mert/model_card.py`) at registration and rewritten when probe scores arrive._
"""


def encoder_path(client: Any, source: str) -> str:
    """The encoder's path inside the logged model, read from its ``MLmodel`` when the artifacts are local."""
    try:
        location = source
        if source.startswith("models:/m-"):  # an MLflow 3 LoggedModel
            location = client.get_logged_model(source[len("models:/") :]).artifact_location
        from urllib.parse import unquote, urlparse

        local = Path(unquote(urlparse(location).path)) if location.startswith("file:") else Path(location)
        import yaml

        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
        return str(flavor["artifacts"]["encoder"]["path"])
    except Exception:  # a remote store, an older layout: the default of log_encoder_model
        return DEFAULT_ENCODER_PATH


def write_model_card(client: Any, name: str, version: str | int) -> str:
    """Build the card of ``name`` version ``version`` from the registry and set it as the version's description.

    Args:
        client: an ``MlflowClient`` (e.g. from :func:`mert.tracking.connect`).
        name: registered model name.
        version: version number.

    Returns:
        The Markdown written.
    """
    mv = client.get_model_version(name, str(version))
    tags = dict(mv.tags)
    run_id = tags.get("run_id") or mv.run_id
    metrics: dict[str, float] = {}
    if run_id:
        try:
            metrics = dict(client.get_run(run_id).data.metrics)
        except Exception as e:  # a deleted run: the card says so instead of failing
            log.warning("model card of %s v%s: training run %s unreadable (%s)", name, version, run_id, e)
    md = card_markdown(name, str(version), tags, metrics, encoder_path(client, mv.source or ""))
    client.update_model_version(name, str(version), description=md)
    return md


def try_write_model_card(client: Any, name: str, version: str | int) -> str | None:
    """:func:`write_model_card`, logging instead of raising: a card must never fail a registration or a probe."""
    try:
        return write_model_card(client, name, version)
    except Exception as e:
        log.warning("could not write the model card of %s version %s: %s: %s", name, version, type(e).__name__, e)
        return None
