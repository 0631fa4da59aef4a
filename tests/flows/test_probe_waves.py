"""The flow's probes run in waves of ``probe_workers`` threads: same rows in the same order as one at a time, the
costly pair (trained model, its random-init twin) side by side, and a wave never holds one model twice."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("prefect")

from prefect import flow  # noqa: E402

from flows import pipeline  # noqa: E402


def test_pair_expensive_puts_the_twin_beside_the_model():
    order = pipeline._pair_expensive("models:/m/1", ["mfcc", "random:data/pretrain/m/export", "chroma"])
    assert order == ["models:/m/1", "random:data/pretrain/m/export", "mfcc", "chroma"]


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_waves_give_the_rows_of_one_at_a_time(monkeypatch, workers, prefect_server):
    running, seen, lock = set(), [], threading.Lock()

    def fake_probe(model, task_dir, out, params, track=False):
        assert track is False  # tracking happens afterwards, one at a time
        with lock:
            assert model not in running, "one model twice in a wave"
            running.add(model)
            seen.append(len(running))
        time.sleep(0.3)  # long enough for the wave's other threads to start
        with lock:
            running.discard(model)
        return {"task": task_dir, "test_score": len(model) / 100}

    monkeypatch.setattr(pipeline.stages, "probe", fake_probe)
    jobs = [(spec, t, f"/tmp/{t}-{spec}.json", {"label": spec})
            for t in ("key", "tempo") for spec in ("models:/m/1", "random:x", "mfcc")]  # fmt: skip

    @flow
    def run() -> list[dict]:
        return pipeline._run_probes(jobs, None, workers)

    rows = run()
    assert [(r["label"], r["task"]) for r in rows] == [(j[0], j[1]) for j in jobs]
    assert all(r["test_score"] == len(r["label"]) / 100 and r["results"] == j[2] for r, j in zip(rows, jobs))
    assert max(seen) == min(workers, 3)  # side by side, up to the 3 distinct models of a task (never one twice)
