"""MODEL specs -> frozen frame-feature extractors with a stable identity (for the cache and the report).

A spec is one of:

* a directory in the released HF layout (``config.json`` + weights, :meth:`MERT.from_pretrained`);
* a Hugging Face hub id ``org/name[@revision]`` (``m-a-p/MERT-v1-95M``): downloaded or read from the local cache
  by :func:`mert.model.hf.resolve_pretrained` (``HF_HOME``, ``HF_HUB_OFFLINE=1``; no repo code is run), then
  loaded as a directory; the identity records the id and the snapshot's commit;
* a training checkpoint directory ``step-XXXXXXXX/`` (an HF export inside it or next to the run's
  ``checkpoints/`` as ``export/`` is preferred; else ``checkpoint.pt``'s encoder weights and config);
* ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: resolved to a local HF directory by
  ``mert.tracking`` (the only module allowed to import MLflow), see :func:`resolve_registry`;
* ``random:<preset>[@seed]``: a randomly initialised :class:`MERT` (seed 0 unless given); ``random:<HF dir>[@seed]``
  initialises the exact architecture (and input normalisation) of a trained model's ``config.json`` instead: the
  random-init twin of a model whose profile overrides its preset;
* ``mfcc``, ``chroma``, ``cqt``: handcrafted 75 Hz frame features (the floor every table needs);
* ``conv:<any MERT spec above>``: a diagnostic, not MARBLE's protocol: the MERT model's convolutional front-end
  features (``MERTOutput.features``, before the feature projection and the positional convolution) as one layer.

Every extractor maps ``(B, L)`` 24 kHz audio to ``(n_layers, B, T, D)`` features at 75 Hz.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mert.model.hf import is_hub_id
from mert.utils.io import sha256_file, sha256_json

SAMPLE_RATE = 24_000
HOP = 320  # 75 Hz at 24 kHz, MERT's frame rate
HANDCRAFTED = ("mfcc", "chroma", "cqt")


class ModelSpecError(ValueError):
    """A MODEL spec that cannot be resolved (the message says what was tried)."""


class FeatureModel(nn.Module):
    """Base class: a frozen extractor of per-layer frame features.

    Attributes:
        identity: JSON-able description of exactly which weights/features these are (hashed for the cache).
        n_layers: number of feature layers (hidden states for MERT, 1 for handcrafted features).
        chunk_seconds: longest input one forward pass takes (longer frame-level audio is chunked).
    """

    identity: dict[str, Any]
    n_layers: int
    chunk_seconds: float = 30.0

    @property
    def identity_hash(self) -> str:
        return sha256_json(self.identity)[:16]


class MERTFeatures(FeatureModel):
    """All hidden states of a :class:`MERT` encoder (``hidden_states[0..N]``, reference section 6)."""

    def __init__(self, model: nn.Module, identity: dict[str, Any]):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.identity = identity
        self.n_layers = model.config.num_hidden_layers + 1
        self.config = model.config

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` -> ``(n_layers, B, T, D)`` with ``T = config.num_frames(L)``."""
        return torch.stack(self.model(wav, output_hidden_states=True).hidden_states)


class ConvFeatures(FeatureModel):
    """The conv front end's output of a :class:`MERTFeatures` model (``features``, ``(B, T, C)``) as one layer.

    A diagnostic: does information a probe misses in ``hidden_states`` exist in the frame features before the
    feature projection and the positional convolution (``hidden_states[0]`` already adds the latter)?
    """

    def __init__(self, inner: MERTFeatures):
        super().__init__()
        self.inner = inner
        self.identity = {"kind": "conv-features", "of": inner.identity}
        self.n_layers = 1
        self.config = inner.config

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` -> ``(1, B, T, C)`` with ``C = config.conv_dim[-1]``."""
        return self.inner.model(wav).features[None]


class Handcrafted(FeatureModel):
    """MFCC (20 coefficients + deltas), CQT chroma (12) or log-CQT (336 bins) at 75 Hz, as one "layer"."""

    def __init__(self, kind: str):
        super().__init__()
        if kind not in HANDCRAFTED:
            raise ModelSpecError(f"unknown handcrafted feature {kind!r}; expected one of {list(HANDCRAFTED)}")
        self.kind = kind
        self.identity = {"kind": "handcrafted", "name": kind, "version": 1}
        self.n_layers = 1
        if kind == "mfcc":
            import torchaudio

            mel = {"n_fft": 2048, "hop_length": HOP, "n_mels": 128, "center": True}
            self.mfcc = torchaudio.transforms.MFCC(sample_rate=SAMPLE_RATE, n_mfcc=20, melkwargs=mel)
        else:
            from mert.teachers.cqt import build_cqt

            self.cqt = build_cqt("fast")
            bins = torch.arange(self.cqt.spec.n_bins)
            # bin k sits at C1 * 2**(k/48): 4 bins per semitone, bin 0 on a C
            per_semitone = self.cqt.spec.bins_per_octave // 12
            pitch_class = torch.round(bins / per_semitone).long() % 12  # (336,)
            self.register_buffer("fold", nn.functional.one_hot(pitch_class, 12).float(), persistent=False)

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` -> ``(1, B, T, D)`` with ``T = L // 320 + 1``."""
        if self.kind == "mfcc":
            import torchaudio

            c = self.mfcc(wav)  # (B, 20, T)
            c = torch.cat([c, torchaudio.functional.compute_deltas(c)], 1)  # (B, 40, T)
        else:
            spec = self.cqt(wav)  # (B, 336, T)
            if self.kind == "cqt":
                c = torch.log(spec + 1e-5)
            else:
                chroma = torch.einsum("bkt,kc->bct", spec, self.fold)  # (B, 12, T)
                c = chroma / chroma.amax(1, keepdim=True).clamp_min(1e-8)
        return c.transpose(1, 2)[None]  # (1, B, T, D)


# ------------------------------------------------------------------------------------------------ resolution
def _hf_identity(path: Path) -> dict[str, Any]:
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    return {"kind": "mert", "weights": {p.name: sha256_file(p) for p in weights}}


def load_hf_dir(path: Path, do_normalize: bool | None = None) -> MERTFeatures:
    from mert.model import MERT

    model = MERT.from_pretrained(path, do_normalize=do_normalize)
    ident = _hf_identity(path) | {"source": str(path.resolve()), "do_normalize": model.config.do_normalize}
    return MERTFeatures(model, ident)


def load_hub_id(spec: str, do_normalize: bool | None = None) -> MERTFeatures:
    """A hub id ``org/name[@revision]`` resolved to its cached snapshot (downloaded if needed and allowed)."""
    from mert.model.hf import ModelNotFoundError, resolve_pretrained, split_revision

    try:
        path = resolve_pretrained(spec)
    except ModelNotFoundError as e:
        raise ModelSpecError(str(e)) from e
    model = load_hf_dir(path, do_normalize)
    model.identity |= {"hub_id": split_revision(spec)[0], "hub_commit": path.name}
    return model


def _checkpoint_export(path: Path) -> Path | None:
    """The HF export belonging to a step directory, if the trainer wrote one."""
    for candidate in (path / "export", path / "hf", path):
        if (candidate / "config.json").is_file() and any(candidate.glob("*.safetensors")):
            return candidate
    return None


def load_training_checkpoint(path: Path, do_normalize: bool | None = None) -> MERTFeatures:
    """A ``step-XXXXXXXX/`` directory: its HF export if present, else the encoder from ``checkpoint.pt``."""
    export = _checkpoint_export(path)
    if export is not None:
        return load_hf_dir(export, do_normalize)
    ckpt = path / "checkpoint.pt"
    if not ckpt.is_file():
        raise ModelSpecError(f"{path}: neither an HF export (config.json + *.safetensors) nor checkpoint.pt")
    from mert.model import MERT, MERTConfig

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / corrupt zip, a pickle with code (refused by weights_only), ...
        raise ModelSpecError(f"{ckpt}: unreadable training checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ModelSpecError(f"{ckpt}: not a training checkpoint (no 'model' state dict)")
    enc = (state.get("config") or {}).get("encoder")
    if not isinstance(enc, dict):
        raise ModelSpecError(f"{ckpt}: no config.encoder in the checkpoint (cannot rebuild the encoder)")
    fields = {f.name for f in dataclasses.fields(MERTConfig)}
    cfg = MERTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in enc.items() if k in fields})
    if do_normalize is not None:
        cfg = dataclasses.replace(cfg, do_normalize=do_normalize)
    from mert.utils.rng import exclusive

    with exclusive():  # its init draws are overwritten, but must not land inside another probe's seeded twin
        model = MERT(cfg)
    weights = {k[len("mert.") :]: v for k, v in state["model"].items() if k.startswith("mert.")}
    model.load_state_dict(weights, strict=True)
    ident = {"kind": "mert", "checkpoint": sha256_file(ckpt), "source": str(path.resolve())}
    return MERTFeatures(model, ident | {"do_normalize": cfg.do_normalize})


def random_model(preset: str, seed: int = 0) -> MERTFeatures:
    """A seeded random-init encoder (the "is pretraining worth anything" baseline).

    Args:
        preset: a preset name (``mert-tiny``, ...) or an HF-layout directory whose ``config.json`` (and
            ``preprocessor_config.json``) give the architecture: the random twin of that trained model.
        seed: torch seed of the initialisation.
    """
    from mert.model import MERT, MERTConfig
    from mert.model.hf import load_config

    cfg = load_config(preset)[0] if Path(preset).is_dir() else MERTConfig.from_name(preset)
    from mert.utils.rng import seeded

    with seeded(seed):  # the flow probes in threads: another probe may build or draw meanwhile
        model = MERT(cfg)
    return MERTFeatures(model, {"kind": "random", "preset": preset, "seed": seed, "config": dataclasses.asdict(cfg)})


def resolve_registry(spec: str, uri: str | None = None) -> Path:
    """``models:/name@alias`` or ``models:/name/version`` -> a local HF-layout directory.

    Resolves the version through the registry client of ``mert.tracking.connect``; its artifacts are read in place
    from a local artifact store (the default ``sqlite:///mlflow.db`` + ``mlartifacts/`` setup) or downloaded once
    from a tracking server that proxies them (``mlflow-artifacts:/``, S3, ...) by ``mert.tracking.local_artifacts``.
    """
    try:
        from mert import tracking
    except ImportError as e:
        raise ModelSpecError(f"{spec}: registry URIs need mert/tracking.py, which is not available ({e})") from e
    from mert.probe.tracking import resolve_version

    client, _ = tracking.connect(uri, "mert-probe")
    try:
        name, version = resolve_version(client, spec)
        source = client.get_model_version(name, version).source
        if source.startswith("models:/m-"):  # an MLflow 3 LoggedModel
            source = client.get_logged_model(source[len("models:/") :]).artifact_location
    except Exception as e:  # MLflow's RestException for unknown names/aliases/versions
        raise ModelSpecError(
            f"{spec}: cannot resolve in the registry at {tracking.resolve_tracking_uri(uri)} ({e})"
        ) from e
    try:
        local = tracking.local_artifacts(source, uri)
    except tracking.TrackingError as e:
        raise ModelSpecError(f"{spec}: {e}") from e
    return _local_hf_dir(spec, str(local))


def _local_hf_dir(spec: str, location: str) -> Path:
    from urllib.parse import unquote, urlparse

    path = Path(unquote(urlparse(location).path)) if location.startswith("file:") else Path(location)
    if not path.is_dir():
        raise ModelSpecError(f"{spec}: artifacts at {location} are not on this machine (a moved or deleted store?)")
    for config in sorted(path.rglob("config.json")):
        if "code" not in config.relative_to(path).parts and any(config.parent.glob("*.safetensors")):
            return config.parent
    raise ModelSpecError(f"{spec}: no HF-layout encoder (config.json + *.safetensors) under {path}")


def load_model(spec: str, do_normalize: bool | None = None) -> FeatureModel:
    """Resolve a MODEL spec (see the module docstring) into an eval-mode :class:`FeatureModel`.

    Args:
        spec: the MODEL string.
        do_normalize: override the per-clip waveform normalisation of MERT models (``None``: the model's own).

    Raises:
        ModelSpecError: for anything that does not resolve, saying what was tried.
    """
    if spec in HANDCRAFTED:
        return Handcrafted(spec)
    if spec.startswith("conv:"):
        inner = load_model(spec[len("conv:") :], do_normalize)
        if not isinstance(inner, MERTFeatures):
            raise ModelSpecError(f"{spec}: conv: takes a MERT model spec, not {inner.identity.get('name', spec)!r}")
        return ConvFeatures(inner)
    if spec.startswith("random:"):
        preset, _, seed = spec[len("random:") :].partition("@")
        try:
            return random_model(preset, int(seed or 0))
        except (KeyError, ValueError, FileNotFoundError) as e:
            raise ModelSpecError(f"{spec}: {e}") from e
    if spec.startswith("models:/"):
        model = load_hf_dir(resolve_registry(spec), do_normalize)
        model.identity["registry_uri"] = spec
        return model
    path = Path(spec)
    if not path.is_dir() and is_hub_id(spec):
        return load_hub_id(spec, do_normalize)
    if not path.is_dir():
        raise ModelSpecError(
            f"{spec!r} is not a directory, a hub id (org/name[@revision]), a models:/ URI, random:<preset> or one "
            f"of {list(HANDCRAFTED)}"
        )
    if (path / "checkpoint.pt").is_file() or path.name.startswith("step-"):
        return load_training_checkpoint(path, do_normalize)
    if (path / "config.json").is_file():
        return load_hf_dir(path, do_normalize)
    raise ModelSpecError(f"{path}: no config.json (HF layout) and no checkpoint.pt (training checkpoint)")


def describe(model: FeatureModel) -> str:
    return json.dumps(model.identity, sort_keys=True, default=str)[:200]
