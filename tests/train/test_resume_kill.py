"""Resume after SIGKILL is exact: the final weights equal an uninterrupted run's bit for bit (CPU)."""

import signal
import subprocess
import time

import pytest
import torch

from mert.train import checkpoint as ckpt
from tests.train.conftest import tiny_profile
from tests.train.helpers import REPO, env, pretrain_cmd, run, write_params


@pytest.mark.slow  # 32-80 s per case on 2 loaded cores (3 subprocess runs)
@pytest.mark.parametrize("workers", [0, 2], ids=["prefetch-thread", "2-loader-processes"])
def test_sigkill_then_rerun_equals_uninterrupted(corpus_dir, tmp_path, workers):
    """The loader (thread or processes) is ahead of the step when the kill comes: the rerun restarts at the
    checkpoint's data position, not at what was prefetched."""
    prof = tiny_profile(max_steps=8, save_interval=2, keep_last=3, loader_prefetch=2, loader_workers=workers)
    params = write_params(tmp_path / "params.yaml", prof)
    run(pretrain_cmd(corpus_dir, tmp_path / "ref", params))

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        pretrain_cmd(corpus_dir, out, params), env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while ckpt.latest_checkpoint(out / "checkpoints") is None and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")]
    assert killed_at and killed_at[-1] < 8

    res = run(pretrain_cmd(corpus_dir, out, params))  # the same command again: resumes
    assert f"resumed from {out}/checkpoints/step-{killed_at[-1]:08d}" in res.stderr
    a = ckpt.load_checkpoint(tmp_path / "ref/checkpoints/step-00000008/checkpoint.pt")
    b = ckpt.load_checkpoint(out / "checkpoints/step-00000008/checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["train_state"] == b["train_state"]
