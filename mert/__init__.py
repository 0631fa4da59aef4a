"""mert: MERT-style music foundation models, from raw audio to probe scores.

The public face is ``from mert import MERT, MERTConfig`` (the encoder and its config);
everything else lives in subpackages: ``mert.data`` (demo corpus, ingestion, shards),
``mert.teachers``, ``mert.model``, ``mert.train``, ``mert.probe``, and ``mert.stages``
(the pipeline's stage functions, called by the CLI, DVC and Prefect alike).
"""

__version__ = "0.1.0"
__all__ = ["MERT", "MERTConfig"]


def __getattr__(name: str):
    # Lazy: `import mert` stays cheap (no torch import) for the CLI and the data layer.
    if name in __all__:
        from mert import model

        return getattr(model, name)
    raise AttributeError(f"module 'mert' has no attribute {name!r}")
