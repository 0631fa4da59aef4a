"""Two torchrun "nodes" on one machine (c10d rendezvous on 127.0.0.1, one gloo CPU rank each, loopback only).

* They train the same weights as one process with the same global batch, bit for bit: every micro-batch is a pure
  function of (step, slot) and the gradient average over 2 ranks equals 2-step accumulation exactly (a power of two).
* A rank SIGKILLed mid-run under ``--max-restarts 1``: both agents restart their ranks, the group resumes from the
  last checkpoint and ends with the uninterrupted weights, bit for bit; rank 0 alone wrote the checkpoints, the MLflow
  run and the registry: one run, each metric once per step, one registered version.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mert.stages import torchrun_env
from mert.tracking import read_jsonl
from mert.train import checkpoint as ckpt
from tests.train.conftest import tiny_profile
from tests.train.helpers import REPO, env, pretrain_cmd, run, write_params

pytestmark = pytest.mark.slow

PROFILE = dict(max_steps=10, save_interval=2, keep_last=3, batch_seconds=1.6, loader_prefetch=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_env(tmp: Path) -> dict[str, str]:
    # loopback only: gloo on lo; the agents' log level shows the restart; a fresh rendezvous store per restart
    return torchrun_env({**env(), "GLOO_SOCKET_IFNAME": "lo", "LOGLEVEL": "INFO",
                         "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"})  # fmt: skip


def _launch_nodes(corpus: Path, out: Path, params: Path, tmp: Path, rdzv_id: str) -> list[subprocess.Popen]:
    """``torchrun --nnodes 2 --node-rank r --nproc-per-node 1 --rdzv-backend c10d`` for r = 0, 1 (own sessions)."""
    port = _free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", rdzv_id, "--local-addr", "127.0.0.1", "--max-restarts", "1",
               "-m", "mert.cli", "pretrain", str(corpus), "hash:8:1024", str(out), "--params", str(params),
               "--device", "cpu"]  # fmt: skip
        log = open(tmp / f"node{node}.log", "w")  # noqa: SIM115 - closed when the process is reaped
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=_node_env(tmp), stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))  # fmt: skip
    return procs


def _wait(procs: list[subprocess.Popen], tmp: Path, timeout: float = 600) -> str:
    """Wait for both nodes; kill their process groups if they overrun; return both logs."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    logs = "".join(f"--- node {i} ---\n" + (tmp / f"node{i}.log").read_text() for i in range(2))
    assert all(p.returncode == 0 for p in procs), logs[-6000:]
    return logs


def _rank_process(rdzv_id: str, rank: int):
    """The live worker process of ``rank`` in the torchrun job ``rdzv_id`` (found by its environment)."""
    import psutil

    for proc in psutil.process_iter():
        try:
            e = proc.environ()
        except (psutil.Error, OSError):
            continue
        if e.get("TORCHELASTIC_RUN_ID") == rdzv_id and e.get("RANK") == str(rank):
            return proc
    return None


@pytest.fixture(scope="module")
def reference(corpus_dir, tmp_path_factory) -> dict:
    """One process, uninterrupted, 2 accumulated micro-batches per step: the weights every layout must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    params = write_params(tmp / "params.yaml", tiny_profile(**PROFILE))
    run(pretrain_cmd(corpus_dir, tmp / "single", params), timeout=600)
    return ckpt.load_checkpoint(tmp / "single/checkpoints/step-00000010/checkpoint.pt")


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    unequal = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not unequal, f"{len(unequal)} tensors differ, e.g. {unequal[:3]}"
    assert a["train_state"] == b["train_state"]


def test_two_nodes_equal_one_process_bit_for_bit(corpus_dir, tmp_path, reference):
    params = write_params(tmp_path / "params.yaml", tiny_profile(**PROFILE))
    t0 = time.monotonic()
    _wait(_launch_nodes(corpus_dir, tmp_path / "run", params, tmp_path, f"equal-{os.getpid()}"), tmp_path)
    print(f"2 nodes x 1 rank, 10 steps: {time.monotonic() - t0:.0f} s")
    b = ckpt.load_checkpoint(tmp_path / "run/checkpoints/step-00000010/checkpoint.pt")
    assert (reference["config"]["world_size"], reference["config"]["grad_accum"]) == (1, 2)
    assert (b["config"]["world_size"], b["config"]["grad_accum"]) == (2, 1)
    _assert_same_weights(reference, b)


@pytest.mark.parametrize("victim", [1, 0], ids=["rank1-killed", "rank0-killed"])
def test_a_rank_killed_mid_run_restarts_the_group_and_resumes_exactly(corpus_dir, tmp_path, reference, victim):
    from mlflow.tracking import MlflowClient

    params = write_params(tmp_path / "params.yaml", tiny_profile(**PROFILE), tracker="mlflow", tracking_wait=60)
    out, rdzv_id = tmp_path / "run", f"kill{victim}-{os.getpid()}"
    t0 = time.monotonic()
    procs = _launch_nodes(corpus_dir, out, params, tmp_path, rdzv_id)
    killed_after = None
    deadline = time.monotonic() + 400
    while killed_after is None:  # after a checkpoint, once steps past it are journaled (and sent to MLflow)
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no point to kill at"
        done = [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")]
        rows = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []
        if done and rows and rows[-1]["step"] > done[-1] and rows[-1]["step"] < 9:
            proc = _rank_process(rdzv_id, victim)
            if proc is not None:
                proc.send_signal(signal.SIGKILL)
                killed_after = (done[-1], rows[-1]["step"])
        time.sleep(0.05)
    logs = _wait(procs, tmp_path)
    print(f"rank {victim} SIGKILLed after checkpoint {killed_after[0]} with step {killed_after[1]} journaled; "
          f"2 nodes, restart, 10 steps: {time.monotonic() - t0:.0f} s")  # fmt: skip
    assert "exitcode: -9" in logs and "will restart worker group" in logs
    assert logs.count("resumed from") == 2, logs[-4000:]  # both ranks, the same checkpoint
    _assert_same_weights(reference, ckpt.load_checkpoint(out / "checkpoints/step-00000010/checkpoint.pt"))

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    (run_,) = client.search_runs([client.get_experiment_by_name("mert-pretrain").experiment_id])
    assert run_.info.status == "FINISHED"
    for key, steps in (("train/loss/total", list(range(1, 11))), ("val/loss/total", [10])):
        counts = collections.Counter(m.step for m in client.get_metric_history(run_.info.run_id, key))
        assert sorted(counts) == steps and set(counts.values()) == {1}, (key, counts)
    (version,) = client.search_model_versions("name = 'test'")
    assert version.run_id == run_.info.run_id and version.tags["step"] == "10"
    assert str(client.get_registered_model("test").aliases["candidate"]) == str(version.version)
    journal = collections.Counter(
        (k, r["step"]) for r in read_jsonl(out / "metrics.jsonl") for k in r.keys() - {"step", "time_ms"}
    )
    assert max(journal.values()) == 1  # each (key, step) journaled once
    assert json.loads((out / "result.json").read_text())["registered_version"] == str(version.version)
