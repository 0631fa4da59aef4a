"""Feature extraction: chunk planning, long-audio stitching, the library function and ``mert extract``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mert import MERT, MERTConfig
from mert.cli import main
from mert.model.extract import ExtractOptions, encode_long, extract_features, plan_chunks
from tests.conftest import noise, sine

CFG = MERTConfig.from_name("mert-tiny")


@pytest.mark.parametrize("seconds", [0.02, 4.0, 30.0, 30.01, 61.3, 600.0])
@pytest.mark.parametrize(("chunk", "overlap"), [(30.0, 5.0), (10.0, 0.0), (5.0, 2.5)])
def test_chunks_tile_the_whole_clip_frames(seconds, chunk, overlap):
    n = int(seconds * 24000)
    chunks = plan_chunks(n, CFG, chunk, overlap)
    covered = np.concatenate([np.arange(c.frame_offset + c.keep_from, c.frame_offset + c.keep_to) for c in chunks])
    assert np.array_equal(covered, np.arange(CFG.num_frames(n)))
    for c in chunks:
        assert c.start % 320 == 0 and c.start + c.length <= n
        assert c.length <= chunk * 24000 + 320 or len(chunks) == 1
        assert 0 <= c.keep_from < c.keep_to <= CFG.num_frames(c.length)
    assert chunks[-1].start + chunks[-1].length == n


def test_bad_overlap_rejected():
    with pytest.raises(ValueError, match="overlap_seconds"):
        plan_chunks(10**6, CFG, 5.0, 5.0)


@pytest.fixture(scope="module")
def model() -> MERT:
    torch.manual_seed(0)
    return MERT(CFG).eval()


def test_short_clip_is_one_window_and_exact(model):
    wav = torch.from_numpy(noise(3.0))
    with torch.no_grad():
        whole = torch.stack(model(wav[None], output_hidden_states=True).hidden_states)[:, 0]
    torch.testing.assert_close(encode_long(model, wav), whole)


def test_long_audio_chunked_close_to_whole_clip_and_bounded(model):
    wav = torch.from_numpy(sine(12.0, freq=220.0) + noise(12.0, amp=0.05))
    with torch.no_grad():
        whole = model(wav[None], output_hidden_states=True).last_hidden_state[0]
    seen = []
    hook = model.feature_extractor.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[-1]))
    try:
        chunked = encode_long(model, wav, layers=[-1], chunk_seconds=4.0, overlap_seconds=1.0)[0]
    finally:
        hook.remove()
    assert chunked.shape == whole.shape
    assert max(seen) <= 4 * 24000 + 320  # no forward pass saw more than one window
    cos = torch.nn.functional.cosine_similarity(chunked, whole, dim=-1)
    assert cos.min() > 0.9  # GroupNorm / context differ per window, but only slightly
    assert not torch.equal(chunked, whole)


def test_extract_cli_with_corrupt_file(tmp_path, write_audio):
    write_audio("in/a.wav", sine(2.0))
    write_audio("in/sub/b.flac", noise(1.5, sr=16000), sr=16000)
    write_audio("in/long.wav", noise(7.0, seed=3))
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    out = tmp_path / "out"
    rc = main(
        [
            "extract",
            str(tmp_path / "in"),
            "-o",
            str(out),
            "-m",
            "mert-tiny",
            "--pooling",
            "both",
            "--chunk-seconds",
            "3",
            "--overlap-seconds",
            "1",
            "--no-progress",
            "--layers",
            "0,-1",
        ]
    )
    assert rc == 0
    mean = np.load(out / "a.mean.npy")
    frames = np.load(out / "sub" / "b.frames.npy")
    assert mean.shape == (2, 32) and frames.shape == (2, CFG.num_frames(int(1.5 * 24000)), 32)
    assert np.load(out / "long.frames.npy").shape == (2, CFG.num_frames(7 * 24000), 32)
    np.testing.assert_allclose(
        np.load(out / "long.frames.npy").mean(1), np.load(out / "long.mean.npy"), rtol=1e-4, atol=1e-5
    )
    summary = json.loads((out / "extract_summary.json").read_text())
    assert list(summary["failed"]) == [str(tmp_path / "in" / "broken.wav")]
    assert "not decodable" in summary["failed"][str(tmp_path / "in" / "broken.wav")]
    assert len(summary["written"]) == 3 and summary["layers"] == [0, 2]
    assert not list(out.rglob(".tmp-*"))


def test_extract_matches_direct_forward_and_skips_existing(tmp_path, write_audio, model):
    a = write_audio("a.wav", noise(2.0, seed=1), subtype="FLOAT")
    b = write_audio("b.wav", noise(2.0, seed=2), subtype="FLOAT")  # same length: batched with a
    out = tmp_path / "out"
    opts = ExtractOptions(fmt="safetensors", pooling="both", batch_size=2)
    s = extract_features(model, [a, b], out, opts, progress=False)
    assert len(s.written) == 2 and not s.failed
    from safetensors.numpy import load_file

    got = load_file(str(out / "b.safetensors"))
    wav = torch.from_numpy(noise(2.0, seed=2))[None]
    with torch.no_grad():
        ref = torch.stack(model(wav, output_hidden_states=True).hidden_states)[:, 0].numpy()
    np.testing.assert_allclose(got["frames"], ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got["mean"], ref.mean(1), atol=1e-5, rtol=1e-5)
    again = extract_features(model, [a, b], out, opts, progress=False)
    assert not again.written and len(again.skipped_existing) == 2


def test_silent_file_is_reported_as_silent_not_failed(tmp_path, write_audio, capsys):
    write_audio("in/ok.wav", noise(1.0))
    write_audio("in/quiet.wav", np.zeros(24000, np.float32))
    rc = main(["extract", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", "mert-tiny", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "1 silent (skipped), 0 failed" in out and "quiet.wav: silent (digital silence: every sample is 0)" in out
    assert "-inf" not in out and "unreadable" not in out
    summary = json.loads((tmp_path / "out" / "extract_summary.json").read_text())
    assert summary["failed"] == {} and list(summary["silent"]) == [str(tmp_path / "in" / "quiet.wav")]
