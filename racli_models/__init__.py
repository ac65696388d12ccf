"""Attention variants, the GPT that hosts them, and the registry (no CLI, no database).

from racli_models import ATTENTION, GPT, GPTConfig, build_attention, UnknownAttentionError
from racli_models import composed_once  # reuse RA's composed weight while weights are fixed
"""

from .attention import ATTENTION, UnknownAttentionError, build_attention, composed_once
from .config import GPTConfig
from .gpt import GPT

__all__ = [
    "ATTENTION",
    "GPT",
    "GPTConfig",
    "UnknownAttentionError",
    "build_attention",
    "composed_once",
]
