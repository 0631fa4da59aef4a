"""Run identity: what defines a pretraining run, recorded in ``OUT/run.json`` and checked at every re-entry.

A run directory holds one run. Its identity is what its weights depend on:

- ``corpus``: the sha256 of ``manifest.csv`` (which clips, in which order; the clip ids themselves, content hashes,
  are kept in ``OUT/corpus-clips.txt`` so a change can be told as "3 clips added, 0 removed");
- ``labels``: the label store's teacher identity (name, hash, K x C);
- ``recipe``: the profile's fields that change the weights (everything but :data:`OPERATIONAL_FIELDS` and
  ``max_steps``), ``encoder`` and ``objective``: the resolved ``MERTConfig`` / ``PretrainingConfig``;
- ``code``: sha256 of the training code (:data:`CODE_PATHS`, the same paths ``dvc.yaml`` lists as deps);
- ``init_from``: the released checkpoint the encoder started from (``--init-from``), or None.

``max_steps`` is not part of it: raising (or lowering) it continues the run with the decay re-planned to the new
end (:func:`mert.train.optim.lr_factor`), recorded in ``run.json``'s ``schedule``. ``mert.train.api.pretrain``
compares the recorded identity with the one asked for: equal -> resume (or nothing to do when finished),
different -> :class:`RunIdentityError` (the bare CLI) or a fresh run with the old one moved aside (the pipelines).
Lineage tags (MLflow run and registered version) are read from the record, never from the directory state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mert.utils.io import atomic_write_json, atomic_write_text, sha256_file, sha256_json

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
CLIPS_FILE = "corpus-clips.txt"
FORMAT = 1
CODE_PATHS = ("mert/model", "mert/train", "mert/teachers/cqt.py", "mert/data/shards.py", "mert/data/table.py")
"""The code a run's weights depend on (model, objective, loop, CQT target, corpus reader); ``dvc.yaml``'s pretrain
stage lists the same paths as deps (a test checks it)."""
OPERATIONAL_FIELDS = frozenset(
    "save_interval keep_last log_interval val_interval val_batches compile parallel max_consecutive_skips "
    "loader_prefetch loader_workers collapse_patience collapse_band".split()
)
"""Profile fields that do not change the trained weights (how often to save/log/validate, the wrapper, the
prefetch depth and loader processes, the diagnostics): changing them never makes a different run."""
SECTIONS = ("corpus", "labels", "recipe", "encoder", "objective", "code", "init_from")


class RunIdentityError(RuntimeError):
    """The run directory holds a different run than the one asked for (the message says what differs)."""


# ---------------------------------------------------------------------------------------------- identity
def _plain(obj: Any) -> Any:
    """JSON-normal form (tuples -> lists), so a recorded identity compares equal to a computed one."""
    return json.loads(json.dumps(obj, default=str))


def code_identity(root: Path | None = None) -> dict[str, Any]:
    """sha256 of every ``.py`` file under :data:`CODE_PATHS` (relative to the package's parent directory).

    Returns:
        ``{"sha256": hash of the file table, "files": {"mert/train/api.py": sha256, ...}}``.
    """
    root = root or Path(__file__).resolve().parents[2]
    files: dict[str, str] = {}
    for rel in CODE_PATHS:
        path = root / rel
        found = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else []
        for f in found:
            files[f.relative_to(root).as_posix()] = sha256_file(f)
    return {"sha256": sha256_json(files), "files": files}


def recipe(profile) -> dict[str, Any]:
    """The profile fields that define the trained weights (not ``max_steps``, not :data:`OPERATIONAL_FIELDS`)."""
    d = dataclasses.asdict(profile)
    return _plain({k: v for k, v in d.items() if k not in OPERATIONAL_FIELDS and k not in ("max_steps", "init_from")})


def _manifest_sha256(corpus) -> str:
    """The manifest's SHA-256 as the corpus table recorded it when the manifest was written (no re-hash of a
    10^6-row file; the table is trusted only while the manifest's size and mtime match), else hashed now.
    """
    return getattr(corpus, "manifest_sha256", "") or sha256_file(Path(corpus.root) / "manifest.csv")


def current_identity(profile, corpus, labels, encoder, objective) -> dict[str, Any]:
    """The identity of the run that ``profile`` on ``corpus`` + ``labels`` would train (see the module docstring).

    Args:
        profile: the resolved :class:`mert.train.params.Profile`.
        corpus: the :class:`mert.data.shards.Corpus`.
        labels: the label source (``identity()``, ``n_codebooks``, ``codebook_size``).
        encoder: the resolved ``MERTConfig``.
        objective: the resolved ``PretrainingConfig``.
    """
    ident = labels.identity()
    enc = {k: v for k, v in dataclasses.asdict(encoder).items() if k != "hf_extra"}
    return _plain(
        {
            "corpus": {"manifest_sha256": _manifest_sha256(corpus), "clips": len(corpus.clips)},
            "labels": {
                "name": str(ident.get("name", "unknown")),
                "hash": str(ident.get("hash", "")),
                "n_codebooks": labels.n_codebooks,
                "codebook_size": labels.codebook_size,
            },
            "recipe": recipe(profile),
            "encoder": enc,
            "objective": dataclasses.asdict(objective),
            "code": code_identity(),
            "init_from": profile.init_from,
        }
    )


def identity_sha256(identity: dict[str, Any]) -> str:
    """One hash of an identity (the code enters by its combined hash only)."""
    return sha256_json({**identity, "code": identity.get("code", {}).get("sha256")})


# ---------------------------------------------------------------------------------------------- differences
@dataclass
class Difference:
    """One way the recorded run differs from the requested one."""

    section: str
    """``corpus``, ``labels``, ``recipe``, ``encoder``, ``objective``, ``code``, ``init_from``, ``max_steps`` or
    ``unrecorded``."""
    message: str


def _short(h: str | None, n: int = 12) -> str:
    return (h or "?")[:n]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _field_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    parts = []
    for k in keys:
        if old.get(k, "<absent>") != new.get(k, "<absent>"):
            parts.append(f"{k} {json.dumps(old.get(k, '<absent>'))} -> {json.dumps(new.get(k, '<absent>'))}")
    return ", ".join(parts)


def corpus_difference(old: dict[str, Any], new: dict[str, Any], old_clips: list[str] | None,
                      new_clips: list[str]) -> str:  # fmt: skip
    """``corpus changed: 3 clips added, 0 removed; this run was trained on manifest sha256 47ef... (48 clips)``."""
    was = f"this run was trained on manifest sha256 {_short(old['manifest_sha256'])} ({_plural(old['clips'], 'clip')})"
    now = f"the corpus now has manifest sha256 {_short(new['manifest_sha256'])} ({_plural(new['clips'], 'clip')})"
    if old_clips is None:
        return f"corpus changed: {was}; {now}"
    added, removed = len(set(new_clips) - set(old_clips)), len(set(old_clips) - set(new_clips))
    if added or removed:
        return f"corpus changed: {_plural(added, 'clip')} added, {removed} removed; {was}; {now}"
    return (
        f"corpus changed: the same {_plural(len(new_clips), 'clip')}, but manifest.csv differs (sources renamed, "
        f"re-sharded or re-ingested with other settings, which changes the data order); {was}; {now}"
    )


def code_difference(old: dict[str, Any], new: dict[str, Any], git: str | None) -> str:
    of, nf = old.get("files", {}), new.get("files", {})
    changed = sorted(k for k in set(of) | set(nf) if of.get(k) != nf.get(k))
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    return (
        f"code changed: {shown} {'differs' if len(changed) == 1 else 'differ'} from the code this run was trained "
        f"with (code sha256 "
        f"{_short(old.get('sha256'))}, git {git or 'unknown'})"
    )


def differences(record: dict[str, Any], current: dict[str, Any], old_clips: list[str] | None,
                new_clips: list[str]) -> list[Difference]:  # fmt: skip
    """Every section where ``current`` differs from the ``record``'s identity, each with a readable message."""
    old = record["identity"]
    out = []
    if old["corpus"]["manifest_sha256"] != current["corpus"]["manifest_sha256"]:
        out.append(Difference("corpus", corpus_difference(old["corpus"], current["corpus"], old_clips, new_clips)))
    if old["labels"] != current["labels"]:
        o, n = old["labels"], current["labels"]
        out.append(
            Difference(
                "labels",
                f"labels changed: this run was trained on teacher {o['name']} (hash {_short(o['hash'])}, "
                f"{o['n_codebooks']} x {o['codebook_size']}), the labels now are {n['name']} (hash "
                f"{_short(n['hash'])}, {n['n_codebooks']} x {n['codebook_size']})",
            )
        )
    for sec in ("recipe", "encoder", "objective"):
        if old[sec] != current[sec]:
            out.append(Difference(sec, f"{sec} changed: {_field_changes(old[sec], current[sec])}"))
    if old["code"]["sha256"] != current["code"]["sha256"]:
        git = record.get("lineage", {}).get("git_commit")
        out.append(Difference("code", code_difference(old["code"], current["code"], git)))
    if old.get("init_from") != current.get("init_from"):
        o, n = old.get("init_from"), current.get("init_from")
        out.append(
            Difference(
                "init_from",
                f"initialisation changed: this run's encoder started from {o or 'a random init'}, "
                f"the request says {n or 'a random init (no --init-from)'}",
            )
        )
    return out


def refusal(out_dir: Path, diffs: list[Difference], record: dict[str, Any] | None) -> str:
    """The message of :class:`RunIdentityError`: what differs, what the run was, and what to do."""
    lines = [f"{out_dir} holds a different run than the one asked for; it is neither resumed nor reported finished:"]
    lines += [f"  - {d.message}" for d in diffs]
    todo = [
        "train the new run in another directory (mert pretrain CORPUS LABELS NEW_OUT_DIR)",
        f"or pass --on-change fresh to move this run to {superseded_root(out_dir)}/ and start a fresh one here "
        "(what the DVC stage and the Prefect flow do)",
    ]
    if record is not None:
        lin = record.get("lineage", {})
        todo.append(
            f"or, to continue this run, give it what it was trained on (corpus {lin.get('corpus_path', '?')} at "
            f"manifest sha256 {_short(record['identity']['corpus']['manifest_sha256'])}, labels "
            f"{lin.get('labels_path', '?')}, profile {lin.get('profile', '?')})"
        )
    if diffs and all(d.section == "code" for d in diffs):
        todo.append("or pass --allow-code-change to continue it with the new code (recorded in its lineage)")
    return "\n".join(lines + ["What to do: " + ";\n  ".join(todo) + "."])


# ---------------------------------------------------------------------------------------------- the record
def read_record(out_dir: Path) -> dict[str, Any] | None:
    path = Path(out_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else None


def read_clips(out_dir: Path) -> list[str] | None:
    path = Path(out_dir) / CLIPS_FILE
    return path.read_text().split() if path.exists() else None


def write_record(out_dir: Path, record: dict[str, Any], clips: list[str] | None = None) -> None:
    """Atomically write ``run.json`` (and the sorted clip ids, when given)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if clips is not None:
        atomic_write_text(out_dir / CLIPS_FILE, "".join(f"{c}\n" for c in sorted(clips)))
    atomic_write_json(out_dir / RUN_FILE, record)


def new_record(identity: dict[str, Any], max_steps: int, lineage: dict[str, Any]) -> dict[str, Any]:
    """The record of a run that starts now: identity, lineage (git commit, paths, parent) and its first plan."""
    return {
        "format": FORMAT,
        "identity": identity,
        "identity_sha256": identity_sha256(identity),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "lineage": lineage,
        "schedule": [{"from_step": 0, "max_steps": max_steps}],
        "code_changes": [],
    }


def replan(record: dict[str, Any], step: int, max_steps: int) -> bool:
    """Record that from ``step`` on the run trains to ``max_steps``; False if that is already the plan."""
    sched = record["schedule"]
    if sched[-1]["max_steps"] == max_steps:
        return False
    record["schedule"] = [s for s in sched if s["from_step"] < step] + [{"from_step": step, "max_steps": max_steps}]
    return True


def accept_code(record: dict[str, Any], current: dict[str, Any], step: int, git: str) -> None:
    """``--allow-code-change``: the run continues from ``step`` with the current code, recorded as such."""
    old = record["identity"]["code"]
    record["code_changes"].append({"from_step": step, "previous_code_sha256": old["sha256"],
                                   "code_sha256": current["code"]["sha256"], "git_commit": git})  # fmt: skip
    record["identity"]["code"] = current["code"]
    record["identity_sha256"] = identity_sha256(record["identity"])


def superseded_root(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + ".superseded")


def supersede(out_dir: Path, record: dict[str, Any] | None) -> Path:
    """Move the run in ``out_dir`` to ``OUT.superseded/<identity>-<time>/`` (git-ignored); returns the new path."""
    root = superseded_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    ignore = root / ".gitignore"
    if not ignore.exists():
        atomic_write_text(ignore, "*\n")
    tag = _short(record.get("identity_sha256")) if record else "unrecorded"
    dest = root / f"{tag}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    n = 1
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name.split('~')[0]}~{n}")
    out_dir.rename(dest)
    return dest


def lineage_tags(record: dict[str, Any]) -> dict[str, str]:
    """MLflow tags of the run and its registered versions, all read from the record (never from the cwd)."""
    ident, lin = record["identity"], record.get("lineage", {})
    tags = {
        "git_commit": lin.get("git_commit", "unknown"),
        "corpus_manifest_sha256": ident["corpus"]["manifest_sha256"],
        "corpus_clips": ident["corpus"]["clips"],
        "corpus_path": lin.get("corpus_path", ""),
        "labels_path": lin.get("labels_path", ""),
        "teacher": ident["labels"]["name"],
        "teacher_hash": ident["labels"]["hash"],
        "profile": lin.get("profile", ""),
        "run_identity": record["identity_sha256"],
        "code_sha256": ident["code"]["sha256"],
        "schedule": ", ".join(f"from step {s['from_step']}: max_steps {s['max_steps']}" for s in record["schedule"]),
    }
    if lin.get("corpus_dvc_md5"):
        tags["corpus_dvc_md5"] = lin["corpus_dvc_md5"]
    parent = lin.get("parent")
    if parent:
        tags["parent_model"] = parent["source"]
        tags["parent_model_sha256"] = parent["weights_sha256"]
    tags.update(teacher_lineage_tags(lin.get("teacher_lineage")))
    if record.get("code_changes"):
        tags["code_changes"] = "; ".join(
            f"from step {c['from_step']}: code {_short(c['code_sha256'])} (git {c['git_commit']})"
            for c in record["code_changes"]
        )
    return {k: str(v) for k, v in tags.items()}


def teacher_lineage_tags(teacher: dict[str, Any] | None) -> dict[str, str]:
    """Tags of a hidden-state teacher's lineage (``mert.teachers.hidden``: HuBERT iteration 2+), else none.

    ``teacher_parent_model`` (the spec the labels were made from, e.g. ``models:/mert-small-lowcqt/1`` or an export
    dir), ``teacher_parent_model_sha256`` (its weights), ``teacher_parent_version`` (``name/version`` of a registry
    parent), ``teacher_layer``, ``teacher_n_clusters``, ``teacher_kmeans_hash`` and ``teacher_iteration`` (the
    HuBERT iteration of the model trained on these labels: the parent's + 1; absent when the parent's is unknown).
    """
    if not teacher:
        return {}
    parent = teacher.get("parent", {})
    tags = {
        "teacher_parent_model": parent.get("source"),
        "teacher_parent_model_sha256": parent.get("weights_sha256"),
        "teacher_layer": teacher.get("layer"),
        "teacher_n_clusters": teacher.get("n_clusters"),
        "teacher_kmeans_hash": teacher.get("kmeans_hash"),
        "teacher_iteration": teacher.get("iteration"),
    }
    reg = parent.get("registry") or {}
    if reg.get("name"):
        tags["teacher_parent_version"] = f"{reg['name']}/{reg.get('version')}"
    return {k: str(v) for k, v in tags.items() if v is not None}
