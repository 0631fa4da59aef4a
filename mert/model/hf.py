"""The released HF checkpoint layout: ``config.json`` + weights + ``preprocessor_config.json``.

``m-a-p/MERT-v1-95M`` / ``MERT-v1-330M`` ship ``config.json`` (a ``HubertConfig`` with MERT extras),
``pytorch_model.bin`` (state-dict keys of ``transformers.HubertModel``, no prefix) and a
``Wav2Vec2FeatureExtractor`` ``preprocessor_config.json`` whose ``do_normalize`` says whether to normalise
each clip. Loading is strict (every key present, nothing extra, shapes equal) and never unpickles code
(``weights_only=True`` or safetensors). The positional conv's weight norm may be stored as
``weight_g``/``weight_v`` (released files, older torch) or ``parametrizations.weight.original0/1``
(``transformers`` >= 4.4x with torch's new parametrizations); both map onto our ``weight_g``/``weight_v``,
which is what avoids the known "silently random positional conv" bug.

A Hugging Face hub id (``m-a-p/MERT-v1-95M``, optionally ``@revision``) is resolved by
:func:`resolve_pretrained` with ``huggingface_hub.snapshot_download``, fetching only ``config.json``,
``preprocessor_config.json`` and the weights (``allow_patterns``): the repos' custom code
(``modeling_MERT.py``, ``auto_map``) is never downloaded, imported or run. The cache, the offline switch and the
endpoint are read from the environment at call time (``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``,
``HF_ENDPOINT``), so a cached model loads with the network off.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from mert.model.config import ConfigError, MERTConfig
from mert.model.encoder import MERT
from mert.utils.io import atomic_write, atomic_write_json
from mert.utils.rng import exclusive

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
    """A checkpoint that does not match the model (names the missing, unexpected and mis-shaped keys), or a
    weights file that cannot be read (names the file and the reader's reason: truncated, corrupt, not weights).
    """


class ModelNotFoundError(FileNotFoundError):
    """Neither a local checkpoint directory nor a hub id that can be resolved (the message says what was tried)."""


HUB_FILE_SETS = (
    (CONFIG_NAME, PREPROCESSOR_NAME, SAFETENSORS_NAME, SAFETENSORS_NAME + ".index.json", "model-*-of-*.safetensors"),
    (CONFIG_NAME, PREPROCESSOR_NAME, BIN_NAME, BIN_NAME + ".index.json", "pytorch_model-*-of-*.bin"),
)
"""``allow_patterns`` tried in order: the safetensors weights, else the pickle-free-loaded ``.bin`` (never both)."""
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_TRUE = {"1", "on", "yes", "true"}


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
        state.update(_read_weights_file(f))
    return {_rename(k): v for k, v in state.items()}


def _read_weights_file(f: Path) -> dict[str, torch.Tensor]:
    """One weights file (safetensors, else ``torch.load(weights_only=True)``).

    Raises:
        FileNotFoundError: the file is missing (a sharded index naming an absent shard).
        CheckpointError: the file cannot be read as weights (truncated, corrupt, a pickle with code, not a dict of
            tensors); the message names the file and the reader's reason.
    """
    if not f.is_file():
        raise FileNotFoundError(f"{f}: weights file not found")
    try:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            part = load_file(str(f), device="cpu")
        else:
            part = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors' SafetensorsError, torch's UnpicklingError / RuntimeError, OSError, ...
        size = f.stat().st_size
        raise CheckpointError(f"{f}: unreadable weights file ({size} bytes): {type(e).__name__}: {e}") from e
    if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
        raise CheckpointError(f"{f}: not a state dict of tensors (found {type(part).__name__})")
    return part


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


# ---------------------------------------------------------------------------------------------- hub ids
def split_revision(spec: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; ``"org/name"`` -> ``("org/name", None)``."""
    repo, sep, rev = str(spec).partition("@")
    return repo, (rev or None) if sep else None


def is_hub_id(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` reads as a hub id ``org/name[@revision]`` rather than a local path (which wins if it exists)."""
    text = str(spec)
    return not Path(text).exists() and _HUB_ID.fullmatch(split_revision(text)[0]) is not None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as ``huggingface_hub`` resolves it, read from the environment now:
    ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache``).
    """
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.path.expandvars(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"])).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to a true value, read now (not at import)."""
    env = os.environ
    return (env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or "").strip().lower() in _TRUE


def resolve_pretrained(
    spec: str | os.PathLike, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """A local directory in the released layout for a directory or a hub id (downloaded or from the cache).

    Args:
        spec: a directory, or a hub id ``org/name`` with an optional ``@revision`` (branch, tag or commit).
        revision: the revision (overrides ``@revision``); default ``main``.
        cache_dir: the hub cache (default: :func:`hub_cache_dir`).

    Returns:
        The directory (for a hub id, the cached snapshot ``models--org--name/snapshots/<commit>``).

    Raises:
        ModelNotFoundError: no such directory and not a hub id; or the id is not cached and the hub cannot be
            reached (or ``HF_HUB_OFFLINE=1``); or the repo, the revision or its weights do not exist.
    """
    path = Path(spec)
    if path.is_dir():
        return path
    if not is_hub_id(spec):
        raise ModelNotFoundError(f"{spec}: no such directory, and not a Hugging Face hub id (org/name[@revision])")
    repo, rev = split_revision(str(spec))
    return _download(repo, revision or rev, Path(cache_dir) if cache_dir else hub_cache_dir())


def _download(repo: str, revision: str | None, cache: Path) -> Path:
    """``snapshot_download`` of the config + one weights format (safetensors first), from the cache if offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = f"{repo}@{revision}" if revision else repo
    offline, endpoint = hub_offline(), os.environ.get("HF_ENDPOINT") or None
    missing: Exception | None = None
    for patterns in HUB_FILE_SETS:
        try:
            got = snapshot_download(repo, revision=revision, cache_dir=cache, allow_patterns=list(patterns),
                                    local_files_only=offline, endpoint=endpoint)  # fmt: skip
        except LocalEntryNotFoundError as e:  # not cached (or incomplete) and no way to download
            missing = e
            continue
        except RevisionNotFoundError as e:
            raise ModelNotFoundError(f"{name}: the hub repo has no revision {revision!r}") from e
        except RepositoryNotFoundError as e:  # also gated / private without a token
            raise ModelNotFoundError(
                f"{name}: no such model repo on the hub (or it is private or gated: log in with `hf auth login`)"
            ) from e
        except HfHubHTTPError as e:
            raise ModelNotFoundError(f"{name}: the hub refused the download ({e})") from e
        directory = Path(got)
        if (directory / CONFIG_NAME).is_file() and _has_weights(directory):
            return directory
    if missing is None:  # found, but without config.json or weights in either format
        raise ModelNotFoundError(f"{name}: the repo (cache {cache}) has no {CONFIG_NAME} with {SAFETENSORS_NAME} "
                                 f"or {BIN_NAME}: not a MERT/HuBERT checkpoint")  # fmt: skip
    why = (
        "HF_HUB_OFFLINE=1 forbids downloading it"
        if offline
        else f"the hub ({endpoint or 'https://huggingface.co'}) cannot be reached ({_first_line(missing)})"
    )
    raise ModelNotFoundError(
        f"{name}: not a local directory, not in the Hugging Face cache {cache} (HF_HOME / HF_HUB_CACHE), and {why}. "
        f"Download it once with network access (`hf download {repo}` or MERT.from_pretrained({repo!r})), "
        "or point HF_HOME at a cache that holds it."
    ) from missing


def _has_weights(directory: Path) -> bool:
    try:
        return all(f.is_file() for f in _weight_files(directory))
    except (FileNotFoundError, KeyError, ValueError):
        return False


def _first_line(e: BaseException) -> str:
    cause = e.__cause__ or e
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"[:200]


# ---------------------------------------------------------------------------------------------- public API
def load_config(path: str | os.PathLike, do_normalize: bool | None = None) -> tuple[MERTConfig, dict]:
    """The :class:`MERTConfig` of a released-layout directory (and its raw ``config.json`` dict), weights unread.

    ``do_normalize``: ``None`` follows ``preprocessor_config.json`` (``Wav2Vec2FeatureExtractor``'s default ``True``
    if the key is absent), else the config default; a bool overrides both.

    Raises:
        FileNotFoundError: no ``config.json``.
        ConfigError: unsupported config (e.g. ``feature_extractor_cqt: true``), or a config file that is not valid
            JSON (naming it).
    """
    path = Path(path)
    if not (path / CONFIG_NAME).exists():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME} (expected the released MERT/HuBERT layout)")
    hf = _read_json(path / CONFIG_NAME)
    cfg = MERTConfig.from_hf_dict(hf)
    if do_normalize is None and (path / PREPROCESSOR_NAME).exists():
        do_normalize = bool(_read_json(path / PREPROCESSOR_NAME).get("do_normalize", True))
    if do_normalize is not None:
        cfg = dataclasses.replace(cfg, do_normalize=do_normalize)
    return cfg, hf


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file; :class:`ConfigError` naming the file when it is not one (truncated, corrupt)."""
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def from_pretrained(
    path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    do_normalize: bool | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> MERT:
    """Load the released ``m-a-p/MERT-v1-*`` layout into :class:`MERT` (eval mode), from a directory or the hub.

    Args:
        path: directory with ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``, or a Hugging
            Face hub id (``m-a-p/MERT-v1-95M``, optionally ``@revision``) resolved by :func:`resolve_pretrained`
            (``HF_HOME``, ``HF_HUB_OFFLINE=1`` and the local cache are honoured; no repo code is run).
        revision: hub revision (branch, tag or commit) of a hub id; default ``main``.
        cache_dir: hub cache directory (default ``$HF_HUB_CACHE`` or ``$HF_HOME/hub``).
        do_normalize: per-clip input normalisation; ``None`` follows ``preprocessor_config.json``
            (``Wav2Vec2FeatureExtractor``'s default ``True`` if the key is absent), else the config default.
        dtype: parameter dtype.
        device: parameter device.

    Returns:
        The model in eval mode.

    Raises:
        ModelNotFoundError: neither a directory nor a resolvable hub id (see :func:`resolve_pretrained`).
        ConfigError: unsupported config (e.g. ``feature_extractor_cqt: true``) or a config file that is not JSON.
        CheckpointError: missing, unexpected or mis-shaped keys, or an unreadable weights file (naming it).
    """
    path = resolve_pretrained(path, revision, cache_dir)
    cfg, hf = load_config(path, do_normalize)
    with torch.device("meta"):
        model = MERT(cfg)
    model.to_empty(device="cpu")
    with exclusive():  # unseeded draws, overwritten below: not inside another thread's seeded construction
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
