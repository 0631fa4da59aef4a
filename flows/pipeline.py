"""The ``mert-pipeline`` Prefect flow: ingest -> label -> pretrain (per scale) -> probe -> promote.

With ``teacher_iterations=2`` (HuBERT-style), each trained model then re-labels the corpus with k-means codes of
its hidden state (``label.hidden``) into ``data/labels-iter2``, and a second model is pretrained on them into
``data/pretrain/<profile>-iter2``, registered as the next version of the profile's model, probed and promoted like
the first (and so on for 3 and more).

Thin by design: every task calls one function of :mod:`mert.stages` with paths and a params section;
the flow only wires outputs to inputs, fans labelling out over shards, and publishes artifacts.
Run it directly (``python -m flows.pipeline``, an ephemeral local Prefect) or as a deployment
(``prefect deployment run 'mert-pipeline/demo'``, see ``prefect.yaml``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from mert import stages
from mert.params import load_params
from mert.utils.io import fingerprint, sha256_json

DEMO_SOURCE = "data/demo/raw"


def _key(stage: str, params: Any, *paths: str) -> str:
    """Cache key: the stage, its params section, and the absolute path and content fingerprint of each path.

    The absolute path matters: flow runs on one Prefect server share its result cache, and two workdirs (two
    pipelines at once) must not take each other's outputs for their own (a missing path fingerprints the same
    everywhere).
    """
    section = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else params
    return sha256_json([stage, section, [[str(Path(p).resolve()), fingerprint(p)] for p in paths]])


DEMO_CODE = [f"mert/data/{m}.py" for m in ("demo", "rendered", "render", "scores", "synth", "audiofile")]


@task(name="demo-corpus", retries=1, persist_result=True,
      cache_key_fn=lambda ctx, a: _key("demo", a["params"], *DEMO_CODE, a["out"]))  # fmt: skip
def demo_task(out: str, params) -> str:
    return str(stages.demo_corpus(out, params))


@task(name="ingest", retries=2, retry_delay_seconds=5)
def ingest_task(source: str, out: str, params) -> dict:
    summary = stages.ingest_corpus(source, out, params, progress=False).as_dict()
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items() if k != "reasons")
    reasons = ", ".join(f"{k} x{v}" for k, v in summary["reasons"].items()) or "none"
    md = f"## Ingest `{source}` -> `{out}`\n\n| | |\n|---|---|\n{rows}\n\nrejected: {reasons}"
    create_markdown_artifact(key="ingest-summary", description=f"ingest {source}", markdown=md)
    return summary


@task(name="label-shard", retries=2, retry_delay_seconds=5)
def label_task(corpus: str, labels: str, params, shard_index: int, num_shards: int) -> dict:
    return stages.label(corpus, labels, params, shard_index=shard_index, num_shards=num_shards,
                        progress=False).as_dict()  # fmt: skip


@task(name="teacher-fit", retries=1, retry_delay_seconds=5)
def teacher_fit_task(corpus: str, labels: str, params) -> str:
    """Fit what the teacher fits on the corpus (the hidden teacher's k-means) once, before the label shards."""
    return stages.prepare_teacher(corpus, labels, params)


@task(name="pretrain", retries=1, retry_delay_seconds=10)
def pretrain_task(corpus: str, labels: str, out: str, params, nproc_per_node: int, params_file: str,
                  max_steps: int | None, max_restarts: int = 0) -> dict:  # fmt: skip
    """Train ``out``'s run: resumed if it is the same run (a retry resumes from the newest checkpoint).

    A fresh run if the corpus, labels, recipe or code changed (the old one moves to ``OUT.superseded/``); nothing
    to do if it is finished. ``max_restarts``: torchrun restarts a failed rank's group this often (each resumes).
    """
    return stages.pretrain(corpus, labels, out, params, nproc_per_node=nproc_per_node, params_file=params_file,
                           max_steps=max_steps, on_change="fresh", max_restarts=max_restarts)  # fmt: skip


PROBE_KEYS = ("task", "metric", "best_layer", "valid_score", "test_score", "ci_low", "ci_high", "n_test",
              "majority_rate")  # fmt: skip


@task(name="probe", retries=1)
def probe_task(model: str, task_dir: str, out: str, params, track: bool) -> dict:
    r = stages.probe(model, task_dir, out, params, track=track)
    return {k: r.get(k) for k in PROBE_KEYS} | {"model": model, "results": out}


@task(name="track-probe", retries=2, retry_delay_seconds=5)  # tracking server hiccups are worth a retry
def track_probe_task(out: str) -> str:
    """Log a finished probe (its ``results.json``) to MLflow and tag the registered version it probed.

    Run one at a time after the probes: the version's model card is rewritten from its tags at each call.
    """
    return stages.track_probe(out)


@task(name="promote", retries=2, retry_delay_seconds=5)  # tracking server hiccups are worth a retry
def promote_task(name: str, tasks: list[str], version: str | None = None) -> dict:
    """Judge ``version`` (the one this run registered) against the champion, one flow run at a time per model."""
    with registry_lock(name):
        d = stages.promote(name, tasks, version=version)
    rows = "\n".join(f"| {r['task']} | {r['candidate']} | {r['champion']} |" for r in d.rows)
    md = (f"## {name}: {'promoted' if d.promoted else 'kept champion'}\n\n{d.reason}\n\n"
          f"| task | candidate v{d.candidate} | champion v{d.champion} |\n|---|---|---|\n{rows}")  # fmt: skip
    create_markdown_artifact(key=f"promotion-{name}", markdown=md, description="champion alias decision")
    return {"model": name, "promoted": d.promoted, "candidate": d.candidate, "champion": d.champion,
            "reason": d.reason}  # fmt: skip


def registry_lock(name: str):
    """Hold the Prefect global concurrency limit ``mert-registry-<name>`` (1 slot; created if missing).

    Promotion reads the champion, compares and moves the alias: two flow runs doing it at once (two workers) could
    both read the old champion and the last to write would win, whatever the scores. The limit lives in the Prefect
    server (or the ephemeral one of an in-process run), so it serialises flow runs on any number of workers.
    """
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    lock = f"mert-registry-{name}"
    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(lock, 1)
        except Exception:  # created meanwhile by another flow run (the upsert is not atomic): it must exist now
            client.read_global_concurrency_limit_by_name(lock)
    return concurrency(lock, occupy=1, strict=True)


def _probe_table(rows: list[dict]) -> list[dict]:
    """One table artifact per (profile, task) with the verdict lines, plus one Markdown summary of them all."""
    import re

    from mert.probe import evidence

    entries = [{"results": r["results"], "label": r.get("label"), "role": r.get("role"), "group": r.get("profile", "")}
               for r in rows]  # fmt: skip
    summaries = evidence.summarize(entries)
    for s in summaries:
        key = re.sub(r"[^a-z0-9-]+", "-", f"probe-{s.group}-{s.task}".lower()).strip("-")
        create_table_artifact(key=key, table=evidence.table_rows(s),
                              description=evidence.title(s) + "\n\n" + "\n\n".join(s.verdicts))  # fmt: skip
    md = "## Probe scores with their evidence\n\n" + "\n".join(evidence.markdown(s) for s in summaries)
    create_markdown_artifact(key="probe-scores", markdown=md, description="test scores, 95% CIs and verdicts")
    return [s.as_dict() for s in summaries]


def _baseline_specs(baselines: list[str] | None, export: str) -> list[str]:
    """``random`` stands for the random-init twin of the trained model.

    ``random:<its export dir>`` has exactly its architecture (model overrides of the profile included) and input
    normalisation.
    """
    return [f"random:{export}" if b == "random" else b for b in baselines or []]


@flow(name="mert-pipeline", log_prints=True)
def mert_pipeline(
    params_file: str = "params.yaml",
    profiles: list[str] | None = None,
    probe_tasks: list[str] | None = None,
    baselines: list[str] | None = None,
    label_shards: int = 1,
    nproc_per_node: int = 1,
    max_steps: int | None = None,
    workdir: str | None = None,
    probe_workers: int | None = None,
    max_restarts: int = 0,
    teacher_iterations: int = 1,
) -> dict[str, Any]:
    """Run the whole pipeline with ``params_file`` (paths are relative to ``workdir``, default cwd).

    Args:
        params_file: the single source of parameters.
        profiles: pretraining profiles to train (default: ``pretrain.profile``); e.g. ``["mert-95m", "mert-330m"]``.
        probe_tasks: task directories to probe (default: the demo corpus's tasks when the demo is the source).
        baselines: handcrafted/random baselines probed beside each model (e.g. ``["mfcc", "chroma", "random"]``;
            ``random`` is the random-init twin of each trained model, ``random:<its export dir>``).
        label_shards: split labelling into this many tasks (run concurrently by the task runner).
        nproc_per_node: > 1 launches pretraining under torchrun (one process per GPU).
        max_steps: override the profiles' step count (smoke tests).
        workdir: project directory (deployments pass ``$MERT_PROJECT_DIR``).
        probe_workers: probes computed at once (threads; each probe uses ``probe.threads`` intra-op threads); None:
            from the machine's measured compute (:func:`mert.utils.runtime.cpu_compute`). The results do not depend
            on it; MLflow logging of the trained model's probes happens afterwards, in order.
        max_restarts: pretraining under torchrun restarts the whole group up to this many times when a rank fails
            (each restart resumes from the newest checkpoint, in the same MLflow run); > 0 launches torchrun even
            with one process.
        teacher_iterations: HuBERT-style iterations per profile: 1 trains on ``label.teacher``'s labels; each
            further one labels the corpus with k-means codes of the previous model's hidden state (``label.hidden``:
            layer, clusters, fit) into ``data/labels-iter<n>`` and trains ``data/pretrain/<profile>-iter<n>`` on them.
    """
    log = get_run_logger()
    show_library_progress()
    if teacher_iterations < 1:
        raise ValueError(f"teacher_iterations must be >= 1, got {teacher_iterations}")
    if workdir:
        os.chdir(workdir)
    P = load_params(params_file)
    corpus, source = P["corpus"].dir, P["corpus"].source
    profiles = profiles or [P["pretrain"].profile]
    tasks = probe_tasks if probe_tasks is not None else _demo_tasks(source)
    probe_workers = _announce_plan(P, profiles, tasks, baselines, probe_workers, max_steps, log, teacher_iterations)
    labels = "data/labels"
    if source == DEMO_SOURCE:
        demo_task(str(Path(source).parent), P["demo"])
    summary = ingest_task(source, corpus, P["ingest"])
    log.info("corpus %s: %d files, %.1f min", corpus, summary["corpus_files"], summary["corpus_seconds"] / 60)
    shards = label_task.map(unmapped(corpus), unmapped(labels), unmapped(P["label"]), list(range(label_shards)),
                            unmapped(label_shards))  # fmt: skip
    label_summaries = [s.result() for s in shards]
    results: dict[str, Any] = {"ingest": summary, "label": label_summaries, "pretrain": {}, "probe": []}
    tasks = probe_tasks if probe_tasks is not None else _demo_tasks(source)  # rendered by now
    for profile in profiles:
        params = dataclasses.replace(P["pretrain"], profile=profile)
        parent = None
        for it in range(1, teacher_iterations + 1):
            labels_it = stages.iteration_dir(labels, it)
            if it > 1:  # HuBERT iteration: k-means codes of the previous model's hidden state
                label_params = stages.iteration_label_params(P["label"], parent)
                teacher_fit_task(corpus, labels_it, label_params)
                shards = label_task.map(unmapped(corpus), unmapped(labels_it), unmapped(label_params),
                                        list(range(label_shards)), unmapped(label_shards))  # fmt: skip
                results["label"].extend(s.result() for s in shards)
            name = stages.iteration_dir(profile, it)
            res = pretrain_task(corpus, labels_it, f"data/pretrain/{name}", params, nproc_per_node, params_file,
                                max_steps, max_restarts)  # fmt: skip
            results["pretrain"][name] = res
            parent = _probe_and_promote(res, name, profile, tasks, baselines, P["probe"], probe_workers, results)
    if results["probe"]:
        results["probe_summary"] = _probe_table(results["probe"])
    return results


def show_library_progress() -> None:
    """Let the library's INFO lines (the trainer's progress line, label and probe summaries) through, once.

    Prefect's logging configuration leaves loggers other than its own at the root's WARNING level, so the trainer's
    "step i/N ... about X left" line would be dropped in a flow run. Setting the ``mert`` logger to INFO is enough:
    its records propagate to the root's handlers (Prefect's console), which do not filter by level. Only where the
    root has no handler at all is one added (stderr). Idempotent.
    """
    lib = logging.getLogger("mert")
    if lib.getEffectiveLevel() > logging.INFO:
        lib.setLevel(logging.INFO)
    if logging.getLogger().handlers or any(getattr(h, "_mert_progress", False) for h in lib.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s",
                                           datefmt="%H:%M:%S"))  # fmt: skip
    handler._mert_progress = True  # type: ignore[attr-defined]
    lib.addHandler(handler)


def _announce_plan(P: dict, profiles: list[str], tasks: list[str], baselines: list[str] | None,
                   probe_workers: int | None, max_steps: int | None, log,
                   teacher_iterations: int = 1) -> int:  # fmt: skip
    """Measure the machine, say what the run will do and roughly how long it will take; the probe parallelism.

    The estimate is for a CPU run (:mod:`mert.plan`); with a GPU the plan lists the stages without times.
    """
    import torch

    from mert.plan import plan_main_job
    from mert.utils.runtime import cpu_compute

    compute = cpu_compute()
    if P["corpus"].source == DEMO_SOURCE and not tasks:
        tasks = ["key", "instrument", "pitch", "tempo"]  # rendered with the corpus
    if max_steps:
        P = dict(P)
        P["pretrain"] = dataclasses.replace(P["pretrain"], profiles={
            k: dataclasses.replace(v, max_steps=max_steps) for k, v in P["pretrain"].profiles.items()})  # fmt: skip
    plan = plan_main_job(P, profiles, len(tasks), len(baselines or []), compute, probe_workers, teacher_iterations)
    lines = plan.lines()
    if torch.cuda.is_available():
        lines = [ln.split("  ~")[0] for ln in lines if "in all" not in ln] + [
            "(times are CPU estimates: none for GPUs)"
        ]
    for line in lines:
        log.info(line)
    return plan.probe_workers


def _probe_and_promote(res: dict, name: str, profile: str, tasks: list[str], baselines: list[str] | None,
                       probe_params, probe_workers: int, results: dict[str, Any]) -> str:  # fmt: skip
    """Probe the model a pretrain task trained (beside its baselines), log its probes, promote; returns its spec.

    ``name`` is the run's name (``<profile>`` or ``<profile>-iter<n>``): the probe outputs and the evidence tables
    are grouped by it. The spec is ``models:/<model>/<version>`` when registered, else the export directory.
    """
    model = (f"models:/{res['registered_model']}/{res['registered_version']}" if res.get("registered_version")
             else res["export"])  # fmt: skip
    jobs = []
    for task_dir in tasks:
        for spec in _pair_expensive(model, _baseline_specs(baselines, res["export"])):
            label = f"random-init {profile}" if spec.startswith("random:") else spec
            stem = label.replace(":", "_").replace("/", "_").replace(" ", "_")
            out = f"data/probe/{name}/{Path(task_dir).name}/{stem}.json"
            row = {"profile": name, "label": label}
            if spec == model:
                row |= {"label": name, "role": "pretrained"}
            elif spec.startswith("random:"):
                row |= {"role": "random-init"}
            jobs.append((spec, task_dir, out, row))
    results["probe"].extend(_run_probes(jobs, probe_params, probe_workers))
    if res.get("registered_version"):  # one at a time: each call rewrites the version's model card
        for spec, _, out, _ in jobs:
            if spec == model:
                track_probe_task(out)
    if res.get("registered_version") and tasks:
        names = [Path(t).name for t in tasks]
        results.setdefault("promote", []).append(
            promote_task(res["registered_model"], names, res["registered_version"]))  # fmt: skip
    return model


def _pair_expensive(model: str, baselines: list[str]) -> list[str]:
    """The trained model first, then its random-init twin (the two costly probes run side by side), then the rest."""
    twins = [b for b in baselines if b.startswith("random:")]
    return [model, *twins, *[b for b in baselines if b not in twins]]


def _run_probes(jobs: list[tuple[str, str, str, dict]], params, workers: int) -> list[dict]:
    """Run ``(spec, task_dir, out, row)`` probes untracked, in waves of at most ``workers``; rows in job order.

    A wave never holds one model twice (a new wave starts instead), so two threads never fetch the same
    registered model at once.
    """
    waves: list[list[tuple[str, str, str, dict]]] = []
    for job in jobs:
        if not waves or len(waves[-1]) >= max(1, workers) or job[0] in {j[0] for j in waves[-1]}:
            waves.append([])
        waves[-1].append(job)
    rows: list[dict] = []
    for wave in waves:
        futures = [probe_task.submit(spec, task_dir, out, params, False) for spec, task_dir, out, _ in wave]
        rows.extend(f.result() | row for f, (_, _, _, row) in zip(futures, wave))
    return rows


def _demo_tasks(source: str) -> list[str]:
    root = Path(source).parent / "tasks"
    return sorted(str(p) for p in root.iterdir() if p.is_dir()) if source == DEMO_SOURCE and root.exists() else []


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.pipeline``: run the flow once in-process (ephemeral local Prefect) and say where to look."""
    import argparse

    ap = argparse.ArgumentParser(description="Run the mert pipeline once, locally.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profiles", nargs="+")
    ap.add_argument(
        "--baselines",
        nargs="*",
        default=["mfcc", "chroma", "random"],
        help="probed beside the model; 'random' = random init of the trained model's architecture",
    )
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--label-shards", type=int, default=1)
    ap.add_argument("--probe-workers", type=int, help="probes computed at once (same results; default: from the "
                    "machine's measured compute)")  # fmt: skip
    ap.add_argument(
        "--teacher-iterations",
        type=int,
        default=1,
        help="HuBERT-style iterations: 2 re-labels the corpus with k-means codes of the trained model's hidden state "
        "(label.hidden) and pretrains again (data/labels-iter2, data/pretrain/<profile>-iter2)",
    )
    args = ap.parse_args(argv)
    r = mert_pipeline(params_file=args.params, profiles=args.profiles, baselines=args.baselines,
                      max_steps=args.max_steps, label_shards=args.label_shards,
                      probe_workers=args.probe_workers, teacher_iterations=args.teacher_iterations)  # fmt: skip
    print_report(r)


def print_report(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from mert.probe.evidence import COLUMNS, TaskSummary, table_rows, title

    console = Console()
    for s in r.get("probe_summary", []):
        summary = TaskSummary(**s)
        t = Table(title=Text(title(summary)))  # Text everywhere: "[0.35, 0.47]" is not markup
        for col in COLUMNS:
            t.add_column(Text(col))
        for row in table_rows(summary):
            t.add_row(*(Text(str(v)) for v in row.values()))
        console.print(t)
        majority = next((x["majority_baseline"] for x in summary.rows if x.get("majority_baseline")), None)
        for line in ([f"majority rate: {majority}"] if majority else []) + summary.verdicts:
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    for profile, res in r["pretrain"].items():
        reg = f"{res.get('registered_model')} v{res.get('registered_version')}"
        console.print(f"[bold]{profile}[/]: step {res['step']}, export {res['export']}, registered {reg} "
                      f"(MLflow run {res.get('run_id')})")  # fmt: skip
    for d in r.get("promote", []):
        console.print(f"promotion {d['model']}: {'champion -> v' + d['candidate'] if d['promoted'] else 'kept'}: "
                      f"{d['reason']}")  # fmt: skip


if __name__ == "__main__":
    main()
