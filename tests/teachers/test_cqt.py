"""The CQT target: MERT's nnAudio parameters, frame counts, FastCQT vs nnAudio parity, a librosa oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mert.teachers.cqt import (
    MERT_CQT,
    PARITY_TOLERANCE,
    FastCQT,
    ReferenceCQT,
    build_cqt,
    parity_errors,
)

SR = 24000


def _music(n: int, seed: int = 0) -> np.ndarray:
    """Harmonic notes across the CQT range (with vibrato) plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = np.zeros(n)
    for f0, amp in [(41.2, 0.4), (110.0, 0.3), (261.6, 0.3), (329.6, 0.2), (440.0, 0.25), (1318.5, 0.1)]:
        for h in range(1, 6):
            if f0 * h < 5000:
                x += amp / h * np.sin(2 * np.pi * f0 * h * t + 0.3 * np.sin(2 * np.pi * 5 * t) + rng.uniform(0, 6))
    return x + 0.02 * rng.standard_normal(n)


def _chirp(n: int) -> np.ndarray:
    """A 30 Hz -> 4.5 kHz exponential sweep."""
    t = np.arange(n) / SR
    dur = n / SR
    k = np.log(4500 / 30) / dur
    return 0.5 * np.sin(2 * np.pi * 30 * (np.exp(k * t) - 1) / k)


def _signals(n: int) -> torch.Tensor:
    """(3, n) float32: music-like, chirp, white noise."""
    noise = np.random.default_rng(1).uniform(-0.3, 0.3, n)
    return torch.tensor(np.stack([_music(n), _chirp(n), noise]), dtype=torch.float32)


@pytest.fixture(scope="module")
def fast() -> FastCQT:
    return build_cqt("fast")


@pytest.fixture(scope="module")
def ref() -> ReferenceCQT:
    return build_cqt("reference")


@pytest.fixture(scope="module")
def ref_out(ref):
    """Reference outputs by length (nnAudio is slow: compute each once)."""
    cache: dict[int, torch.Tensor] = {}

    def get(n: int) -> torch.Tensor:
        if n not in cache:
            cache[n] = ref(_signals(n))
        return cache[n]

    return get


def test_reference_parameters(ref):
    assert (MERT_CQT.sr, MERT_CQT.hop_length, MERT_CQT.fmin) == (24000, 320, 32.7)
    assert (MERT_CQT.n_bins, MERT_CQT.bins_per_octave, MERT_CQT.norm, MERT_CQT.window) == (336, 48, 1, "hann")
    cqt = ref.cqt
    assert (cqt.hop_length, cqt.center, cqt.pad_mode, cqt.output_format) == (320, True, "constant", "Magnitude")
    assert cqt.cqt_kernels_real.shape == (336, 1, 65536) and cqt.kernel_width == 65536
    freqs = np.asarray(cqt.frequencies)
    np.testing.assert_allclose(freqs, MERT_CQT.frequencies())
    assert freqs[0] == pytest.approx(32.7) and freqs[48] == pytest.approx(2 * 32.7)  # 48 bins per octave
    assert freqs[-1] == pytest.approx(32.7 * 2 ** (335 / 48))  # 7 octaves: ~4.19 kHz
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training


@pytest.mark.parametrize("seconds", [3.0, 5.0, 5.12, 30.0])
def test_fast_output_shapes(fast, seconds):
    n = int(round(seconds * SR))
    out = fast(torch.zeros(2, n))
    assert out.shape == (2, 336, n // 320 + 1) == (2, 336, MERT_CQT.n_frames(n))
    assert out.dtype == torch.float32 and out.is_contiguous()


def test_frame_counts_match_the_reference(ref, ref_out):
    assert MERT_CQT.n_frames(5 * SR) == 376  # the reference: 376 frames for 5 s
    assert ref(torch.zeros(1, 3 * SR)).shape == (1, 336, 226)
    for n in (5 * SR, int(5.12 * SR)):
        assert ref_out(n).shape == (3, 336, n // 320 + 1)


@pytest.mark.parametrize("n", [5 * SR, int(5.12 * SR), 7 * SR + 123, 1000])
def test_fast_matches_reference(fast, ref_out, n):
    """Music-like, chirp and noise; one FFT block (5, 5.12 s), two blocks (7 s), under one kernel width (1000)."""
    errors = parity_errors(fast(_signals(n)), ref_out(n))
    assert errors["max"] <= PARITY_TOLERANCE["max"], errors
    assert errors["mean"] <= PARITY_TOLERANCE["mean"], errors


def test_parity_check_detects_a_coarser_transform(ref_out):
    """The tolerance is tight enough to reject a visibly truncated spectrum (so the parity test can fail)."""
    n = int(5.12 * SR)
    coarse = FastCQT(threshold=3e-2)
    errors = parity_errors(coarse(_signals(n)), ref_out(n))
    assert errors["max"] > PARITY_TOLERANCE["max"]


def test_sine_peaks_at_a4_like_librosa(fast):
    librosa = pytest.importorskip("librosa")
    t = np.arange(3 * SR) / SR
    y = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    ours = fast(torch.from_numpy(y)[None])[0, :, 40:-40].mean(-1).numpy()  # (336,), away from the edges
    theirs = np.abs(librosa.cqt(y, sr=SR, hop_length=320, fmin=32.7, n_bins=336, bins_per_octave=48))
    theirs = theirs[:, 40:-40].mean(-1)
    peak = int(ours.argmax())
    assert peak == int(theirs.argmax()) == 180
    assert librosa.hz_to_note(MERT_CQT.frequencies()[peak]) == "A4"
    # nnAudio's "librosa" normalisation: same magnitude scale as librosa.cqt, same spectral shape
    assert ours[peak] == pytest.approx(theirs[peak], rel=0.02)
    assert np.corrcoef(ours, theirs)[0, 1] > 0.999


def test_cuda_contraction_path_equals_cpu_path(fast, monkeypatch):
    """The CUDA path (elementwise sums, TF32-proof) gives the CPU path's (bmm) output; checked here on CPU."""
    from mert.teachers import cqt

    x = _signals(2 * SR)
    expected = fast(x)
    original, calls = cqt._contract, []

    def elementwise(coefs, x, use_matmul):
        calls.append(use_matmul)
        return original(coefs, x, use_matmul=False)

    monkeypatch.setattr(cqt, "_contract", elementwise)
    torch.testing.assert_close(fast(x), expected, rtol=0, atol=1e-6 * float(expected.max()))
    assert calls and all(calls)  # on CPU the module asked for bmm; we forced the CUDA path


def test_batch_equals_per_item(fast):
    x = _signals(int(2.5 * SR))
    batched = fast(x)
    single = torch.cat([fast(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-6 * float(batched.max()))


def test_frozen_and_gradient_free(fast):
    assert list(fast.parameters()) == [] and not fast.training
    assert all(not b.requires_grad for b in fast.buffers())
    assert fast.state_dict() == {}  # derived constants only: rebuilt from nnAudio's kernels, never stored
    wav = torch.randn(1, SR, requires_grad=True)
    assert not fast(wav).requires_grad


def test_autocast_does_not_lower_precision(fast):
    """Training runs the teacher next to bf16 autocast: the target must stay fp32-exact."""
    x = _signals(SR)
    expected = fast(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6 * float(expected.max()))


def test_input_checks_and_dtypes(fast):
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        fast(torch.zeros(SR))
    out64 = fast(torch.from_numpy(_music(SR))[None])
    out32 = fast(torch.from_numpy(_music(SR)).float()[None])
    assert out64.dtype == torch.float32
    torch.testing.assert_close(out64, out32)
    with pytest.raises(ValueError, match="unknown CQT kind"):
        build_cqt("librosa")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_on_cuda_matches_cpu_reference(ref_out):
    n = 5 * SR
    out = build_cqt("fast", device="cuda")(_signals(n).cuda()).cpu()
    errors = parity_errors(out, ref_out(n))
    assert errors["max"] <= PARITY_TOLERANCE["max"], errors
