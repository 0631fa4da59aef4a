"""MERT pretraining: profiles (``params``), data (``data``, ``labels``), the loop (``trainer``), checkpoints,
distributed setup, and the stage function :func:`pretrain` (``api``).

The export is lazy so that the CLI (``mert.train.commands``) and ``mert.train.params`` import without torch.
"""

__all__ = ["pretrain"]


def __getattr__(name: str):
    if name == "pretrain":
        from mert.train.api import pretrain

        return pretrain
    raise AttributeError(f"module 'mert.train' has no attribute {name!r}")
