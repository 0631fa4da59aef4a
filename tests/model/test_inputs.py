"""The HF call style: ``input_values`` / ``attention_mask`` padded batches, and input validation before compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mert import MERT, MERTConfig
from mert.model.encoder import normalize_waveform
from mert.model.inputs import normalize_padded

LENGTHS = [24_000, 15_000, 7_777, 400]  # the last: exactly one frame


def tiny(**kw) -> MERT:
    torch.manual_seed(0)
    return MERT(MERTConfig.from_name("mert-tiny", **kw)).eval()


def padded_batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    clips = [0.1 * torch.randn(n, generator=g) + 0.02 for n in lengths]  # a DC offset: normalisation matters
    x = torch.zeros(len(clips), max(lengths))
    m = torch.zeros(len(clips), max(lengths), dtype=torch.long)
    for i, c in enumerate(clips):
        x[i, : len(c)], m[i, : len(c)] = c, 1
    x[:, :][m == 0] = 0.5  # padding that is not zero must not matter either
    return clips, x, m


@pytest.mark.parametrize("stable", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "autograd"])
def test_padded_clip_equals_the_clip_alone(stable, normalize, grad):
    """Each clip of a right-padded batch gets the features it gets alone (1e-4), its padded frames are zero."""
    model = tiny(do_stable_layer_norm=stable, do_normalize=normalize)
    clips, x, m = padded_batch(LENGTHS)
    with torch.set_grad_enabled(grad):
        out = model(input_values=x, attention_mask=m, output_hidden_states=True)
        assert out.last_hidden_state.shape == (4, model.config.num_frames(24_000), 32)
        assert len(out.hidden_states) == 3 and out.features.shape == (4, out.last_hidden_state.shape[1], 32)
        for i, clip in enumerate(clips):
            alone = model(clip[None], output_hidden_states=True)
            t = model.config.num_frames(len(clip))
            assert out.frame_mask[i].sum() == t and out.frame_mask[i, :t].all()
            for a, b in zip(out.hidden_states, alone.hidden_states):
                torch.testing.assert_close(a[i, :t], b[0], atol=1e-4, rtol=1e-4)
                assert not a[i, t:].any()
            torch.testing.assert_close(out.features[i, :t], alone.features[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out.last_hidden_state[i, :t], alone.last_hidden_state[0], atol=1e-4, rtol=1e-4)
            assert not out.last_hidden_state[i, t:].any() and not out.features[i, t:].any()


def test_without_the_mask_padding_changes_the_features():
    """What attention_mask is for: zero padding alone changes a clip's features (GroupNorm, attention)."""
    model = tiny()
    clips, x, m = padded_batch(LENGTHS[:2])
    x[m == 0] = 0.0
    with torch.no_grad():
        alone = model(clips[1][None]).last_hidden_state
        t = alone.shape[1]
        unmasked = model(x).last_hidden_state[1, :t]
        masked = model(x, attention_mask=m).last_hidden_state[1, :t]
    assert (unmasked - alone[0]).abs().max() > 1e-2
    torch.testing.assert_close(masked, alone[0], atol=1e-4, rtol=1e-4)


def test_full_attention_mask_is_the_plain_call():
    model = tiny()
    x = torch.randn(2, 9000)
    with torch.no_grad():
        a = model(x, output_hidden_states=True)
        b = model(input_values=x, attention_mask=torch.ones(2, 9000, dtype=torch.bool), output_hidden_states=True)
    assert b.frame_mask is None and a.frame_mask is None
    for u, v in zip(a.hidden_states, b.hidden_states):
        assert torch.equal(u, v)


def test_numpy_input_and_bool_or_float_masks():
    model = tiny()
    clips, x, m = padded_batch(LENGTHS[:2])
    with torch.no_grad():
        ref = model(x, attention_mask=m).last_hidden_state
        for mask in (m.bool(), m.float(), m.numpy()):
            torch.testing.assert_close(model(x.numpy(), attention_mask=mask).last_hidden_state, ref)


def test_normalize_padded_ignores_the_padding():
    clips, x, m = padded_batch(LENGTHS[:3])
    y = normalize_padded(x, m.sum(1))
    for i, c in enumerate(clips):
        torch.testing.assert_close(y[i, : len(c)], normalize_waveform(c[None])[0], atol=1e-5, rtol=1e-5)
        assert not y[i, len(c) :].any()


def _no_compute(model: MERT) -> None:
    def fail(*_):
        raise AssertionError("the model computed on an invalid input")

    model.feature_extractor.register_forward_pre_hook(fail)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: torch.randn(1, 300), r"300 samples is too short.*24 kHz.*\(batch, samples\).*at least 400"),
        (lambda: torch.randn(24_000, 2), r"channel-last \(samples, channels\).*soundfile.read.*\(batch, samples\)"),
        (lambda: np.random.randn(24_000, 2).astype(np.float32), r"channel-last"),
        (lambda: torch.randn(24_000), r"1-D tensor.*wav\[None\]"),
        (lambda: torch.randn(2, 1, 24_000), r"shape \(2, 1, 24000\).*mono.*squeeze the channel axis"),
        (lambda: torch.zeros(1, 24_000, dtype=torch.int16), r"torch.int16 samples.*1/32768"),
        (lambda: torch.zeros(0, 24_000), r"empty batch"),
        (lambda: [0.0] * 24_000, r"got a list"),
    ],
    ids=["too-short", "channel-last", "channel-last-numpy", "1-D", "3-D", "int16", "empty", "list"],
)
def test_bad_input_is_a_value_error_before_any_compute(make, match):
    model = tiny()
    _no_compute(model)
    with pytest.raises(ValueError, match=match):
        model(make())


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (lambda m: m[:, :-1], r"attention_mask shape .* != input shape"),
        (lambda m: m.flip(1), r"right padding"),
        (lambda m: m * 2, r"only 0 and 1"),
        (lambda m: torch.cat([m[:1], torch.zeros_like(m[1:])]).index_fill(1, torch.arange(399), 1), r"clip 1: 399"),
    ],
    ids=["shape", "left-padding", "values", "too-short-clip"],
)
def test_bad_attention_mask_is_a_value_error_before_any_compute(mask, match):
    model = tiny()
    _no_compute(model)
    _, x, m = padded_batch(LENGTHS[:2])
    with pytest.raises(ValueError, match=match):
        model(input_values=x, attention_mask=mask(m))


def test_wav_and_input_values_together_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match="not both"):
        model(torch.randn(1, 1000), input_values=torch.randn(1, 1000))
