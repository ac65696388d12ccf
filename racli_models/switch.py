"""A module's setting changed inside a `with` block and restored after it."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def setting(module: str, name: str, value) -> Iterator[None]:
    """Inside the block the global `name` of the module named `module` is `value`."""
    owner = sys.modules[module]
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)
