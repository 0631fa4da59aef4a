"""The reference optimiser and schedule: Adam (decoupled weight decay) + linear warmup + polynomial decay.

fairseq's ``adam`` (betas 0.9/0.98, eps 1e-6, weight_decay 0.01 applied as ``p -= lr * wd * p``, i.e. AdamW) and
``polynomial_decay`` (``lr = peak * step / warmup`` during warmup, then
``end + (peak - end) * (1 - (step - warmup) / (total - warmup)) ** power``).
"""

from __future__ import annotations

import torch
from torch import nn

from mert.train.params import Profile


def build_optimizer(model: nn.Module, p: Profile) -> torch.optim.Optimizer:
    """AdamW over every trainable parameter (fairseq decays all of them, norms and biases included)."""
    params = [q for q in model.parameters() if q.requires_grad]
    return torch.optim.AdamW(params, lr=p.lr, betas=p.betas, eps=p.eps, weight_decay=p.weight_decay)


def lr_factor(step: int, p: Profile) -> float:
    """Multiplier of the peak LR for the ``step``-th update (0-based): warmup, then polynomial decay."""
    if p.warmup_steps > 0 and step < p.warmup_steps:
        return (step + 1) / p.warmup_steps
    span = max(1, p.max_steps - p.warmup_steps)
    frac = min(1.0, (step - p.warmup_steps) / span)
    end = p.end_lr / p.lr if p.lr > 0 else 0.0
    return end + (1.0 - end) * (1.0 - frac) ** p.lr_power


def build_scheduler(optimizer: torch.optim.Optimizer, p: Profile) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :func:`lr_factor` (its state is just the step count)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, p))
