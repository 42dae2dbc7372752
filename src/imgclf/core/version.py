"""imgclf's version: the one place it is written (pyproject.toml reads it; checkpoints, exports and `imgclf env`
record it)."""

__version__ = "0.1.0"
