"""fedctl: federated-learning research toolkit for speech and language models."""

__version__ = "0.1.0"
