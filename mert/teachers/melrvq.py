"""Mel-RVQ teacher (MuQ, Zhu et al. 2025): a residual VQ fitted to reconstruct normalised log-mel tokens.

As ``tencent-ailab/MuQ`` ``modules/rvq.py`` (``ResidualVectorQuantize`` with ``use_multi_layer_num=1``, after DAC's
quantizer): the input is the normalised, 4-frame-stacked 128-bin log-mel (:mod:`mert.teachers.mel`, 512 dims at
75 Hz here). Each of ``K`` (8) residual stages ``k`` has a weight-normed linear projection in (512 -> 16) and out
(16 -> 512) and a codebook of ``C`` (1024) 16-dim entries (``nn.Embedding``, N(0, 1) init)::

    z_e = in_k(r_k)                      r_0 = x
    code_k = argmax_c cos(z_e, e_kc)     nearest L2-normalised code
    z_q = out_k(e_k[code_k])             straight-through from z_e
    r_{k+1} = r_k - z_q,                 x_hat = sum_k z_q

    loss = |x - x_hat|_1 (mean) + sum_k [ mse(e_k[code_k], sg(z_e)) + 0.25 mse(z_e, sg(e_k[code_k])) ]

Dead codes (MuQ's ``stale_tolerance``): a code unused by a whole batch for ``stale_steps`` (100) consecutive
steps is replaced by a random L2-normalised ``z_e`` of the current batch.

Deviation from MuQ's recipe (Adam 1e-4, batches of 32 x 5 s clips, 4000 steps: about 1 h on a GPU) so that a fit
takes minutes on a CPU: batches are ``batch_frames`` tokens drawn at random from the fit sample (the model is
per-token, so only the batch composition changes) and the defaults (``label.melrvq`` in ``params.yaml``) use a
larger learning rate and fewer steps; set ``lr: 1.0e-4, steps: 4000, batch_frames: 12000`` for MuQ's numbers.

A fitted model is a directory::

    melrvq.pt       state dict (torch.save; loaded with weights_only=True)
    melrvq.json     settings, mel statistics, fit report (losses, code usage), hash -- written last

The hash (SHA-256 over the settings, the statistics and the state dict) versions the model and enters the
teacher identity. :func:`fit_melrvq` checkpoints ``fit-checkpoint.pt`` atomically every ``checkpoint_every``
steps; a killed fit resumes from it and ends with the same weights as an uninterrupted one (every batch and every
dead-code replacement is seeded by ``(seed, step)``).

``norm: per_bin`` (a documented deviation, see :data:`mert.teachers.mel.NORMS`) standardises each mel bin with its
own corpus statistics instead of MuQ's global mean / std.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from mert.data.shards import Corpus
from mert.teachers.base import TargetExtractor, TeacherError, student_frames
from mert.teachers.mel import MelFrontEnd, MelSpec, MelStats, read_window
from mert.teachers.usage import code_usage
from mert.utils.io import atomic_write, atomic_write_json, sha256_json

log = logging.getLogger(__name__)

MODEL_FILE = "melrvq.json"
WEIGHTS_FILE = "melrvq.pt"
CHECKPOINT_FILE = "fit-checkpoint.pt"
EVAL_TOKENS = 20_000


@dataclass(frozen=True)
class MelRVQSettings:
    """Everything that determines a fitted Mel-RVQ (``label.melrvq`` without ``model``)."""

    n_mels: int = 128
    n_fft: int = 2048
    stack: int = 4
    n_codebooks: int = 8
    codebook_size: int = 1024
    codebook_dim: int = 16
    stale_steps: int = 100
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0
    lr: float = 1e-3
    steps: int = 1000
    batch_frames: int = 4096
    fit_frames: int = 200_000
    seed: int = 0
    sample_rate: int = 24_000
    norm: str = "global"
    """``global`` (MuQ) or ``per_bin`` (:data:`mert.teachers.mel.NORMS`)."""

    @property
    def spec(self) -> MelSpec:
        return MelSpec(self.sample_rate, self.n_fft, self.n_mels, self.stack)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ResidualStage(nn.Module):
    """One quantizer of the residual stack (MuQ ``VectorQuantize``, ``n_layer=1``).

    Args:
        dim: token dimension D.
        codebook_size: C.
        codebook_dim: d.
    """

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.in_proj = weight_norm(nn.Linear(dim, codebook_dim))
        self.out_proj = weight_norm(nn.Linear(codebook_dim, dim))
        self.codebook = nn.Embedding(codebook_size, codebook_dim)
        self.register_buffer("stale", torch.zeros(codebook_size))  # consecutive steps without use

    def lookup(self, z_e: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N,) index of the nearest L2-normalised code."""
        return (F.normalize(z_e, dim=-1) @ F.normalize(self.codebook.weight, dim=-1).T).argmax(-1)

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, D) residual -> ``(z_q (N, D), commitment, codebook loss, codes (N,), z_e (N, d))``."""
        z_e = self.in_proj(r)  # (N, d)
        codes = self.lookup(z_e)
        e = self.codebook(codes)  # (N, d)
        commitment = F.mse_loss(z_e, e.detach())
        codebook = F.mse_loss(e, z_e.detach())
        z_q = self.out_proj(z_e + (e - z_e).detach())  # straight-through
        return z_q, commitment, codebook, codes, z_e

    @torch.no_grad()
    def replace_stale(self, codes: torch.Tensor, z_e: torch.Tensor, tolerance: int, gen: torch.Generator) -> int:
        """Count steps without use; replace codes unused for ``tolerance`` steps by random normalised ``z_e``.

        Returns:
            The number of codes replaced.
        """
        unused = (torch.bincount(codes, minlength=self.stale.numel()) == 0).float()
        self.stale.mul_(unused).add_(unused)
        replace = self.stale >= tolerance
        n = int(replace.sum())
        if n:
            pool = F.normalize(z_e, dim=-1)[torch.randperm(z_e.shape[0], generator=gen)]
            pool = pool.repeat(-(-n // pool.shape[0]), 1)[:n]
            self.codebook.weight[replace] = pool
            self.stale[replace] = 0
        return n


class MelRVQ(nn.Module):
    """The residual stack: ``forward(x) -> (x_hat, loss parts, codes)`` on (N, D) normalised tokens."""

    def __init__(self, settings: MelRVQSettings):
        super().__init__()
        s = settings
        self.settings = s
        self.stages = nn.ModuleList(
            ResidualStage(s.spec.dim, s.codebook_size, s.codebook_dim) for _ in range(s.n_codebooks)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, list]:
        """(N, D) -> ``(x_hat (N, D), {"recon_l1", "commitment", "codebook", "loss"}, codes (N, K), z_e list)``."""
        r, x_hat = x, torch.zeros_like(x)
        commitment, codebook, codes, latents = 0.0, 0.0, [], []
        for stage in self.stages:
            z_q, c_loss, cb_loss, idx, z_e = stage(r)
            x_hat, r = x_hat + z_q, r - z_q
            commitment, codebook = commitment + c_loss, codebook + cb_loss
            codes.append(idx)
            latents.append(z_e)
        s = self.settings
        parts = {"recon_l1": (x - x_hat).abs().mean(), "commitment": commitment, "codebook": codebook}
        parts["loss"] = parts["recon_l1"] + s.codebook_weight * codebook + s.commitment_weight * commitment
        return x_hat, parts, torch.stack(codes, dim=1), latents

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) tokens -> (..., K) codes (the residual pass without losses)."""
        shape, r = x.shape[:-1], x.reshape(-1, x.shape[-1])
        codes = []
        for stage in self.stages:
            idx = stage.lookup(stage.in_proj(r))
            r = r - stage.out_proj(stage.codebook(idx))
            codes.append(idx)
        return torch.stack(codes, dim=-1).reshape(*shape, len(codes))


@dataclass
class MelRVQModel:
    """A fitted Mel-RVQ: settings, the mel statistics it was fitted with, its state dict and its fit report."""

    settings: MelRVQSettings
    stats: MelStats
    state: dict[str, torch.Tensor]
    fit_info: dict[str, Any] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        h = hashlib.sha256(sha256_json({"settings": self.settings.as_dict(), "stats": self.stats.hash}).encode())
        for name, t in sorted(self.state.items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def module(self) -> MelRVQ:
        """The :class:`MelRVQ` holding these weights (eval mode)."""
        rvq = MelRVQ(self.settings)
        rvq.load_state_dict(self.state, strict=True)
        return rvq.eval()

    def save(self, path: str | Path) -> Path:
        """Write the weights, then ``melrvq.json`` last (its presence marks a complete model)."""
        path = Path(path)
        with atomic_write(path / WEIGHTS_FILE) as f:
            torch.save(self.state, f)
        meta = {"settings": self.settings.as_dict(), "stats": asdict(self.stats), "fit": self.fit_info}
        atomic_write_json(path / MODEL_FILE, {**meta, "hash": self.hash})
        return path

    @classmethod
    def load(cls, path: str | Path) -> MelRVQModel:
        """Load a saved model.

        Raises:
            TeacherError: incomplete, unreadable, or its weights do not match the recorded hash.
        """
        path = Path(path)
        if not (path / MODEL_FILE).exists():
            raise TeacherError(f"{path} is not a fitted Mel-RVQ model (no {MODEL_FILE})")
        try:
            meta = json.loads((path / MODEL_FILE).read_text())
            state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
            model = cls(MelRVQSettings(**meta["settings"]), MelStats(**meta["stats"]), state, meta["fit"])
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise TeacherError(f"Mel-RVQ model {path} is unreadable: {e}") from e
        if model.hash != meta["hash"]:
            raise TeacherError(f"Mel-RVQ model {path}: weights do not match the recorded hash (modified or corrupt)")
        return model


class MelRVQTeacher(TargetExtractor):
    """Mel-RVQ codes: ``encode(wav) -> (B, K, F)`` at 75 Hz, aligned with the student's frames.

    Args:
        model: a fitted :class:`MelRVQModel`.
        chunk_frames: kept frames per window of a long clip.
    """

    name = "melrvq"

    def __init__(self, model: MelRVQModel, chunk_frames: int = 2250):
        super().__init__()
        s = model.settings
        model.stats.check(s.spec, "Mel-RVQ teacher")
        self.model, self.spec = model, s.spec
        self.n_codebooks, self.codebook_size = s.n_codebooks, s.codebook_size
        self.sample_rate, self.chunk_frames = s.sample_rate, chunk_frames
        self.left_context_frames = self.right_context_frames = s.spec.context_frames
        self.front = MelFrontEnd(s.spec)
        self.rvq = model.module()
        mean, std = model.stats.vectors(s.norm)
        self.register_buffer("norm_mean", mean)  # (D,) dB
        self.register_buffer("norm_std", std)  # (D,) dB
        self.freeze()

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, K, F) int64, F >= student_frames(S)."""
        x = (self.front(wav, lengths) - self.norm_mean) / self.norm_std  # (B, F, D)
        return self.rvq.encode(x).transpose(1, 2)  # (B, F, K) -> (B, K, F)

    def config(self) -> dict[str, Any]:
        return {
            "model": "melrvq",
            "mel": self.spec.as_dict(),
            "settings": self.model.settings.as_dict(),
            "stats": {"mean": self.model.stats.mean, "std": self.model.stats.std, "hash": self.model.stats.hash},
            "model_hash": self.model.hash,
            "n_codebooks": self.n_codebooks,
            "codebook_size": self.codebook_size,
            "chunk_frames": self.chunk_frames,
            "context_frames": self.left_context_frames,
        }

    def weights_sha256(self) -> str:
        return self.model.hash


# ---------------------------------------------------------------------------------------------- fitting
@torch.no_grad()
def fit_tokens(corpus: Corpus, spec: MelSpec, stats: MelStats, budget: int, norm: str = "global") -> torch.Tensor:
    """Normalised tokens of up to ``budget`` student frames spread over the corpus: (N, D) float16.

    Stored in float16 (the values are ~N(0, 1): 3 significant digits) to halve the memory of the fit sample.
    """
    from mert.teachers.kmeans import fit_windows

    front, out = MelFrontEnd(spec), []
    mean, std = stats.vectors(norm)
    for clip, start, n in fit_windows(corpus, corpus.clips, budget):
        x = read_window(corpus, clip, start, n)
        if x is not None:
            tok = front(x, torch.tensor([n]))[0, : student_frames(n)]  # (F, D)
            out.append(((tok - mean) / std).half())
    if not out:
        raise TeacherError(f"Mel-RVQ fit: no readable audio in corpus {corpus.root}")
    return torch.cat(out)


def _step_generator(seed: int, step: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, 7, step]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


@torch.no_grad()
def evaluate(rvq: MelRVQ, tokens: torch.Tensor) -> tuple[float, np.ndarray]:
    """Mean L1 reconstruction error of ``tokens`` (N, D) in eval mode, and their codes (K, N)."""
    rvq.eval()
    err, codes = 0.0, []
    for i in range(0, tokens.shape[0], 8192):
        x = tokens[i : i + 8192].float()
        x_hat, parts, c, _ = rvq(x)
        err += float(parts["recon_l1"]) * x.shape[0]
        codes.append(c.T.numpy())
    return err / max(tokens.shape[0], 1), np.concatenate(codes, axis=1)


def _eval_subset(tokens: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed, seeded subset of at most ``EVAL_TOKENS`` tokens (the fit report's sample)."""
    if tokens.shape[0] <= EVAL_TOKENS:
        return tokens
    idx = torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(seed))[:EVAL_TOKENS]
    return tokens[idx.sort().values]


def _init(settings: MelRVQSettings) -> MelRVQ:
    from mert.utils.rng import seeded

    with seeded(settings.seed):
        return MelRVQ(settings)


def _save_checkpoint(path: Path, key: str, step: int, rvq: MelRVQ, opt, history: list, initial: float) -> None:
    state = {"key": key, "step": step, "model": rvq.state_dict(), "optimizer": opt.state_dict()}
    state.update(history=history, initial=initial)
    with atomic_write(path) as f:
        torch.save(state, f)


def _load_checkpoint(path: Path, key: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt checkpoint restarts the fit
        log.warning("Mel-RVQ fit: ignoring unreadable checkpoint %s (%s): starting over", path, e)
        return None
    if state.get("key") != key:
        raise TeacherError(
            f"{path} is the checkpoint of another Mel-RVQ fit (other settings or corpus); "
            "use another output directory or delete it"
        )
    return state


def fit_melrvq(
    corpus: Corpus,
    settings: MelRVQSettings,
    stats: MelStats,
    out_dir: str | Path,
    *,
    checkpoint_every: int = 100,
    progress: bool = True,
    stop_after: int | None = None,
) -> MelRVQModel:
    """Fit a Mel-RVQ on the corpus and save it to ``out_dir`` (resuming ``out_dir/fit-checkpoint.pt`` if any).

    Args:
        corpus: the ingested corpus (unreadable clips are skipped).
        settings: the model and fit settings.
        stats: mel statistics of the corpus (the normalisation).
        out_dir: model directory (``melrvq.pt``, ``melrvq.json``) and the home of the fit checkpoint.
        checkpoint_every: steps between checkpoints.
        progress: show a progress bar.
        stop_after: stop (checkpointed, not saved as a model) after this many steps in this call (tests).

    Returns:
        The fitted :class:`MelRVQModel`, whose ``fit_info`` reports the reconstruction L1 before and after, the
        per-codebook code usage on the fit sample, the dead codes replaced and the loss history.
    """
    from tqdm import tqdm

    stats.check(settings.spec, "Mel-RVQ fit")
    out = Path(out_dir)
    key = sha256_json({"settings": settings.as_dict(), "stats": stats.hash, "clips": [c.sha256 for c in corpus]})
    tokens = fit_tokens(corpus, settings.spec, stats, settings.fit_frames, settings.norm)  # (N, D) float16
    held = _eval_subset(tokens, settings.seed)
    rvq = _init(settings)
    opt = torch.optim.Adam(rvq.parameters(), lr=settings.lr)
    history: list[list[float]] = []
    initial, _ = evaluate(rvq, held)
    step = 0
    ckpt = _load_checkpoint(out / CHECKPOINT_FILE, key)
    if ckpt is not None:
        rvq.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, history, initial = ckpt["step"], ckpt["history"], ckpt["initial"]
        log.info("Mel-RVQ fit: resuming from %s at step %d", out / CHECKPOINT_FILE, step)
    bar = tqdm(total=settings.steps, initial=step, desc="fit melrvq", unit="step", disable=not progress)
    done_here = 0
    with bar:
        while step < settings.steps:
            parts, replaced = _train_step(rvq, opt, tokens, settings, step)
            step, done_here = step + 1, done_here + 1
            if step % 10 == 0 or step == settings.steps:
                history.append([step, float(parts["recon_l1"]), float(parts["loss"]), replaced])
                bar.set_postfix(recon_l1=f"{float(parts['recon_l1']):.4f}")
            bar.update(1)
            if step % checkpoint_every == 0 and step < settings.steps:
                _save_checkpoint(out / CHECKPOINT_FILE, key, step, rvq, opt, history, initial)
            if stop_after is not None and done_here >= stop_after and step < settings.steps:
                _save_checkpoint(out / CHECKPOINT_FILE, key, step, rvq, opt, history, initial)
                raise KeyboardInterrupt(f"Mel-RVQ fit stopped after step {step} (stop_after)")
    final, codes = evaluate(rvq, held)
    usage = code_usage([codes], settings.codebook_size)
    info = {
        "steps": step,
        "tokens": int(tokens.shape[0]),
        "eval_tokens": int(held.shape[0]),
        "clips": len(corpus.clips),
        "recon_l1_initial": initial,
        "recon_l1_final": final,
        "usage": [u.as_dict() for u in usage],
        "replaced_codes": int(sum(h[3] for h in history)),
        "history": history,
    }
    model = MelRVQModel(settings, stats, {k: v.detach().clone() for k, v in rvq.state_dict().items()}, info)
    model.save(out)
    (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    return model


def _train_step(rvq: MelRVQ, opt, tokens: torch.Tensor, s: MelRVQSettings, step: int) -> tuple[dict, int]:
    """One Adam step on ``batch_frames`` random tokens, then MuQ's dead-code replacement. Seeded by ``step``."""
    rvq.train()
    gen = _step_generator(s.seed, step)
    x = tokens[torch.randint(tokens.shape[0], (s.batch_frames,), generator=gen)].float()  # (N, D)
    _, parts, codes, latents = rvq(x)
    opt.zero_grad(set_to_none=True)
    parts["loss"].backward()
    opt.step()
    replaced = sum(
        stage.replace_stale(codes[:, k], latents[k].detach(), s.stale_steps, gen) for k, stage in enumerate(rvq.stages)
    )
    return {k: v.detach() for k, v in parts.items()}, replaced
