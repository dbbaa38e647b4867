"""cissl: class-imbalanced semi-supervised learning on PyTorch (SeMi and baselines)."""

from cissl.errors import CheckpointError, CisslError, ConfigError, DataError

__version__ = "0.1.0"
__all__ = ["CisslError", "ConfigError", "DataError", "CheckpointError", "__version__"]
