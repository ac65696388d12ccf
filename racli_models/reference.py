"""Explicit float64 references for every attention variant (slow, for checking only).

`reference_forward(module, x)` recomputes a variant's output from the SAME
parameters with the math written out: projections, explicit scores
q k^T / sqrt(D), a causal mask of -inf, softmax, @ v, output projection. It
never calls the module's forward, its composed weight or SDPA, so tests and
benchmarks can use it to check the fast paths.
"""

from __future__ import annotations

import math

import torch

from .attention import (
    RMS_EPS,
    BaselineAttention,
    CausalSelfAttention,
    RABetaAttention,
    RAv5Attention,
    RAv5UntiedAttention,
    SDPAGateAttention,
)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """softmax(q k^T * scale, row i sees columns j <= i) v, for (B, H, T, d) inputs."""
    T = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) * scale
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1) @ v


def _lin(x, weight, bias=None):
    y = x @ weight.double().T
    return y if bias is None else y + bias.double()


def _heads(t, n_head):
    B, T, C = t.shape
    return t.view(B, T, n_head, C // n_head).transpose(1, 2)


def _merge(y):
    B, H, T, d = y.shape
    return y.transpose(1, 2).reshape(B, T, H * d)


def _gate(g):
    return g.double().view(-1, 1, 1)


def reference_forward(m: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Output of attention module `m` on `x` (B, T, C), computed in float64 (dropout off)."""
    x = x.double()
    H, D = m.n_head, m.head_dim
    scale = 1.0 / math.sqrt(D)
    if isinstance(m, RAv5Attention):
        q = _heads(_lin(x, m.W_q, m.b_q), H)  # (B, H, T, D_std)
        k = _heads(_lin(x, m.W_k, m.b_k), H)
        v = _heads(_lin(x, m.W_v, m.b_v), H)
        P = m.P.double()  # (H, D_std, R)
        qP = torch.einsum("bhtd,hdr->bhtr", q, P)  # P^T q_j
        kP = torch.einsum("bhtd,hdr->bhtr", k, P)  # P^T k_i
        qf = torch.cat([_gate(m.w_std) * q, _gate(m.w_rec) * kP], dim=-1)
        kf = torch.cat([k, qP], dim=-1)
        y = causal_attention(qf, kf, v, scale)
    elif isinstance(m, RAv5UntiedAttention):
        qs = _heads(_lin(x, m.W_qs, m.b_qs), H)
        ks = _heads(_lin(x, m.W_ks, m.b_ks), H)
        qr = _heads(_lin(x, m.W_qr, m.b_qr), H)
        kr = _heads(_lin(x, m.W_kr, m.b_kr), H)
        v = _heads(_lin(x, m.W_v, m.b_v), H)
        qf = torch.cat([_gate(m.w_std) * qs, _gate(m.w_rec) * qr], dim=-1)
        kf = torch.cat([ks, kr], dim=-1)
        y = causal_attention(qf, kf, v, scale)
    elif isinstance(m, (BaselineAttention, RABetaAttention, SDPAGateAttention)):
        qkv = _lin(x, m.c_attn.weight, m.c_attn.bias)
        q, k, v = (_heads(t, H) for t in qkv.split(m.n_embd, dim=2))
        y = causal_attention(q, k, v, scale)
        if isinstance(m, RABetaAttention):
            z = causal_attention(k, q, v, scale)
            z = z / torch.sqrt(z.pow(2).mean(dim=-1, keepdim=True) + RMS_EPS)
            y = y + torch.tanh(_gate(m.beta)) * z
        if isinstance(m, SDPAGateAttention):
            g = torch.sigmoid(_lin(x, m.g_proj.weight, m.g_proj.bias))  # (B, T, C)
            return _lin(_merge(y) * g, m.c_proj.weight, m.c_proj.bias)
    else:
        raise TypeError(f"no reference for {type(m).__name__}")
    return _lin(_merge(y), m.c_proj.weight, m.c_proj.bias)
