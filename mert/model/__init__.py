"""The MERT encoder (``MERT``), its config (``MERTConfig``) and output (``MERTOutput``).

``mert.model.hf`` loads and saves the released HF checkpoint layout; ``mert.model.extract`` turns audio
files into per-layer features (``mert extract``).
"""

from mert.model.config import PRESETS, ConfigError, MERTConfig
from mert.model.encoder import MERT, MERTOutput

__all__ = ["MERT", "MERTConfig", "MERTOutput", "PRESETS", "ConfigError"]
