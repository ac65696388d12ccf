"""ra: a command-line laboratory for attention variants (the CLI and its store)."""

__version__ = "0.1.0"  # keep in step with pyproject.toml
