"""Causal self-attention variants and their registry.

Notation: x is the block input (B, T, C); H heads of head dim D = C / H; R is
the rank of the reciprocal path (cfg.ra_rank) and D_std = D - R. Every variant
maps (B, T, C) -> (B, T, C): input projection, causal attention, output
projection `c_proj`. Every softmax is causal and scaled by 1/sqrt(D), the
baseline's scale, so all variants see SDPA at the baseline's shape (B, H, T, D).

Nothing here syncs with the host or branches on data, so every module runs
eagerly, under `torch.compile(dynamic=False)` and under CUDA-graph capture, in
float32, bfloat16 and float16.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import flash4, fused
from .config import GPTConfig, check_attention_name

INIT_STD = 0.02  # nanoGPT's std for every projection weight
RMS_EPS = 1e-6  # epsilon of the parameter-free RMS norm of ra_beta


#: eager no-grad forwards of the folded-RA layers reuse W_f while the parameters are
#: unchanged (see `_FoldedRA._weight_once`); False: only inside `composed_once()`
REUSE = True
# module -> (key, W_f, b_f); weak keys, so a dropped module takes its entry along (and a
# new module at the same address cannot inherit it)
_STORE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ONCE_DEPTH = 0


@contextlib.contextmanager
def composed_once() -> Iterator[None]:
    """Inside this block each folded-RA layer composes W_f once and reuses it.

    For inference and evaluation with fixed weights: a no-grad forward of
    ra_v5 / ra_v5_untied then costs what the baseline's does (one GEMM, one
    SDPA call), since W_f depends on the parameters alone. With `REUSE` on (the
    default) every eager no-grad forward does this already; the block keeps it
    on where `REUSE` is off, and drops the stored weights at its end then. A
    stored W_f is used again only while grad mode is off, outside torch.compile
    tracing (and outside CUDA-graph capture, but for inside this block, whose
    weights are fixed by contract), with the same autocast dtype, and while
    every parameter keeps its storage and its version counter (an in-place
    update such as an optimizer step composes anew; a write through `.data` is
    not seen, so do not make one between no-grad forwards).
    """
    global _ONCE_DEPTH
    _ONCE_DEPTH += 1
    try:
        yield
    finally:
        _ONCE_DEPTH -= 1
        if _ONCE_DEPTH == 0 and not REUSE:
            _STORE.clear()


def _init_linears(module: nn.Module) -> None:
    """nanoGPT init for every nn.Linear inside `module`: N(0, 0.02) weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class CausalSelfAttention(nn.Module):
    """What every variant shares: head reshapes, the causal SDPA call, c_proj.

    `gate_names` names the per-head gate parameters (each of shape (H,)); a
    trainer gets them from `gate_parameters()` to give them their own learning
    rate, and reads their current values from `gate_values()`.
    """

    gate_names: tuple[str, ...] = ()

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.head_dim = cfg.head_dim
        self.dropout = cfg.dropout
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def gate_parameters(self) -> list[nn.Parameter]:
        return [getattr(self, name) for name in self.gate_names]

    def gate_values(self) -> dict[str, torch.Tensor]:
        """Gate name -> detached float32 copy of its per-head values, shape (H,)."""
        return {name: getattr(self, name).detach().float().clone() for name in self.gate_names}

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, H, T, D), a view (no copy)."""
        B, T, _ = t.shape
        return t.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(D) + causal mask) v over (B, H, T, D)."""
        p = self.dropout if self.training else 0.0
        if flash4.ACTIVE:
            if p:
                raise ValueError("sdpa_backend fa4 has no attention dropout (model.dropout 0)")
            return flash4.attention(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)

    def _attend_qkv(self, qkv: torch.Tensor) -> torch.Tensor:
        """`_attend` of the heads of one [q | k | v] projection (B, T, 3C), merged: (B, T, C).
        Under fa4 with `flash4.QKV` (no dropout): one operator whose backward returns the
        projection's gradient whole, with no concatenation of dq, dk and dv."""
        if flash4.ACTIVE and flash4.QKV and not (self.dropout and self.training):
            return flash4.attention_qkv(qkv, self.n_head)
        q, k, v = qkv.split(self.n_embd, dim=2)
        return self._merge(self._attend(self._heads(q), self._heads(k), self._heads(v)))

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, T, D) -> (B, T, C)."""
        B, _, T, _ = y.shape
        return y.transpose(1, 2).contiguous().view(B, T, self.n_embd)

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        return self.resid_dropout(self.c_proj(y))


class BaselineAttention(CausalSelfAttention):
    """Standard attention (nanoGPT): [q | k | v] = x W_attn^T, y = softmax(q k^T / sqrt(D)) v."""

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        _init_linears(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(self._attend_qkv(self.c_attn(x)))


class _FoldedRA(CausalSelfAttention):
    """RA in the folded layout: one composed GEMM, then one causal SDPA.

    Per head the query and key are D = D_std + R wide:
        Qf_i = [w_std * a_i | w_rec * b_i],   Kf_j = [c_j | d_j]
        Qf_i . Kf_j = w_std (a_i . c_j) + w_rec (b_i . d_j)
    where a, c (D_std wide) are the standard query/key and b, d (R wide) the
    reciprocal ones; subclasses define them. Since every block is linear in x,
    [Qf | Kf | V] = x W_f^T + b_f with W_f (3C x C) composed from the parameters
    by `folded_weight()` (cost independent of batch and sequence). The gates sit
    inside W_f and so receive gradients.
    """

    gate_names = ("w_std", "w_rec")
    #: the variant's name in `fused.folded_linear`, and the parameters W_f is composed from
    #: in the fused composition's order
    variant: str = ""
    composed_names: tuple[str, ...] = ()

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        self.has_bias = cfg.bias
        self.rank = cfg.ra_rank
        self.d_std = cfg.head_dim - cfg.ra_rank
        H = cfg.n_head
        # w_std starts at 1 (the standard path as in the baseline); w_rec starts
        # small (0.1): the model starts close to standard attention, yet the
        # reciprocal path already carries gradient to w_rec and to its weights.
        self.w_std = nn.Parameter(torch.full((H,), float(cfg.w_std_init)))
        self.w_rec = nn.Parameter(torch.full((H,), float(cfg.w_rec_init)))

    def folded_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def composed(self) -> list[torch.Tensor]:
        """The parameters W_f is composed from, in `composed_names`' order."""
        return [getattr(self, name) for name in self.composed_names]

    def _weight_once(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`folded_weight()`, or in an eager no-grad forward (`REUSE`, `composed_once()`)
        the W_f stored for these parameters."""
        # is_compiling() first: a traced graph then never reads (nor guards on) the store
        if torch.compiler.is_compiling() or torch.is_grad_enabled():
            return self.folded_weight()
        if not (REUSE or _ONCE_DEPTH):
            return self.folded_weight()
        params = [p for p in self._parameters.values() if p is not None]  # this module's own
        dev = params[0].device.type
        if not _ONCE_DEPTH and dev == "cuda" and torch.cuda.is_current_stream_capturing():
            return self.folded_weight()  # a graph must compose from the parameters it reads
        cast = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        key = (cast, tuple((p.data_ptr(), p._version, p.dtype) for p in params))
        hit = _STORE.get(self)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        W_f, b_f = self.folded_weight()
        _STORE[self] = (key, W_f, b_f)
        return W_f, b_f

    def folded_proj(self, x: torch.Tensor) -> torch.Tensor:
        """[Qf | Kf | V] (B, T, 3C) = x W_f^T + b_f: one GEMM with the composed weight."""
        if not self.has_bias and fused.overlapped(self.w_std):
            # the same x W_f^T as one node, whose backward composes beside dx's GEMM (b_f,
            # where there is one, is composed by torch operations: F.linear below)
            return fused.folded_linear(x, self.variant, *self.composed())
        W_f, b_f = self._weight_once()
        return F.linear(x, W_f, b_f)

    def folded_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Qf, Kf, V, each (B, H, T, D), from one GEMM with the composed weight."""
        qf, kf, v = self.folded_proj(x).split(self.n_embd, dim=2)
        return self._heads(qf), self._heads(kf), self._heads(v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._attend_qkv(self.folded_proj(x))  # softmax(Qf Kf^T / sqrt(D)) V, merged
        return self._out(y)

    def _fold(self, a, b, c, d, W_v):
        """Stack per-head blocks into the rows of W_f (or b_f).

        a, c: (H, D_std, ...); b, d: (H, R, ...); W_v: (C, ...). Returns (3C, ...)
        laid out head-major, [Qf | Kf | V], Qf_h = [w_std_h a_h ; w_rec_h b_h].
        """
        H, D = self.n_head, self.head_dim
        tail = a.shape[2:]
        gate = (H,) + (1,) * (a.dim() - 1)
        qf = torch.cat([self.w_std.view(gate) * a, self.w_rec.view(gate) * b], dim=1)
        kf = torch.cat([c, d], dim=1)
        return torch.cat([qf, kf, W_v.view(H, D, *tail)]).view(3 * self.n_embd, *tail)


class RAv5Attention(_FoldedRA):
    """Reciprocal attention v5, tied through a per-head projection P_h (D_std x R).

    With q_h = W_q,h x and k_h = W_k,h x (D_std wide per head):
        Qf_i = [w_std q_i | w_rec P^T k_i],   Kf_j = [k_j | P^T q_j]
        Qf_i . Kf_j = w_std (q_i . k_j) + w_rec (P^T k_i) . (P^T q_j)
    The second term is the rank-R projection of the transposed score S^T: the
    same W_q, W_k and P feed both sides, so it is not a re-parameterisation of
    standard attention. The rows of W_f are [w_std W_q ; w_rec P^T W_k] (Qf),
    [W_k ; P^T W_q] (Kf) and W_v, composed per head by two small einsums.

    Init: W_q, W_k, W_v ~ N(0, 0.02) as in nanoGPT. Each P_h has orthonormal
    columns (QR of a Gaussian matrix; entries of std ~ 1/sqrt(D_std)): P^T k is
    an orthogonal projection of k onto R directions, so each coordinate of
    P^T k and P^T q has the variance of a coordinate of k and q, and the
    reciprocal term starts on the standard term's per-coordinate scale.
    """

    variant = "ra_v5"
    composed_names = ("W_q", "W_k", "W_v", "P", "w_std", "w_rec")

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        H, C, R, Ds = cfg.n_head, cfg.n_embd, self.rank, self.d_std
        self.W_q = nn.Parameter(torch.empty(H * Ds, C))
        self.W_k = nn.Parameter(torch.empty(H * Ds, C))
        self.W_v = nn.Parameter(torch.empty(C, C))
        self.P = nn.Parameter(torch.empty(H, Ds, R))
        if cfg.bias:
            self.b_q = nn.Parameter(torch.zeros(H * Ds))
            self.b_k = nn.Parameter(torch.zeros(H * Ds))
            self.b_v = nn.Parameter(torch.zeros(C))
        else:
            self.register_parameter("b_q", None)
            self.register_parameter("b_k", None)
            self.register_parameter("b_v", None)
        for w in (self.W_q, self.W_k, self.W_v):
            nn.init.normal_(w, mean=0.0, std=INIT_STD)
        with torch.no_grad():
            self.P.copy_(torch.linalg.qr(torch.randn(H, Ds, R)).Q)
        _init_linears(self)

    def folded_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """W_f (3C x C) and b_f (3C or None) such that [Qf | Kf | V] = x W_f^T + b_f."""
        H, Ds, C = self.n_head, self.d_std, self.n_embd
        if fused.use_fused(self.W_q):  # the same W_f in one Triton kernel (racli_models.fused)
            W_f = fused.compose_ra_v5(*self.composed())
        else:
            W_q = self.W_q.view(H, Ds, C)
            W_k = self.W_k.view(H, Ds, C)
            PtW_q = torch.einsum("hdr,hdc->hrc", self.P, W_q)  # rows of P^T q
            PtW_k = torch.einsum("hdr,hdc->hrc", self.P, W_k)  # rows of P^T k
            W_f = self._fold(W_q, PtW_k, W_k, PtW_q, self.W_v)
        if self.b_q is None:
            return W_f, None
        b_q, b_k = self.b_q.view(H, Ds), self.b_k.view(H, Ds)
        Ptb_q = torch.einsum("hdr,hd->hr", self.P, b_q)
        Ptb_k = torch.einsum("hdr,hd->hr", self.P, b_k)
        return W_f, self._fold(b_q, Ptb_k, b_k, Ptb_q, self.b_v)


class RAv5UntiedAttention(_FoldedRA):
    """Ablation of ra_v5: the same folded layout and gates from a free projection.

        Qf_i = [w_std W_qs x_i | w_rec W_qr x_i],   Kf_j = [W_ks x_j | W_kr x_j]
    Nothing ties W_qr, W_kr to W_qs, W_ks: up to the gates this is standard
    attention with a re-parameterised weight, which separates the effect of
    tying from that of re-parameterisation. Init: every W ~ N(0, 0.02).
    """

    variant = "ra_v5_untied"
    composed_names = ("W_qs", "W_qr", "W_ks", "W_kr", "W_v", "w_std", "w_rec")

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        H, C, R, Ds = cfg.n_head, cfg.n_embd, self.rank, self.d_std
        self.W_qs = nn.Parameter(torch.empty(H * Ds, C))
        self.W_ks = nn.Parameter(torch.empty(H * Ds, C))
        self.W_qr = nn.Parameter(torch.empty(H * R, C))
        self.W_kr = nn.Parameter(torch.empty(H * R, C))
        self.W_v = nn.Parameter(torch.empty(C, C))
        names = ("qs", "ks", "qr", "kr", "v")
        widths = (H * Ds, H * Ds, H * R, H * R, C)
        for name, width in zip(names, widths):
            if cfg.bias:
                setattr(self, f"b_{name}", nn.Parameter(torch.zeros(width)))
            else:
                self.register_parameter(f"b_{name}", None)
        for w in (self.W_qs, self.W_ks, self.W_qr, self.W_kr, self.W_v):
            nn.init.normal_(w, mean=0.0, std=INIT_STD)
        _init_linears(self)

    def folded_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """W_f (3C x C) and b_f (3C or None) such that [Qf | Kf | V] = x W_f^T + b_f."""
        H, R, Ds, C = self.n_head, self.rank, self.d_std, self.n_embd
        if fused.use_fused(self.W_qs):  # the same W_f in one Triton kernel (racli_models.fused)
            W_f = fused.compose_untied(*self.composed())
        else:
            W_f = self._fold(
                self.W_qs.view(H, Ds, C),
                self.W_qr.view(H, R, C),
                self.W_ks.view(H, Ds, C),
                self.W_kr.view(H, R, C),
                self.W_v,
            )
        if self.b_qs is None:
            return W_f, None
        b_f = self._fold(
            self.b_qs.view(H, Ds),
            self.b_qr.view(H, R),
            self.b_ks.view(H, Ds),
            self.b_kr.view(H, R),
            self.b_v,
        )
        return W_f, b_f


class RABetaAttention(CausalSelfAttention):
    """Learned-beta reciprocal attention: two causal attentions per head.

        y = softmax(q k^T / sqrt(D)) v + tanh(beta_h) * rmsnorm(softmax(k q^T / sqrt(D)) v)
    The second call swaps the roles of q and k (causal too). rmsnorm is
    parameter-free over the head dim, z / sqrt(mean(z^2) + 1e-6): it puts the
    reciprocal output on a fixed scale, so tanh(beta) alone sets its weight.
    beta (one per head) starts at 0, so the model starts as standard attention;
    the gradient reaching beta is not zero there (tanh'(0) = 1).
    Two attention calls: not speed-neutral by design.
    """

    gate_names = ("beta",)

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.beta = nn.Parameter(torch.zeros(cfg.n_head))
        _init_linears(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        y_std = self._attend(q, k, v)
        y_rec = F.rms_norm(self._attend(k, q, v), (self.head_dim,), eps=RMS_EPS)
        y = y_std + torch.tanh(self.beta).view(self.n_head, 1, 1) * y_rec
        return self._out(self._merge(y))


class SDPAGateAttention(CausalSelfAttention):
    """Gated attention (Qwen-style, arXiv:2505.06708): the baseline, gated per head.

        g = sigmoid(x W_g^T + b_g)            (B, T, C) viewed as (B, T, H, D)
        y = (softmax(q k^T / sqrt(D)) v) * g  elementwise, before c_proj
    The gate projection g_proj (C -> C, always with a bias) adds C*C + C
    parameters per layer. It is a full projection, trained and decayed like
    the others, so it is not among `gate_parameters()`. Init: nanoGPT's
    (W_g ~ N(0, 0.02), b_g = 0), so the gate starts near sigmoid(0) = 0.5 and
    the attention branch starts at about half scale.

    `gate_values()` reports {"gate": mean of g per head over the last forward},
    kept in a buffer updated in place (no host sync); 0.5 before any forward.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.g_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=True)
        self.register_buffer("gate_mean", torch.full((cfg.n_head,), 0.5), persistent=False)
        _init_linears(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        y = self._attend(self._heads(q), self._heads(k), self._heads(v))
        g = torch.sigmoid(self.g_proj(x)).view(B, T, self.n_head, self.head_dim)
        with torch.no_grad():
            self.gate_mean.copy_(g.detach().mean(dim=(0, 1, 3)))
        y = y.transpose(1, 2) * g  # (B, T, H, D)
        return self._out(y.reshape(B, T, C))

    def gate_values(self) -> dict[str, torch.Tensor]:
        return {"gate": self.gate_mean.detach().float().clone()}


ATTENTION: dict[str, type[CausalSelfAttention]] = {
    "baseline": BaselineAttention,
    "ra_v5": RAv5Attention,
    "ra_v5_untied": RAv5UntiedAttention,
    "ra_beta": RABetaAttention,
    "sdpa_gate": SDPAGateAttention,
}


def build_attention(name: str, cfg: GPTConfig) -> CausalSelfAttention:
    """The attention module registered under `name`, built from `cfg`."""
    check_attention_name(name)
    return ATTENTION[name](cfg)
