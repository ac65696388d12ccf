"""Attention variants, the GPT that hosts them, and the registry (no CLI, no database).

from racli_models import ATTENTION, GPT, GPTConfig, build_attention, UnknownAttentionError
from racli_models import composed_once  # reuse RA's composed weight while weights are fixed
from racli_models import linear_cross_entropy  # the LM head's loss without full logits
"""

from .attention import ATTENTION, build_attention, composed_once
from .config import GPTConfig, UnknownAttentionError
from .gpt import GPT
from .loss import linear_cross_entropy

__all__ = [
    "ATTENTION",
    "GPT",
    "GPTConfig",
    "UnknownAttentionError",
    "build_attention",
    "composed_once",
    "linear_cross_entropy",
]
