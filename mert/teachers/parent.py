"""The parent of a hidden-state teacher (HuBERT iteration 2+): load it, check its frames, record where it came from.

The parent is resolved by the probe's resolver (:func:`mert.probe.models.load_model`: an HF-layout export dir, a
training checkpoint, a hub id, ``models:/name@alias`` / ``models:/name/N``, ``random:<preset or dir>[@seed]``); its
identity is the SHA-256 of its state dict (:func:`mert.train.init_from.state_sha256`, the same in any file format
or location). Its lineage record says what was loaded (the spec, the resolved directory, the files' hashes, the
registry version) and, when its run or its registry tags say, its own teacher and HuBERT iteration (a model trained
on a first teacher is iteration 1, on hidden-state codes the iteration its labels record, a random init 0).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mert.teachers.base import HOP, WINDOW, TeacherError

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
HIDDEN = "hidden"
"""The label identity name of the hidden-state teacher (a parent trained on it has no fixed iteration)."""


@dataclass
class ParentModel:
    """A trained encoder whose hidden states are clustered.

    Attributes:
        model: the encoder (eval mode, frozen).
        source: the spec as given (``label.hidden.model``).
        weights_sha256: SHA-256 over its state dict (:func:`mert.train.init_from.state_sha256`).
        record: lineage: ``source``, ``weights_sha256``, ``resolved`` (what was loaded), ``files`` (the resolver's
            identity: weight files' hashes, hub commit, registry URI), ``registry`` (``models:/`` specs: name,
            version, run id), ``teacher`` (the parent's own teacher: name, hash, iteration, when found).
    """

    model: nn.Module
    source: str
    weights_sha256: str
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def iteration(self) -> int | None:
        """The parent's HuBERT iteration (1: trained on a first teacher, 0: random init; None: unknown)."""
        return self.record.get("teacher", {}).get("iteration")


def load_parent(spec: str) -> ParentModel:
    """Load the parent encoder ``spec`` with the probe's resolver (:func:`mert.probe.models.load_model`).

    Args:
        spec: an HF-layout export dir, a training checkpoint, a hub id, ``models:/name@alias`` / ``models:/name/N``
            or ``random:<preset or dir>[@seed]``.

    Returns:
        The :class:`ParentModel`.

    Raises:
        TeacherError: the spec does not resolve, a file is unreadable (the message names it), or it is not a MERT
            encoder at the student's frame rate.
    """
    from mert.model.config import ConfigError
    from mert.model.hf import CheckpointError
    from mert.probe.models import MERTFeatures, ModelSpecError, load_model
    from mert.train.init_from import state_sha256

    try:
        loaded = load_model(spec)
    except (ModelSpecError, CheckpointError, ConfigError, FileNotFoundError, OSError) as e:
        raise TeacherError(f"label.hidden.model {spec!r}: cannot load the parent encoder: {e}") from e
    if not isinstance(loaded, MERTFeatures):
        raise TeacherError(f"label.hidden.model {spec!r}: not a MERT encoder (handcrafted or conv: features have no "
                           "hidden states to cluster)")  # fmt: skip
    model = loaded.model
    check_frame_grid(model.config, spec)
    sha = state_sha256(model.state_dict())
    ident = dict(loaded.identity)
    record = {"source": spec, "weights_sha256": sha, "resolved": ident.pop("source", None), "files": ident}
    if spec.startswith("models:/"):
        record["registry"] = _registry_version(spec)
    teacher = _parent_teacher(spec, record)
    if teacher:
        record["teacher"] = teacher
    return ParentModel(model, spec, sha, record)


def check_frame_grid(cfg, spec: str) -> None:
    """Refuse an encoder whose frames are not the student's (24 kHz, stride 320, receptive field 400)."""
    have = (cfg.sample_rate, cfg.total_stride, cfg.receptive_field)
    if have != (SAMPLE_RATE, HOP, WINDOW):
        raise TeacherError(
            f"label.hidden.model {spec!r}: its frames are not the student's (sample rate {have[0]} Hz, stride "
            f"{have[1]}, receptive field {have[2]}; the student: {SAMPLE_RATE} Hz, {HOP}, {WINDOW}): its codes would "
            "not be at the student's 75 Hz"
        )


def resolve_layer(cfg, layer: int | None) -> int:
    """The hidden-state index ``label.hidden.layer`` means: None -> ``num_hidden_layers // 2``, -1 -> the last.

    Raises:
        TeacherError: outside ``-(N + 1) .. N``.
    """
    n = cfg.num_hidden_layers
    if layer is None:
        return n // 2
    if not -(n + 1) <= layer <= n:
        raise TeacherError(f"label.hidden.layer {layer} is not a hidden state of the parent (0..{n}, or -1 = {n})")
    return layer % (n + 1)


def _registry_version(spec: str) -> dict[str, Any]:
    """Name, version, run id and lineage tags of the registered version ``spec`` names now (best effort)."""
    try:
        from mert import tracking
        from mert.probe.tracking import resolve_version

        client, _ = tracking.connect(None, "mert-probe")
        name, version = resolve_version(client, spec)
        mv = client.get_model_version(name, version)
    except Exception as e:  # the weights were resolved already; lineage must not fail the labels
        log.warning("hidden teacher: could not read the registry version of %s for the lineage: %s", spec, e)
        return {}
    keep = ("teacher", "teacher_hash", "teacher_iteration", "profile", "run_id")
    return {"name": name, "version": str(version), "run_id": mv.run_id,
            "tags": {k: v for k, v in mv.tags.items() if k in keep}}  # fmt: skip


def _parent_teacher(spec: str, record: dict[str, Any]) -> dict[str, Any]:
    """The parent's own teacher (name, hash) and HuBERT iteration, from its registry tags or its run's ``run.json``.

    A run trained on a first teacher (rvq, MFCC k-means, ...) is iteration 1; on hidden-state codes, the iteration
    its labels record; a random init is iteration 0. Empty when nothing says.
    """
    if spec.startswith("random:"):
        return {"name": "random-init", "iteration": 0}
    tags = record.get("registry", {}).get("tags")
    if tags and tags.get("teacher"):
        return _teacher_entry(tags["teacher"], tags.get("teacher_hash"), tags.get("teacher_iteration"))
    resolved = record.get("resolved")
    if not resolved:
        return {}
    path = Path(resolved)
    for run in (path, path.parent, path.parent.parent):  # an export dir, or checkpoints/step-XXXXXXXX, of a run
        if (run / "run.json").is_file():
            try:
                rec = json.loads((run / "run.json").read_text())
                labels = rec["identity"]["labels"]
            except (OSError, ValueError, KeyError, TypeError):
                return {}
            it = (rec.get("lineage", {}).get("teacher_lineage") or {}).get("iteration")
            return _teacher_entry(labels.get("name", ""), labels.get("hash"), it) | {"run_dir": str(run)}
    return {}


def _teacher_entry(name: str, hash_: str | None, iteration: Any) -> dict[str, Any]:
    it = int(iteration) if iteration not in (None, "", "None") else (None if name.startswith(HIDDEN) else 1)
    return {"name": name, "hash": hash_, "iteration": it}


def encoder_config(cfg) -> dict[str, Any]:
    """The parent's ``MERTConfig`` as JSON-normal data (``hf_extra`` left out: it never changes the states)."""
    import dataclasses

    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "hf_extra"}
    return json.loads(json.dumps(d))
