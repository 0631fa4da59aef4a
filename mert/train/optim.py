"""The reference optimiser and schedule: Adam (decoupled weight decay) + linear warmup + polynomial decay.

fairseq's ``adam`` (betas 0.9/0.98, eps 1e-6, weight_decay 0.01 applied as ``p -= lr * wd * p``, i.e. AdamW) and
``polynomial_decay`` (``lr = peak * step / warmup`` during warmup, then
``end + (peak - end) * (1 - (step - warmup) / (total - warmup)) ** power``).

Changing ``max_steps`` of an existing run (``mert pretrain ... --max-steps N`` on a finished or interrupted run)
re-plans the decay: from the step the run resumes at, the LR is the one a run planned for ``N`` steps from the start
would have there (warmup unchanged; the decay now reaches ``end_lr`` at step ``N``). This is what fairseq's
``polynomial_decay`` does when ``--max-update`` is raised on resume. For a finished run (LR at ``end_lr``) the LR
therefore steps up to ``lr_factor(old_max, N) * lr`` and decays linearly to ``end_lr`` at ``N``. The trainer logs the
jump, and ``run.json``'s ``schedule`` records each plan and the step it took effect.
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
    """Multiplier of the peak LR for the ``step``-th update (0-based): warmup, then polynomial decay to ``max_steps``.

    A function of the step and the current plan only, so an extended run follows the re-planned decay (module
    docstring).
    """
    if p.warmup_steps > 0 and step < p.warmup_steps:
        return (step + 1) / p.warmup_steps
    span = max(1, p.max_steps - p.warmup_steps)
    frac = min(1.0, (step - p.warmup_steps) / span)
    end = p.end_lr / p.lr if p.lr > 0 else 0.0
    return end + (1.0 - end) * (1.0 - frac) ** p.lr_power


def build_scheduler(optimizer: torch.optim.Optimizer, p: Profile) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :func:`lr_factor` (its state is just the step count)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, p))
