"""2 CPU ranks (gloo, torchrun) equal 1 process with the same global batch (2 accumulated micro-batches).

Dropout, layerdrop, masks, the noise mixture and crops are all seeded per (step, micro-batch slot), so they stay
on in this test: both layouts draw the same randomness for the same clips.
"""

import pytest
import torch

from mert.train import checkpoint as ckpt
from tests.train.conftest import tiny_profile
from tests.train.helpers import pretrain_cmd, run, write_params


@pytest.mark.slow  # 35-95 s on 2 loaded cores (3 torch processes, each builds the CQT)
def test_two_gloo_ranks_equal_single_process(corpus_dir, tmp_path):
    # micro 2 clips of 0.4 s; the step is 1.6 s of audio: 2 ranks x 1 micro-batch or 1 rank x 2 accumulated.
    prof = tiny_profile(max_steps=3, save_interval=3, batch_seconds=1.6, loader_prefetch=0)
    params = write_params(tmp_path / "params.yaml", prof)
    run(pretrain_cmd(corpus_dir, tmp_path / "single", params))
    run(pretrain_cmd(corpus_dir, tmp_path / "ddp", params, nproc=2))
    a = ckpt.load_checkpoint(tmp_path / "single/checkpoints/step-00000003/checkpoint.pt")
    b = ckpt.load_checkpoint(tmp_path / "ddp/checkpoints/step-00000003/checkpoint.pt")
    assert (a["config"]["world_size"], a["config"]["grad_accum"]) == (1, 2)
    assert (b["config"]["world_size"], b["config"]["grad_accum"]) == (2, 1)
    assert a["train_state"] == b["train_state"]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow  # 60-180 s on 2 loaded cores
def test_fsdp_two_ranks_resume_equals_single_process(corpus_dir, tmp_path):
    """FSDP2 on 2 gloo ranks: 2 steps, then the same command resumes to 4; equals 1 process run to 4."""
    prof = tiny_profile(max_steps=4, save_interval=2, batch_seconds=1.6, loader_prefetch=0, parallel="fsdp")
    params = write_params(tmp_path / "params.yaml", prof)
    fsdp = pretrain_cmd(corpus_dir, tmp_path / "fsdp", params, nproc=2)
    run([*fsdp, "--max-steps", "2"])
    res = run(fsdp)
    assert "resumed from" in res.stderr
    run(pretrain_cmd(corpus_dir, tmp_path / "single", params))
    a = ckpt.load_checkpoint(tmp_path / "single/checkpoints/step-00000004/checkpoint.pt")
    b = ckpt.load_checkpoint(tmp_path / "fsdp/checkpoints/step-00000004/checkpoint.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    assert (tmp_path / "fsdp/export/model.safetensors").exists()
