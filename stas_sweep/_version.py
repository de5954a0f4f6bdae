"""The package's version (pyproject.toml's), importable by every part without loading the others."""

__version__ = "0.1.0"
