"""Label heads (cosine/NCE and softmax), CQT head and per-codebook CE/accuracy."""

import pytest
import torch
import torch.nn.functional as F

from mert.model.heads import CosineLabelHead, CQTHead, SoftmaxLabelHead, build_label_head, label_losses


def brute_force_nce(head: CosineLabelHead, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """fairseq ``compute_pred`` + ``compute_nce`` + CE(target 0), one codebook at a time, as in the reference."""
    K, F_ = head.n_codebooks, head.final_dim
    proj = head.final_proj(x).chunk(K, dim=-1)  # K x (N, F)
    embs = head.label_embs_concat.split(head.codebook_size, 0)  # K x (C, F)
    losses = []
    for k in range(K):
        pos = embs[k][targets[:, k]]  # (N, F)
        negs = embs[k].unsqueeze(1).expand(-1, x.shape[0], -1)  # (C, N, F)
        neg_is_pos = (pos == negs).all(-1)  # (C, N)
        cand = torch.cat([pos.unsqueeze(0), negs], dim=0)  # (C+1, N, F)
        logits = torch.cosine_similarity(proj[k].float(), cand.float(), dim=-1) / head.logit_temp  # (C+1, N)
        logits[1:][neg_is_pos] = float("-inf")
        logits = logits.transpose(0, 1)  # (N, C+1)
        losses.append(F.cross_entropy(logits, logits.new_zeros(x.shape[0], dtype=torch.long)))
    assert F_ == proj[0].shape[-1]
    return torch.stack(losses)


def test_nce_head_equals_brute_force_reference():
    head = CosineLabelHead(dim=12, n_codebooks=3, codebook_size=7, final_dim=5, logit_temp=0.1)
    x = torch.randn(20, 12)
    targets = torch.randint(0, 7, (20, 3))
    logits = head(x)  # (K, N, C)
    assert logits.shape == (3, 20, 7)
    for k in range(3):
        pk = head.final_proj(x)[:, k * 5 : (k + 1) * 5]
        ek = head.label_embs_concat[k * 7 : (k + 1) * 7]
        for n in (0, 7, 19):
            for c in range(7):
                want = torch.cosine_similarity(pk[n], ek[c], dim=0) / 0.1
                torch.testing.assert_close(logits[k, n, c], want, atol=1e-5, rtol=1e-5)
    ce, _ = label_losses(logits, targets)
    torch.testing.assert_close(ce, brute_force_nce(head, x, targets), atol=1e-5, rtol=1e-5)


def test_cosine_logits_bounded_by_inverse_temperature_and_scale_invariant():
    head = CosineLabelHead(dim=8, n_codebooks=2, codebook_size=50, final_dim=4, logit_temp=0.1)
    x = torch.randn(64, 8) * 100
    logits = head(x)
    assert logits.abs().max() <= 10.0 + 1e-4
    # Pointing the projection at one label embedding reaches the bound.
    with torch.no_grad():
        head.final_proj.weight.zero_()
        head.final_proj.bias.copy_(torch.cat([head.label_embs_concat[3], head.label_embs_concat[50 + 9]]))
    out = head(torch.randn(2, 8))
    torch.testing.assert_close(out[0, :, 3], torch.full((2,), 10.0))
    torch.testing.assert_close(out[1, :, 9], torch.full((2,), 10.0))


def test_label_embeddings_shape_and_uniform_init():
    head = CosineLabelHead(dim=16, n_codebooks=8, codebook_size=1024, final_dim=64)
    assert head.label_embs_concat.shape == (8 * 1024, 64)
    assert head.final_proj.weight.shape == (64 * 8, 16)
    e = head.label_embs_concat
    assert e.min() >= 0 and e.max() < 1 and abs(e.mean().item() - 0.5) < 0.01


def test_accuracy_per_codebook():
    # logits (K=2, N=4, C=3) with known argmax; codebook 0 gets 3/4 right, codebook 1 gets 1/4.
    argmax = torch.tensor([[0, 1, 2, 2], [1, 1, 1, 1]])
    logits = F.one_hot(argmax, 3).float() * 5.0
    targets = torch.tensor([[0, 1, 2, 0], [0, 1, 0, 2]]).t()  # (N, K)
    ce, acc = label_losses(logits, targets)
    torch.testing.assert_close(acc, torch.tensor([0.75, 0.25]))
    want = torch.stack([F.cross_entropy(logits[k], targets[:, k]) for k in range(2)])
    torch.testing.assert_close(ce, want)


def test_softmax_head_is_a_linear_classifier():
    head = SoftmaxLabelHead(dim=6, n_codebooks=2, codebook_size=5)
    x = torch.randn(3, 6)
    logits = head(x)
    assert logits.shape == (2, 3, 5)
    torch.testing.assert_close(logits[1], head.classifier(x)[:, 5:])


def test_cqt_head_and_builder():
    assert CQTHead(32)(torch.randn(4, 32)).shape == (4, 336)
    assert isinstance(build_label_head("nce", 8, 2, 4, 3, 0.1), CosineLabelHead)
    assert isinstance(build_label_head("softmax", 8, 2, 4, 3, 0.1), SoftmaxLabelHead)
    with pytest.raises(ValueError, match="unknown head"):
        build_label_head("mlp", 8, 2, 4, 3, 0.1)
