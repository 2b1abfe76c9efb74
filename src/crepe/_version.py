"""crepe's version, where every layer may read it (pyproject.toml states the same)."""

__version__ = "0.1.0"
