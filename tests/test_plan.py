"""mert.plan: the main job's announced stages and time estimates scale with the machine and the parameters."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from mert.params import load_params
from mert.plan import plan_main_job, step_gflops
from mert.utils.runtime import CPUCompute

ROOT = Path(__file__).resolve().parents[1]
SLOW = CPUCompute(cores=2, gflops_1=70.0, gflops_threads=63.0, gflops_procs=72.0)


@pytest.fixture(scope="module")
def P():
    return load_params(ROOT / "params.yaml")


def test_step_gflops_agrees_with_the_benchmark_count(P):
    """The plan's count without a model = benchmarks/train_step.py's count on the built model (parameters counted)."""
    spec = importlib.util.spec_from_file_location("train_step", ROOT / "benchmarks" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from mert.model.config import MERTConfig
    from mert.model.pretraining import MERTPretrainingModel, PretrainingConfig

    for name in ("mert-small-lowcqt", "mert-small", "mert-95m"):
        prof = P["pretrain"].profiles[name]
        enc = MERTConfig.from_name(prof.model, **prof.model_overrides)
        obj = PretrainingConfig.for_labels(prof.model, "rvq", 8, 1024, **prof.objective_overrides)
        model = MERTPretrainingModel(enc, obj)
        clips = prof.batch_seconds * 24_000 / prof.crop_samples
        per_clip = sum(bench.step_flops(model, 1, prof.crop_samples, 0.5).values())
        assert step_gflops(prof) == pytest.approx(clips * per_clip / 1e9, rel=0.05), name


def test_the_plan_lists_every_stage_and_scales_with_the_machine(P):
    plan = plan_main_job(P, ["mert-small-lowcqt"], 4, 3, SLOW)
    assert [s.name for s in plan.stages] == ["render", "ingest", "label", "pretrain mert-small-lowcqt", "probe"]
    assert plan.probe_workers == 1  # two "cores" that multiply no faster than one
    text = "\n".join(plan.lines())
    assert "16 probes (4 tasks x 4 models), 1 at a time" in text and "1800 steps" in text and "in all" in text
    fast = plan_main_job(P, ["mert-small-lowcqt"], 4, 3, dataclasses.replace(SLOW, gflops_1=140.0, gflops_threads=126.0,
                                                                              gflops_procs=144.0))  # fmt: skip
    for a, b in zip(plan.stages, fast.stages):
        if a.name != "ingest":
            assert b.seconds == pytest.approx(a.seconds / 2, rel=0.01), a.name
    many = plan_main_job(P, ["mert-small-lowcqt"], 4, 3, CPUCompute(8, 70.0, 500.0, 540.0))
    assert many.probe_workers == 8 and many.stages[-1].seconds < plan.stages[-1].seconds / 4


def test_the_plan_follows_the_steps_and_the_probe_workers_asked_for(P):
    P = dict(P)
    prof = P["pretrain"].profiles["mert-small-lowcqt"]
    profiles = {**P["pretrain"].profiles, "x": dataclasses.replace(prof, max_steps=900)}
    P["pretrain"] = dataclasses.replace(P["pretrain"], profiles=profiles)
    half = plan_main_job(P, ["x"], 4, 3, SLOW, probe_workers=2)
    full = plan_main_job(load_params(ROOT / "params.yaml"), ["mert-small-lowcqt"], 4, 3, SLOW)
    assert half.stages[3].seconds == pytest.approx(full.stages[3].seconds / 2) and half.probe_workers == 2


def test_a_second_teacher_iteration_adds_its_labels_pretraining_and_probes(P):
    one = plan_main_job(P, ["mert-small-lowcqt"], 4, 3, SLOW)
    two = plan_main_job(P, ["mert-small-lowcqt"], 4, 3, SLOW, teacher_iterations=2)
    assert [s.name for s in two.stages] == ["render", "ingest", "label", "pretrain mert-small-lowcqt",
                                            "label iter2", "pretrain mert-small-lowcqt-iter2", "probe"]  # fmt: skip
    assert two.stages[5].seconds == one.stages[3].seconds and two.stages[6].seconds == 2 * one.stages[4].seconds
    assert 60 < two.stages[4].seconds < 600  # measured: 2 min on the demo corpus
    assert "32 probes" in "\n".join(two.lines())
