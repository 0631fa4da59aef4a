"""Continued pretraining: start the encoder from a released checkpoint (``--init-from DIR_OR_HUB_ID``).

The encoder weights come from the released HF layout through the same loader as ``MERT.from_pretrained``
(strict: every key present, nothing extra, shapes equal). Everything else is fresh: the label heads and label
embeddings are built for the current teacher (its K x C), and the optimiser and LR schedule start at step 0
(warmup included). The parent is recorded in the run's lineage (``run.json``) and tagged on the MLflow run and the
registered version (``parent_model``, ``parent_model_sha256``).

The architecture must be the profile's: every ``MERTConfig`` field except :data:`REGIME_FIELDS` (dropouts,
layerdrop, the conv gradient scale, the no-op ``attention_relax``, the input normalisation) has to match, else
the error names the fields. Those regime fields are the profile's recipe, not the parent's: e.g. the released
95M ``preprocessor_config.json`` says ``do_normalize: true`` while its fairseq pretraining used
``normalize: false`` (``mert-reference.md``), which the ``mert-95m`` profile keeps; a difference is logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

REGIME_FIELDS = frozenset(
    "hidden_dropout attention_dropout activation_dropout feat_proj_dropout layerdrop feature_grad_mult "
    "conv_frozen_layers attention_relax do_normalize hf_extra".split()
)
"""``MERTConfig`` fields taken from the profile, not the parent (they change training, not the weights' meaning)."""


def load_parent(source: str):
    """The released-layout encoder ``source`` (a local directory; a hub id where ``MERT.from_pretrained`` takes one).

    Raises:
        FileNotFoundError: ``source`` cannot be found (the message names it).
        mert.model.hf.CheckpointError / ConfigError: its weights or config do not fit the loader.
    """
    from mert.model.encoder import MERT

    try:
        return MERT.from_pretrained(source)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--init-from {source!r}: no released-layout checkpoint there ({e})") from e


def check_architecture(parent_cfg, cfg, source: str, profile: str) -> None:
    """Raise ``ValueError`` naming every architecture field where the parent differs from the profile's encoder."""
    diffs = []
    for f in dataclasses.fields(cfg):
        if f.name in REGIME_FIELDS:
            continue
        a, b = getattr(parent_cfg, f.name), getattr(cfg, f.name)
        if (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b):
            diffs.append(f"{f.name} {a!r} (checkpoint) vs {b!r} (profile)")
    if diffs:
        raise ValueError(
            f"--init-from {source}: its encoder is not the architecture of profile {profile!r}: {'; '.join(diffs)}. "
            "Pick the profile of that architecture (e.g. mert-95m for MERT-v1-95M) or set its model_overrides."
        )
    for name in ("do_normalize", "feature_grad_mult", "layerdrop", "hidden_dropout"):
        a, b = getattr(parent_cfg, name), getattr(cfg, name)
        if a != b:
            log.info("--init-from %s: %s %r in the checkpoint, %r in the profile (the profile's is used)",
                     source, name, a, b)  # fmt: skip


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted keys, dtypes, shapes and bytes of a state dict (independent of the file format)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def parent_record(source: str, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What the lineage keeps of the parent: the source as given, its local path if any, its weights' hash."""
    local = Path(source)
    return {
        "source": source,
        "path": str(local.resolve()) if local.exists() else None,
        "weights_sha256": state_sha256(state),
    }


def load_for(source: str, cfg, profile: str) -> dict[str, torch.Tensor]:
    """The parent's encoder state dict, after checking it is the architecture of ``cfg`` (the profile's)."""
    parent = load_parent(source)
    check_architecture(parent.config, cfg, source, profile)
    return {k: v.detach().cpu() for k, v in parent.state_dict().items()}
