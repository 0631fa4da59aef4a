"""What the main job will do on this machine, and roughly how long each stage will take, said before it starts.

The estimate scales the cost of each stage, measured once on a reference machine, by this machine's measured
compute (:func:`mert.utils.runtime.cpu_compute`) and by the parallelism each stage will use:

    seconds = work x (reference seconds per unit of work) x (reference GFLOP/s / this machine's GFLOP/s) / speed-up

with the work counted from the parameters (clips to render, audio seconds to label, FLOPs of the pretraining steps,
probes to fit). The reference costs are the stage times of one fresh-clone main job (commit 4cd2cba, 2026-12-07) on
a 2-vCPU machine (float32 matmul 91 GFLOP/s on 1 thread, 169 on 2): render 64 s, ingest 1.4 s, label 107 s,
pretrain 360 s, 16 probes 135 s; see ``docs/benchmarks.md``. The
estimate is a plan, not a promise: another CPU's ratio of matmul speed to everything else, or other work on the
machine, moves it. Stages whose results are cached take seconds, and are not predicted as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mert.utils.runtime import CPUCompute

REFERENCE_GFLOPS = 91.0
"""float32 matmul GFLOP/s of one thread of the reference machine (the one the costs below were measured on)."""
RENDER_S_PER_CLIP = 0.078
"""Rendering + writing one demo clip (pretraining excerpt or task clip), one process, reference machine."""
INGEST_S_PER_AUDIO_MIN = 0.08
"""Decoding, resampling and sharding one minute of audio, one process."""
LABEL_S_PER_AUDIO_S = {"rvq": 0.21, "kmeans": 0.0034, "bestrq": 0.017, "melrvq": 0.017}
"""Teacher labelling, seconds per second of audio (the random-projection EnCodec is a full conv encoder; it was timed
in the reference run, the others in earlier runs on a 77 GFLOP/s machine and converted to this reference)."""
HIDDEN_S_PER_AUDIO_S = 0.015
"""The hidden teacher (HuBERT iteration 2) with a ``mert-small`` parent: its hidden states for the k-means sample (every
clip at ``fit_fraction: 1``) and for the labels, seconds per second of audio (7 s + 11 s for the demo's 17 min on a
77 GFLOP/s machine, converted)."""
KMEANS_S = 80.0
"""Its k-means fit at the demo's size: 500 clusters, 20 k-means++ initialisations, 76,675 x 64 frames, 1 thread
(94 s on a 77 GFLOP/s machine, converted); scaled by ``n_init x n_clusters x hidden size``."""
PRETRAIN_S_PER_GFLOP = 0.040
"""Wall seconds per analytic GFLOP of a CPU pretraining step (about 30% of the machine's matmul peak: the conv
front end and the elementwise work run well below it)."""
PROBE_S = {"key": 17.9, "instrument": 11.5, "pitch": 7.6, "tempo": 30.6}
"""One probe (feature extraction of the task's 400 clips with a mert-small-sized model + the layer x LR sweep), one
process; a handcrafted baseline costs about as much (its sweep has fewer layers but its features are computed on the
CPU too)."""
FIXED_S = 30.0
"""Start-up: the local Prefect server, MLflow's database, imports."""


@dataclass
class Stage:
    name: str
    what: str
    seconds: float


@dataclass
class JobPlan:
    """The stages of a run, with estimated seconds on this machine, and the parallelism chosen for it."""

    compute: CPUCompute
    probe_workers: int
    render_workers: int
    stages: list[Stage] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return FIXED_S + sum(s.seconds for s in self.stages)

    def lines(self) -> list[str]:
        out = [
            f"this machine: {self.compute.describe()}",
            f"so: {self.render_workers} rendering process(es), labelling and pretraining on {self.compute.cores} "
            f"thread(s), {self.probe_workers} probe(s) at a time",
            "what the job will do, and roughly how long it will take here:",
        ]
        width = max(len(s.what) for s in self.stages) if self.stages else 0
        for i, s in enumerate(self.stages, 1):
            out.append(f"  {i}. {s.what:<{width}}  ~{_minutes(s.seconds)}")
        out.append(f"  in all, with start-up: ~{_minutes(self.total_seconds)} (stages already done are skipped)")
        return out


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def step_gflops(profile, n_codebooks: int = 8, codebook_size: int = 1024) -> float:
    """Analytic GFLOPs of one pretraining step of ``profile`` (fwd + bwd = 3 x fwd; the terms of
    ``benchmarks/train_step.py``: conv front end, dense layers, attention, heads), without building the model.
    """
    from mert.model.config import MERTConfig
    from mert.model.pretraining import PretrainingConfig

    enc = MERTConfig.from_name(profile.model, **profile.model_overrides)
    obj = PretrainingConfig.for_labels(profile.model, "rvq", n_codebooks, codebook_size, **profile.objective_overrides)
    clips = profile.batch_seconds * 24_000 / profile.crop_samples  # clips per optimiser step, all ranks
    n, c_in, conv = profile.crop_samples, 1, 0.0
    for i, (c_out, k, s) in enumerate(zip(enc.conv_dim, enc.conv_kernel, enc.conv_stride)):
        n = (n - k) // s + 1
        conv += (1 / 3 if i < enc.conv_frozen_layers else 1.0) * c_in * c_out * k * n  # frozen: no backward
        c_in = c_out
    frames = enc.num_frames(profile.crop_samples)
    d, f = enc.hidden_size, enc.intermediate_size
    dense = enc.num_hidden_layers * (4 * d * d + 2 * d * f) + enc.conv_dim[-1] * d
    attn = 2 * enc.num_hidden_layers * frames * d
    head_frames = frames if obj.pred_nomask_weight > 0 else 0.5 * frames
    heads = (obj.n_codebooks * obj.codebook_size * obj.final_dim + d * obj.final_dim * obj.n_codebooks) * head_frames
    return 6.0 * clips * (conv + dense * frames + attn * frames + heads) / 1e9


def plan_main_job(params: dict, profiles: list[str], n_tasks: int, n_baselines: int, compute: CPUCompute,
                  probe_workers: int | None = None, teacher_iterations: int = 1) -> JobPlan:  # fmt: skip
    """The main job's stages with estimated seconds on ``compute``'s machine.

    Args:
        params: ``load_params`` sections (``demo``, ``label``, ``pretrain``...).
        profiles: pretraining profiles to train.
        n_tasks: probing tasks.
        n_baselines: probed beside each model (the random-init twin included).
        compute: this machine's measured compute.
        probe_workers: probes at a time (None: ``compute.parallel_jobs()``).
        teacher_iterations: HuBERT iterations per profile (each after the first: a hidden-teacher labelling with its
            k-means fit, and one more pretraining of the profile).
    """
    pw = probe_workers or compute.parallel_jobs()
    demo = params["demo"]
    rw = demo.workers or compute.cores
    slow = REFERENCE_GFLOPS / max(compute.gflops_1, 1e-9)  # > 1 on a machine slower than the reference
    par = max(1.0, min(compute.effective_cores, compute.cores))
    plan = JobPlan(compute, pw, rw)
    clips = demo.n_clips + 4 * demo.task_clips
    render_speedup = min(rw, par)
    plan.stages.append(Stage("render", f"render the demo corpus ({demo.n_clips} excerpts, {4 * demo.task_clips} "
                             "task clips)", clips * RENDER_S_PER_CLIP * slow / render_speedup))  # fmt: skip
    audio_s = demo.n_clips * (demo.min_seconds + demo.max_seconds) / 2
    plan.stages.append(
        Stage("ingest", f"ingest {audio_s / 60:.0f} min of audio", audio_s / 60 * INGEST_S_PER_AUDIO_MIN)
    )
    teacher = params["label"].teacher
    plan.stages.append(Stage("label", f"label it ({teacher} teacher)",
                             audio_s * LABEL_S_PER_AUDIO_S.get(teacher, 0.12) * slow / par))  # fmt: skip
    for name in profiles:
        prof = params["pretrain"].profiles[name]
        gflop = step_gflops(prof)
        best = max(compute.gflops_1, compute.gflops_threads)
        sec = prof.max_steps * gflop * PRETRAIN_S_PER_GFLOP * REFERENCE_GFLOPS / best
        plan.stages.append(Stage(f"pretrain {name}", f"pretrain {name}, {prof.max_steps} steps of {gflop:.1f} GFLOP",
                                 sec))  # fmt: skip
        for it in range(2, teacher_iterations + 1):
            plan.stages.append(_hidden_label_stage(params, name, it, audio_s, slow, par))
            plan.stages.append(Stage(f"pretrain {name}-iter{it}", f"pretrain {name}-iter{it} on them, "
                                     f"{prof.max_steps} steps", sec))  # fmt: skip
    n_probes = n_tasks * (1 + n_baselines) * len(profiles) * teacher_iterations
    probe_s = (sum(PROBE_S.values()) / len(PROBE_S)) * n_probes * slow / min(pw, par)
    plan.stages.append(Stage("probe", f"{n_probes} probes ({n_tasks} tasks x {1 + n_baselines} models), {pw} at a time",
                             probe_s))  # fmt: skip
    return plan


def _hidden_label_stage(params: dict, profile: str, iteration: int, audio_s: float, slow: float, par: float) -> Stage:
    """Iteration ``iteration``'s labels: k-means codes of the previous model's hidden state (fit, then labels)."""
    from mert.model.config import MERTConfig

    h = params["label"].hidden
    prof = params["pretrain"].profiles[profile]
    dim = MERTConfig.from_name(prof.model, **prof.model_overrides).hidden_size
    fit = KMEANS_S * (h.n_init / 20) * (h.n_clusters / 500) * (dim / 64) * slow
    states = audio_s * HIDDEN_S_PER_AUDIO_S * slow / par * (1 + h.fit_fraction) / 2
    return Stage(f"label iter{iteration}", f"label it again: k-means ({h.n_clusters}) of the model's hidden state "
                 f"(iteration {iteration})", fit + states)  # fmt: skip
