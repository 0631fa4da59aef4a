"""The MERT encoder (``MERT``), its config (``MERTConfig``) and output (``MERTOutput``).

``mert.model.hf`` loads and saves the released HF checkpoint layout; ``mert.model.extract`` turns audio
files into per-layer features (``mert extract``). Exports are lazy so that ``mert.model.commands`` (the CLI)
imports without torch.
"""

import importlib

_EXPORTS = {
    "MERT": "mert.model.encoder",
    "MERTOutput": "mert.model.encoder",
    "MERTConfig": "mert.model.config",
    "PRESETS": "mert.model.config",
    "ConfigError": "mert.model.config",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mert.model' has no attribute {name!r}")
