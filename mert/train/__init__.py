"""MERT pretraining: profiles (``params``), data (``data``, ``labels``), the loop (``trainer``), checkpoints,
distributed setup, and the stage function :func:`pretrain` (``api``).
"""

from mert.train.api import pretrain

__all__ = ["pretrain"]
