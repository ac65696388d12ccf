"""Model configuration shared by the GPT and every attention variant."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

#: the attention variants, in the registry's order (racli_models.attention.ATTENTION)
ATTENTION_NAMES = ("baseline", "ra_v5", "ra_v5_untied", "ra_beta", "sdpa_gate")
#: the variants that split the head dim D = D_std + R (`ra_rank`); the others ignore ra_rank
RANKED = ("ra_v5", "ra_v5_untied")


class UnknownAttentionError(ValueError):
    """An attention name that is not in the registry."""

    def __init__(self, name: object):
        self.name = name
        valid = ", ".join(sorted(ATTENTION_NAMES))
        super().__init__(f"unknown attention {name!r} (valid: {valid})")


def check_attention_name(name: object) -> None:
    """Raise UnknownAttentionError unless `name` is a registered variant."""
    if not isinstance(name, str) or name not in ATTENTION_NAMES:
        raise UnknownAttentionError(name)


@dataclass
class GPTConfig:
    """Shape and options of a GPT-2 style model (defaults: a tiny test model).

    `attn` names an attention variant of `racli_models.ATTENTION`; `ra_rank` is
    the rank R of the reciprocal path of the RA variants (`RANKED`: the head dim D
    is split D = D_std + R, so they need 0 < R < D; the others take any R > 0);
    `w_std_init` / `w_rec_init` are the initial per-head gates of
    the RA variants. `fused_loss` drops the logits from
    the training forward's result: on CUDA both settings compute the loss with
    `racli_models.loss.lm_head_loss` (one-pass kernel, gradient in the forward);
    elsewhere `fused_loss` uses `linear_cross_entropy` (chunked, never all the
    logits) instead of the LM head's logits and `F.cross_entropy`: same loss and
    gradients up to float rounding.
    """

    vocab_size: int = 256
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    dropout: float = 0.0
    attn: str = "baseline"
    ra_rank: int = 4
    bias: bool = False
    w_std_init: float = 1.0
    w_rec_init: float = 0.1
    fused_loss: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.ra_rank, bool) or not isinstance(self.ra_rank, numbers.Integral):
            raise ValueError(f"ra_rank must be a positive integer, got {self.ra_rank!r}")
        if self.ra_rank <= 0 or (self.attn in RANKED and self.ra_rank >= self.head_dim):
            raise ValueError(
                f"ra_rank must satisfy 0 < ra_rank < head_dim ({self.head_dim}) for {self.attn}, "
                f"got {self.ra_rank!r}"
            )
        if not isinstance(self.fused_loss, bool):
            raise ValueError(f"fused_loss must be true or false, got {self.fused_loss!r}")
        check_attention_name(self.attn)

    @property
    def head_dim(self) -> int:
        """D = n_embd / n_head."""
        return self.n_embd // self.n_head

    @classmethod
    def for_block(cls, heads: int, head_dim: int, seq: int, attn: str, **kw) -> GPTConfig:
        """Config of a single attention block of shape (heads, head_dim, seq), for benchmarks."""
        kw.setdefault("n_layer", 1)
        return cls(n_head=heads, n_embd=heads * head_dim, block_size=seq, attn=attn, **kw)
