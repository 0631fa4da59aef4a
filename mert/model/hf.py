"""The released HF checkpoint layout: ``config.json`` + weights + ``preprocessor_config.json``.

``m-a-p/MERT-v1-95M`` / ``MERT-v1-330M`` ship ``config.json`` (a ``HubertConfig`` with MERT extras),
``pytorch_model.bin`` (state-dict keys of ``transformers.HubertModel``, no prefix) and a
``Wav2Vec2FeatureExtractor`` ``preprocessor_config.json`` whose ``do_normalize`` says whether to normalise
each clip. Loading is strict (every key present, nothing extra, shapes equal) and never unpickles code
(``weights_only=True`` or safetensors). The positional conv's weight norm may be stored as
``weight_g``/``weight_v`` (released files, older torch) or ``parametrizations.weight.original0/1``
(``transformers`` >= 4.4x with torch's new parametrizations); both map onto our ``weight_g``/``weight_v``,
which is what avoids the known "silently random positional conv" bug.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from mert.model.config import ConfigError, MERTConfig
from mert.model.encoder import MERT
from mert.utils.io import atomic_write, atomic_write_json

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
SAFETENSORS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"
KEY_ALIASES = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}
"""Checkpoint key suffixes (torch parametrizations) -> our stable names."""

_FIELDS = (
    "sample_rate conv_dim conv_kernel conv_stride conv_bias hidden_size num_hidden_layers num_attention_heads "
    "intermediate_size hidden_dropout attention_dropout activation_dropout feat_proj_dropout layerdrop "
    "layer_norm_eps num_conv_pos_embeddings num_conv_pos_embedding_groups do_stable_layer_norm "
    "feature_grad_mult attention_relax deepnorm"
).split()
"""MERTConfig fields stored in ``config.json`` under the same name (``do_normalize`` lives in the preprocessor)."""

HF_DEFAULTS: dict[str, Any] = {
    "architectures": ["HubertModel"],
    "model_type": "hubert",
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "feat_proj_layer_norm": True,
    "hidden_act": "gelu",
    "conv_pos_batch_norm": False,
    "mask_time_prob": 0.05,  # > 0 so that HubertModel allocates masked_spec_embed
    "mask_time_length": 10,
    "feature_extractor_cqt": False,
    "feature_extractor_cqt_bins": 336,
}
"""Keys written for a model not loaded from a checkpoint (a loaded one writes its own extra keys back)."""

_REQUIRED = {
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "hidden_act": "gelu",
    "feat_proj_layer_norm": True,
}
_UNSUPPORTED_TRUE = {
    "feature_extractor_cqt": "the nnAudio CQT input branch (off in the released MERT-v1 models)",
    "conv_pos_batch_norm": "a batch-normed positional conv (a data2vec/HuBERT variant, not MERT)",
    "adapter_attn_dim": "attention adapters",
}


class CheckpointError(RuntimeError):
    """A checkpoint that does not match the model: names the missing, unexpected and mis-shaped keys."""


# ---------------------------------------------------------------------------------------------- config.json
def config_to_hf_dict(cfg: MERTConfig) -> dict[str, Any]:
    """``MERTConfig`` -> released-layout ``config.json`` dict (also a valid ``transformers.HubertConfig``)."""
    d = {**HF_DEFAULTS, **cfg.hf_extra}
    for name in _FIELDS:
        value = getattr(cfg, name)
        d[name] = list(value) if isinstance(value, tuple) else value
    d["num_feat_extract_layers"] = len(cfg.conv_dim)
    return d


def config_from_hf_dict(cls: type[MERTConfig], d: dict[str, Any]) -> MERTConfig:
    """Released / HF ``config.json`` dict -> ``MERTConfig``; unsupported variants raise :class:`ConfigError`."""
    for key, why in _UNSUPPORTED_TRUE.items():
        if d.get(key):
            raise ConfigError(f"config.json sets {key}={d[key]!r}: {why} is not supported")
    for key, want in _REQUIRED.items():
        if key in d and d[key] != want:
            raise ConfigError(f"config.json sets {key}={d[key]!r}; only {want!r} is supported")
    if "num_feat_extract_layers" in d and "conv_dim" in d and d["num_feat_extract_layers"] != len(d["conv_dim"]):
        raise ConfigError("config.json: num_feat_extract_layers does not match len(conv_dim)")
    kwargs = {k: d[k] for k in _FIELDS if k in d}
    extra = {k: v for k, v in d.items() if k not in kwargs and k != "num_feat_extract_layers"}
    return cls(**kwargs, hf_extra=extra)


def _has_mask_embedding(hf: dict[str, Any]) -> bool:
    """``HubertModel`` only allocates ``masked_spec_embed`` when a masking probability is positive."""
    return hf.get("mask_time_prob", 0.05) > 0 or hf.get("mask_feature_prob", 0.0) > 0


# ---------------------------------------------------------------------------------------------- weights
def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the weights of a checkpoint directory (safetensors preferred, then ``pytorch_model.bin``; shards ok).

    Keys stored as torch weight-norm parametrizations are renamed to ``weight_g``/``weight_v``.
    """
    directory = Path(directory)
    files = _weight_files(directory)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            part = load_file(str(f), device="cpu")
        else:
            part = torch.load(f, map_location="cpu", weights_only=True)
        state.update(part)
    return {_rename(k): v for k, v in state.items()}


def _weight_files(directory: Path) -> list[Path]:
    for single, index in ((SAFETENSORS_NAME, SAFETENSORS_NAME + ".index.json"), (BIN_NAME, BIN_NAME + ".index.json")):
        if (directory / single).exists():
            return [directory / single]
        if (directory / index).exists():
            shards = sorted(set(json.loads((directory / index).read_text())["weight_map"].values()))
            return [directory / s for s in shards]
    raise FileNotFoundError(f"{directory}: no {SAFETENSORS_NAME} or {BIN_NAME} (nor a sharded index)")


def _rename(key: str) -> str:
    for old, new in KEY_ALIASES.items():
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def load_state_dict_strict(model: MERT, state: dict[str, torch.Tensor], allow_missing: tuple[str, ...] = ()) -> None:
    """Copy ``state`` into ``model``, raising :class:`CheckpointError` that names every bad key first."""
    own = model.state_dict()
    missing = sorted(k for k in own.keys() - state.keys() if k not in allow_missing)
    unexpected = sorted(state.keys() - own.keys())
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & state.keys()
        if state[k].shape != own[k].shape
    )
    problems = [(n, v) for n, v in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if v]
    if problems:
        lines = [f"{n} ({len(v)}): " + ", ".join(v[:20]) + (" ..." if len(v) > 20 else "") for n, v in problems]
        raise CheckpointError("checkpoint does not match the model config:\n  " + "\n  ".join(lines))
    model.load_state_dict({**{k: own[k] for k in allow_missing if k not in state}, **state}, strict=True)


# ---------------------------------------------------------------------------------------------- public API
def load_config(path: str | os.PathLike, do_normalize: bool | None = None) -> tuple[MERTConfig, dict]:
    """The :class:`MERTConfig` of a released-layout directory (and its raw ``config.json`` dict), weights unread.

    ``do_normalize``: ``None`` follows ``preprocessor_config.json`` (``Wav2Vec2FeatureExtractor``'s default ``True``
    if the key is absent), else the config default; a bool overrides both.

    Raises:
        FileNotFoundError: no ``config.json``.
        ConfigError: unsupported config (e.g. ``feature_extractor_cqt: true``).
    """
    path = Path(path)
    if not (path / CONFIG_NAME).exists():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME} (expected the released MERT/HuBERT layout)")
    hf = json.loads((path / CONFIG_NAME).read_text())
    cfg = MERTConfig.from_hf_dict(hf)
    if do_normalize is None and (path / PREPROCESSOR_NAME).exists():
        do_normalize = bool(json.loads((path / PREPROCESSOR_NAME).read_text()).get("do_normalize", True))
    if do_normalize is not None:
        cfg = dataclasses.replace(cfg, do_normalize=do_normalize)
    return cfg, hf


def from_pretrained(
    path: str | os.PathLike,
    *,
    do_normalize: bool | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> MERT:
    """Load a directory in the released ``m-a-p/MERT-v1-*`` layout into :class:`MERT` (eval mode).

    Args:
        path: directory with ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``.
        do_normalize: per-clip input normalisation; ``None`` follows ``preprocessor_config.json``
            (``Wav2Vec2FeatureExtractor``'s default ``True`` if the key is absent), else the config default.
        dtype: parameter dtype.
        device: parameter device.

    Returns:
        The model in eval mode.

    Raises:
        ConfigError: unsupported config (e.g. ``feature_extractor_cqt: true``).
        CheckpointError: missing, unexpected or mis-shaped keys.
    """
    path = Path(path)
    cfg, hf = load_config(path, do_normalize)
    with torch.device("meta"):
        model = MERT(cfg)
    model.to_empty(device="cpu")
    model.reset_parameters()  # only masked_spec_embed survives if the checkpoint lacks it
    allow = () if _has_mask_embedding(hf) else ("masked_spec_embed",)
    load_state_dict_strict(model, read_state_dict(path), allow_missing=allow)
    return model.to(device=device, dtype=dtype).eval()


def preprocessor_dict(cfg: MERTConfig) -> dict[str, Any]:
    """The ``Wav2Vec2FeatureExtractor`` config matching ``cfg``."""
    return {
        "do_normalize": cfg.do_normalize,
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": True,
        "sampling_rate": cfg.sample_rate,
    }


def save_pretrained(model: MERT, directory: str | os.PathLike, *, safe_serialization: bool = True) -> Path:
    """Write ``config.json``, ``preprocessor_config.json`` and the weights (atomically) in the released layout.

    Args:
        model: the encoder.
        directory: output directory (created).
        safe_serialization: ``model.safetensors`` if true, else ``pytorch_model.bin``.

    Returns:
        ``directory`` as a Path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if safe_serialization:
        from safetensors.torch import save

        data = save(state, metadata={"format": "pt"})
    else:
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
    stale = directory / (BIN_NAME if safe_serialization else SAFETENSORS_NAME)
    with atomic_write(directory / (SAFETENSORS_NAME if safe_serialization else BIN_NAME)) as f:
        f.write(data)
    stale.unlink(missing_ok=True)  # never leave two different weight files side by side
    atomic_write_json(directory / PREPROCESSOR_NAME, preprocessor_dict(model.config))
    atomic_write_json(directory / CONFIG_NAME, config_to_hf_dict(model.config))
    return directory
