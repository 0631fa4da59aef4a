"""pred_nomask_weight (fairseq HuBERT's option, 0 in the reference): the loss on unmasked frames, added on request."""

import pytest
import torch

from tests.model.test_pretraining import C, batch, tiny


def test_zero_weight_is_the_reference_loss():
    wav, labels, cqt = batch()
    mask = tiny().sample_mask(2, 74, torch.Generator().manual_seed(1), "cpu")
    ref = tiny().eval()(wav, labels, cqt, mask=mask)
    zero = tiny(pred_nomask_weight=0.0).eval()(wav, labels, cqt, mask=mask)
    torch.testing.assert_close(zero.loss, ref.loss, rtol=0, atol=0)
    assert not any("nomask" in k for k in zero.metrics)


def test_unmasked_terms_are_added_with_their_weight_and_see_unmasked_targets():
    wav, labels, cqt = batch()
    mask = tiny().sample_mask(2, 74, torch.Generator().manual_seed(1), "cpu")
    ref = tiny().eval()(wav, labels, cqt, mask=mask)
    out = tiny(pred_nomask_weight=0.5).eval()(wav, labels, cqt, mask=mask)
    m = out.metrics
    want = ref.loss + 0.5 * (m["loss/rvq_ce_nomask"] + 1.0 * m["loss/cqt_mse_nomask"])
    torch.testing.assert_close(out.loss.detach(), want.detach())
    other = labels.clone()  # changing only the unmasked frames' targets now changes the loss
    other.transpose(1, 2)[:, :74][~mask] = (other.transpose(1, 2)[:, :74][~mask] + 1) % C
    assert not torch.equal(tiny(pred_nomask_weight=0.5).eval()(wav, other, cqt, mask=mask).loss, out.loss)
    with pytest.raises(ValueError, match="pred_nomask_weight"):
        tiny(pred_nomask_weight=-1.0)
