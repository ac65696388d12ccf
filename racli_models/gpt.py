"""A GPT-2 language model (nanoGPT layout) with a pluggable attention variant."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from . import gelu_mm
from .attention import INIT_STD, build_attention, composed_once
from .config import GPTConfig
from .loss import linear_cross_entropy, lm_head_loss, use_kernel
from .switch import setting


class MLP(nn.Module):
    """x -> c_proj(gelu(c_fc(x))), hidden width 4C."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if gelu_mm.use_kernel(h, self.c_proj):  # GELU's backward inside dy W's GEMM
            return self.dropout(gelu_mm.gelu_proj(h, self.c_proj.weight))
        return self.dropout(self.c_proj(self.gelu(h)))


#: the residual stream as (B*T, C) rows between the blocks' GEMMs (False: as (B, T, C)).
#: The same values either way; flat, torch.compile writes the bf16 copy of each residual
#: gradient that the projections' backward GEMMs read in the layer norm's backward kernel,
#: rather than in a separate pass over the float32 gradient (docs/performance.md).
FLAT = True
#: compiled training saves each layer norm's input (which the residual stream writes
#: anyway) and row statistics, and recomputes the normalised output in the backward,
#: instead of saving that float32 output (`norm`): a write of B*T*C*4 bytes less a layer
#: norm (100 MB at GPT-2's batch)
LN_RECOMPUTE = True
#: how `norm` writes the layer norm out for the compiler: "var_mean" (as the compiler
#: decomposes F.layer_norm, autograd's backward through those operators), "two_pass"
#: (the mean, then the mean of the centred square: one row reduction fewer in that
#: backward) or "native" (var_mean's forward, torch's layer norm backward over the saved
#: input and statistics: the backward torch.compile runs without the recomputation)
LN_FORMS = ("var_mean", "two_pass", "native")
LN_FORM = "native"


def flat_residual(flat: bool = True) -> contextlib.AbstractContextManager[None]:
    """Inside the block `FLAT` is `flat`."""
    return setting(__name__, "FLAT", flat)


def ln_recompute(on: bool = True) -> contextlib.AbstractContextManager[None]:
    """Inside the block `LN_RECOMPUTE` is `on`."""
    return setting(__name__, "LN_RECOMPUTE", on)


def ln_form(form: str) -> contextlib.AbstractContextManager[None]:
    """Inside the block `LN_FORM` is `form` (one of LN_FORMS)."""
    if form not in LN_FORMS:
        raise ValueError(f"layer norm form {form!r}: one of {', '.join(LN_FORMS)}")
    return setting(__name__, "LN_FORM", form)


class _KnownRegion(logging.Filter):
    """Drops torch's one-time reminder that a selective checkpoint's region must hold no
    in-place operation: `_layer_norm`'s holds none."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "context_fn is passed to torch.utils.checkpoint" not in record.getMessage()


logging.getLogger("torch._higher_order_ops.wrap").addFilter(_KnownRegion())


def _save_stats(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Keep a layer norm's row statistics, recompute its pointwise ops in the backward."""
    if op in (
        torch.ops.aten.var_mean.correction,
        torch.ops.aten.mean.dim,
        torch.ops.aten.rsqrt.default,
    ):
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _written_out(x, weight, bias, eps: float, form: str) -> tuple[torch.Tensor, ...]:
    """(x - mean) rstd w + b, and the row mean and rstd, in `form`."""
    if form == "two_pass":
        mean = x.mean(-1, keepdim=True)
        xc = x - mean
        rstd = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + eps)
        y = xc * rstd
    else:
        var, mean = torch.var_mean(x, dim=-1, correction=0, keepdim=True)
        rstd = torch.rsqrt(var + eps)
        y = (x - mean) * rstd
    y = y if weight is None else y * weight
    return (y if bias is None else y + bias), mean, rstd


class _NativeBackward(torch.autograd.Function):
    """The layer norm written out (var_mean), with torch's own layer norm backward over
    the saved input and row statistics."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = _written_out(x, weight, bias, eps, "var_mean")
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:3])
        dx, dw, db = torch.ops.aten.native_layer_norm_backward(
            dy, x, [x.shape[-1]], mean, rstd, weight, bias, mask
        )
        return dx, dw, db, None


def _layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    """`ln(x)` written out, in `LN_FORM`: (x - mean) rstd w + b."""
    if LN_FORM == "native":
        return _NativeBackward.apply(x, ln.weight, ln.bias, ln.eps)
    return _written_out(x, ln.weight, ln.bias, ln.eps, LN_FORM)[0]


def norm(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """`ln(x)`; with `LN_RECOMPUTE` while torch.compile traces a grad-enabled float32 forward,
    under a selective checkpoint that saves x (written by the residual stream anyway) and
    the row statistics, and recomputes the normalised output in the backward."""
    if (
        LN_RECOMPUTE
        and x.dtype == torch.float32
        and torch.is_grad_enabled()
        and torch.compiler.is_compiling()
    ):
        ctx = partial(create_selective_checkpoint_contexts, _save_stats)
        return checkpoint(_layer_norm, x, ln, use_reentrant=False, context_fn=ctx)
    return ln(x)


class Block(nn.Module):
    """Pre-LayerNorm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).

    x is (B, T, C), or (B*T, C) rows with `shape` = (B, T, C) (the attention needs T);
    the result has x's shape."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = build_attention(cfg.attn, cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, shape: torch.Size | None = None) -> torch.Tensor:
        x = x + self.attn(norm(self.ln_1, x).view(shape or x.shape)).view(x.shape)
        return x + self.mlp(norm(self.ln_2, x))


def _normal(seed: int, name: str, shape: tuple[int, ...], std: float) -> torch.Tensor:
    """N(0, std) draws from a generator seeded by (seed, name) alone."""
    key = int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(key)
    return torch.randn(shape, generator=g) * std


def _attention_weights(seed: int, layer: str, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Initial weights of the attention parameters of `layer`, by parameter name.

    Every variant takes its weights from the same per-layer draws: q and k of shape
    (H, D, C), v of (C, C). The baseline's fused c_attn is [q | k | v]; the RA variants'
    standard W_q, W_k are the first D_std dims of each head's q, k (the dims that meet in
    their standard score), the untied variant's W_qr, W_kr the last R dims, and W_v is v.
    """
    H, D, C = cfg.n_head, cfg.head_dim, cfg.n_embd
    ds = D - cfg.ra_rank
    q, k = (_normal(seed, f"{layer}.attn.{n}", (H, D, C), INIT_STD) for n in ("q", "k"))
    v = _normal(seed, f"{layer}.attn.v", (C, C), INIT_STD)

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, C)

    std_q, std_k = rows(q[:, :ds]), rows(k[:, :ds])
    p = torch.linalg.qr(_normal(seed, f"{layer}.attn.P", (H, ds, cfg.ra_rank), 1.0)).Q
    return {
        "c_attn.weight": torch.cat([rows(q), rows(k), v]),
        "W_q": std_q, "W_qs": std_q, "W_k": std_k, "W_ks": std_k,
        "W_qr": rows(q[:, ds:]), "W_kr": rows(k[:, ds:]), "W_v": v, "P": p,
    }  # fmt: skip


class GPT(nn.Module):
    """GPT-2: token + position embeddings, n_layer blocks, final LayerNorm, tied LM head.

    Init (nanoGPT): every Linear and Embedding weight ~ N(0, 0.02), biases 0,
    and the residual projections (every `c_proj.weight`) ~ N(0, 0.02 / sqrt(2 n_layer))
    so the residual stream's variance does not grow with depth. The attention
    variants' own parameters keep the init their module documents (P orthonormal,
    gates constant).

    Pairing: each random weight is drawn from a generator seeded by (`seed`, its
    name), never from the global generator, so for one seed every parameter two
    variants share starts identical, whatever was built or drawn before
    (embeddings, MLPs, norms, c_proj, and the attention weights they have in
    common: see `_attention_weights`). `seed=None` takes `torch.initial_seed()`,
    the seed last given to `torch.manual_seed`.
    """

    def __init__(self, cfg: GPTConfig, seed: int | None = None):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(cfg.vocab_size, cfg.n_embd),
                "wpe": nn.Embedding(cfg.block_size, cfg.n_embd),
                "drop": nn.Dropout(cfg.dropout),
                "h": nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                "ln_f": nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
            }
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.init_weights(torch.initial_seed() if seed is None else seed)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Every random weight from (seed, name); biases 0; norms and gates as built."""
        cfg = self.config
        attn: dict[str, dict[str, torch.Tensor]] = {}
        for name, p in self.named_parameters():
            layer, _, leaf = name.partition(".attn.")
            if leaf and not leaf.startswith("c_proj."):
                if layer not in attn:
                    attn[layer] = _attention_weights(seed, layer, cfg)
                if leaf in attn[layer]:
                    p.copy_(attn[layer][leaf])
                    continue
            if p.dim() < 2:  # norms and gates keep their constant init; Linear biases start at 0
                if name.endswith("bias"):
                    p.zero_()
                continue
            std = INIT_STD
            if name.endswith("c_proj.weight"):  # residual projections
                std /= math.sqrt(2 * cfg.n_layer)
            p.copy_(_normal(seed, name, tuple(p.shape), std))

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, V), loss or None).

        loss = mean cross-entropy of logits[b, t] against targets[b, t] over all
        positions (targets are already shifted by the caller; -1 is ignored).
        On CUDA the LM head and its loss are one node with the loss's gradient
        computed in the forward (racli_models.loss.lm_head_loss); elsewhere the
        logits and F.cross_entropy. With `config.fused_loss` and targets given,
        the logits returned are None (off CUDA the loss is then computed chunk by
        chunk, never holding all the logits).
        """
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        shape = x.shape
        if FLAT:
            x = x.view(-1, shape[-1])
        for block in self.transformer.h:
            x = block(x, shape)
        x = norm(self.transformer.ln_f, x).view(shape)
        if targets is None:
            return self.lm_head(x), None
        h, t = x.reshape(-1, x.size(-1)), targets.reshape(-1)
        if use_kernel(x):
            loss, logits = lm_head_loss(h, self.lm_head.weight, t)
            return (None if self.config.fused_loss else logits.view(*x.shape[:-1], -1)), loss
        if self.config.fused_loss:
            return None, linear_cross_entropy(h, self.lm_head.weight, t)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), t, ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """idx (B, T) -> (B, T + max_new_tokens): each new token sampled from the model's
        next-token distribution given the last `block_size` tokens.

        The logits at the last position are divided by `temperature` (0: always the most
        likely token) and, with `top_k`, cut to the k most likely before the softmax.
        `generator` seeds the draws. Put the model in eval mode first (dropout). The
        weights are fixed meanwhile, so RA's composed weight is built once (composed_once).
        """
        with composed_once():
            for _ in range(max_new_tokens):
                context = idx[:, -self.config.block_size :]
                logits, _ = self(context)
                logits = logits[:, -1, :].float()
                if temperature == 0:
                    nxt = logits.argmax(dim=-1, keepdim=True)
                else:
                    logits = logits / temperature
                    if top_k is not None:
                        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                        logits = logits.masked_fill(logits < kth, -float("inf"))
                    probs = F.softmax(logits, dim=-1)
                    nxt = torch.multinomial(probs, num_samples=1, generator=generator)
                idx = torch.cat([idx, nxt], dim=1)
        return idx

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (the tied token embedding counted once).

        non_embedding=True leaves out the position embeddings; the token
        embedding stays in, since it is also the LM head's weight (nanoGPT).
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def gate_parameters(self) -> list[nn.Parameter]:
        """The per-head gate parameters of every layer (empty for baseline and sdpa_gate)."""
        return [p for block in self.transformer.h for p in block.attn.gate_parameters()]

    def gate_values(self) -> dict[int, dict[str, torch.Tensor]]:
        """Layer index -> gate name -> detached float32 per-head values (H,).

        Layers whose attention has no gates are left out, so a baseline model
        returns {}.
        """
        out = {}
        for i, block in enumerate(self.transformer.h):
            values = block.attn.gate_values()
            if values:
                out[i] = values
        return out

    def configure_optimizer(
        self,
        weight_decay: float,
        lr: float,
        betas: tuple[float, float],
        gate_lr_mult: float = 1.0,
        fused: bool | None = None,
    ) -> torch.optim.AdamW:
        """AdamW with up to three parameter groups, each tagged `name` and `lr_mult`.

        - "decay": every weight of 2+ dims (matrices, embeddings, P) with `weight_decay`;
        - "no_decay": biases and LayerNorm weights, weight decay 0;
        - "gates": `gate_parameters()`, weight decay 0, lr = lr * gate_lr_mult.
        A scheduler sets `group["lr"] = base_lr * group["lr_mult"]`. fused=None
        means fused on CUDA only. Empty groups are left out.
        """
        gate_ids = {id(p) for p in self.gate_parameters()}
        params = [p for p in self.parameters() if p.requires_grad]
        gates = [p for p in params if id(p) in gate_ids]
        decay = [p for p in params if id(p) not in gate_ids and p.dim() >= 2]
        no_decay = [p for p in params if id(p) not in gate_ids and p.dim() < 2]
        groups = [
            {"name": "decay", "params": decay, "weight_decay": weight_decay, "lr_mult": 1.0},
            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
            {"name": "gates", "params": gates, "weight_decay": 0.0, "lr_mult": float(gate_lr_mult)},
        ]
        groups = [g for g in groups if g["params"]]
        for g in groups:
            g["lr"] = lr * g["lr_mult"]
        if fused is None:
            fused = bool(params) and all(p.is_cuda for p in params)
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
