"""How much each layer and head uses its reciprocal term, measured on inputs.

Design notes: docs/models.md.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from . import folded_kernel, split32
from .attention import RMS_EPS, RABetaAttention, SDPAGateAttention, _FoldedRA

Parts = dict[str, torch.Tensor | float]  # additive sums (tensors, or counts)

#: names of the measures per head, by attention class, and the per-layer one
HEAD_MEASURES = ("rec_share", "rec_effect", "rec_norm_ratio", "gate_mean", "gate_std")
LAYER_MEASURES = ("rec_ablation",)

#: on CUDA, the float32 products of a float32 forward (the ablation's; the measures' with
#: precision float32) and of the ablated passes (the linear layers, the composed
#: projection, the statistics' matmul) run as split TF32 GEMMs at float32's precision
#: (`racli_models.split32`; False: as torch's TF32 flags say, which
#: `racli.training.reciprocity.measure` turns off)
TENSOR_CORES = True

#: on CUDA, the folded-RA statistics of float32 terms as one Triton kernel per layer
#: (`racli_models.folded_kernel`) instead of about twenty torch passes (False: the torch
#: passes; tools/reciprocity_cost.py --stats-ops times both)
STATS_KERNEL = True

#: with the ablation, the ablated passes advance block by block beside the model's own
#: forward, so the device runs their large GEMMs while the host issues the measured
#: forward's many small kernels (False: all ablated passes after the forward;
#: tools/reciprocity_cost.py --separate-ablation times both; the results are the same)
INTERLEAVED = True

#: with the ablation, the measures come from their own forward, as at every other
#: evaluation (`forward_dtype`, replayed from the CUDA graph), and the ablation from one
#: float32 pass of the model's stream and the ablated ones as one batch, without
#: statistics (`_ablation_alone`): on an H200 9.6% of an evaluation against 13.3% in the
#: same process (docs/results.md). False: both from one float32 forward, the measures
#: of step 0 and the end then at float32 precision (tools/reciprocity_cost.py
#: --shared-ablation times it beside the default).
ABLATION_ALONE = True


def _acc(t: torch.Tensor) -> torch.Tensor:
    """Sums are kept in float64 so that pooling many batches loses nothing."""
    return t.to(torch.float64)


# ---------------------------------------------------------------- folded RA


def query_rows(T: int, n: int, device=None) -> torch.Tensor:
    """The query positions measured: n of 0..T-1 spread evenly, the middle of each
    of n equal strata, (2k + 1) T // (2n) for k < n (for T = 1024, n = 256: 2, 6,
    ..., 1022; their mean position is the mean of all T); all T when n is 0 or >= T.
    Sums over these rows estimate the sums over every row (a systematic sample)."""
    if n <= 0 or n >= T:
        return torch.arange(T, device=device)
    k = torch.arange(n, device=device)
    return (2 * k + 1) * T // (2 * n)


def key_mask(rows: torch.Tensor, T: int) -> torch.Tensor:
    """(n, T) bool, True where key j <= the query position rows[r]."""
    return torch.arange(T, device=rows.device) <= rows[:, None]


def folded_qkv(attn: _FoldedRA, x: torch.Tensor):
    """The module's `folded_qkv` (Qf, Kf, V, each (B, H, T, D)) with its one GEMM through
    `split32.linear`, so that a `float32_on_tensor_cores` block routes it."""
    W_f, b_f = attn._weight_once()
    qf, kf, v = split32.linear(x, W_f, b_f).split(attn.n_embd, dim=2)
    return attn._heads(qf), attn._heads(kf), attn._heads(v)


def score_terms(attn: _FoldedRA, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of the folded logits, each (B, H, T, T), before the mask:
        S = (w_std a) c^T / sqrt(D),   R = (w_rec b) d^T / sqrt(D)
    from Qf = [w_std a | w_rec b] and Kf = [c | d] of the composed weight."""
    qf, kf, _ = folded_qkv(attn, x)
    ds = attn.d_std
    scale = 1.0 / math.sqrt(attn.head_dim)
    std = split32.matmul(qf[..., :ds], kf[..., :ds].transpose(-1, -2)) * scale
    rec = split32.matmul(qf[..., ds:], kf[..., ds:].transpose(-1, -2)) * scale
    return std, rec


class QueryRows:
    """The measured query positions `rows` (n,) of sequences of length T, and what
    every layer derives from them, built once and shared: the key mask (n, T),
    True where key j <= rows[r], and the per-dtype counts of keys and the (2, 1, D)
    pickers of the standard and reciprocal dims."""

    def __init__(self, rows: torch.Tensor, T: int):
        self.rows = rows
        self.n = len(rows)
        self.mask = key_mask(rows, T)
        self.hidden = ~self.mask
        self._cache: dict = {}

    @classmethod
    def spread(cls, T: int, n: int, device=None) -> QueryRows:
        return cls(query_rows(T, n, device), T)

    def n_keys(self, dtype: torch.dtype) -> torch.Tensor:
        """(n, 1): i + 1 keys for query i."""
        key = ("n_keys", dtype)
        if key not in self._cache:
            self._cache[key] = (self.rows + 1).to(dtype).unsqueeze(-1)
        return self._cache[key]

    def pick(self, D: int, d_std: int, dtype: torch.dtype) -> torch.Tensor:
        """(2, 1, D): [1/sqrt(D) on the standard dims, 0 elsewhere], then the same for the
        reciprocal dims."""
        key = ("pick", D, d_std, dtype)
        if key not in self._cache:
            pick = torch.zeros(2, 1, D, dtype=dtype, device=self.rows.device)
            pick[0, :, :d_std] = pick[1, :, d_std:] = 1.0 / math.sqrt(D)
            self._cache[key] = pick
        return self._cache[key]


def kl_sum(std: torch.Tensor, rec: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Per head (H,): sum over b, i of KL(softmax(S + R) || softmax(S)) over keys j <= i
    (`hidden`: True where key j > query i; `rec` may hold anything finite there).

    With q = softmax(S) and p = q e^R / E_q[e^R]: KL(p || q) = E_p[R] - log E_q[e^R].
    Both terms are taken with R centred under q, r = R - E_q[R] (E_q[r] = 0):
        KL = E_q[r expm1(r)] / (1 + u) - log1p(u),   u = E_q[expm1(r)],
    exact, and free of the difference of nearly equal numbers that log p - log q
    suffers when R is small (KL ~ Var_q(R) / 2, far below float32's resolution of
    the log-probabilities)."""
    q = torch.softmax(std.masked_fill(hidden, -math.inf), dim=-1)  # 0 above the diagonal
    r = rec - (q * rec).sum(-1, keepdim=True)
    qe = q * torch.expm1(r)
    u = qe.sum(-1)
    kl = (qe * r).sum(-1) / (1 + u) - torch.log1p(u)  # (B, H, n)
    return _acc(kl.sum(dim=(0, 2)))


def folded_stats(
    qf: torch.Tensor, kf: torch.Tensor, d_std: int, rows: torch.Tensor | QueryRows
) -> Parts:
    """The additive sums of rec_share and rec_effect from the query rows `qf`
    (B, H, n, D) at positions `rows` (n,) and every key `kf` (B, H, T, D), in
    their dtype. S and R come out of one matmul: the n rows twice, once with
    the reciprocal dims zeroed and once with the standard ones zeroed (zeros
    add nothing, so each term is exactly its own dims' product, and R is
    exactly 0 when w_rec = 0)."""
    B, H, n, D = qf.shape
    T = kf.shape[2]
    if not isinstance(rows, QueryRows):
        rows = QueryRows(rows, T)
    hidden = rows.hidden
    pick = rows.pick(D, d_std, qf.dtype)
    qs = (qf.unsqueeze(2) * pick).reshape(B, H, 2 * n, D)  # the rows as [a | 0], then [0 | b]
    terms = split32.matmul(qs, kf.transpose(-1, -2)).view(B, H, 2, n, T)
    if STATS_KERNEL and folded_kernel.applies(terms):
        sums = folded_kernel.row_sums(terms, rows.rows)  # (B, H, n, 4): v_std, v_rec, a, u
        power = _acc(sums[..., :2].sum(dim=(0, 2)))  # (H, 2)
        a, u = sums[..., 2], sums[..., 3]
        kl = _acc((a / (1 + u) - torch.log1p(u)).sum(dim=(0, 2)))  # kl_sum's formula
        return {"v_std": power[:, 0], "v_rec": power[:, 1], "kl": kl, "queries": float(B * n)}
    t = terms.masked_fill(hidden, 0.0)
    centred = (t - t.sum(-1, keepdim=True) / rows.n_keys(t.dtype)).masked_fill_(hidden, 0.0)
    power = _acc(centred.pow_(2).sum(dim=(0, 3, 4)))  # (H, 2)
    return {
        "v_std": power[:, 0],
        "v_rec": power[:, 1],
        "kl": kl_sum(terms[:, :, 0], t[:, :, 1], hidden),
        "queries": float(B * n),
    }


def _positions(rows: torch.Tensor | QueryRows) -> torch.Tensor:
    return rows.rows if isinstance(rows, QueryRows) else rows


def folded_parts(
    attn: _FoldedRA, x: torch.Tensor, rows: torch.Tensor | QueryRows | None = None
) -> Parts:
    """`folded_stats` of the module on its input x, over the query rows `rows` (all: None)."""
    qf, kf, _ = folded_qkv(attn, x)
    if rows is None:
        rows = torch.arange(x.shape[1], device=x.device)
    return folded_stats(qf[:, :, _positions(rows)], kf, attn.d_std, rows)


def folded_finish(parts: Parts) -> dict[str, torch.Tensor]:
    total = parts["v_std"] + parts["v_rec"]
    share = torch.where(
        total > 0, parts["v_rec"] / total.clamp_min(1e-300), torch.zeros_like(total)
    )
    return {"rec_share": share, "rec_effect": parts["kl"] / parts["queries"]}


# ---------------------------------------------------------------- ra_beta, sdpa_gate


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + causal mask) v, as the modules compute it (no dropout)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _beta_branches(attn: RABetaAttention, x: torch.Tensor):
    q, k, v = attn.c_attn(x).split(attn.n_embd, dim=2)
    q, k, v = attn._heads(q), attn._heads(k), attn._heads(v)
    y_std = _causal_attention(q, k, v)
    y_rec = F.rms_norm(_causal_attention(k, q, v), (attn.head_dim,), eps=RMS_EPS)
    return y_std, y_rec  # (B, H, T, D) each; the module adds tanh(beta) * y_rec


def _beta_sums(y_std: torch.Tensor, y_rec: torch.Tensor) -> Parts:
    return {
        "std_sq": _acc(y_std.pow(2).sum(dim=(0, 2, 3))),
        "rec_sq": _acc(y_rec.pow(2).sum(dim=(0, 2, 3))),
    }


def beta_parts(attn: RABetaAttention, x: torch.Tensor) -> Parts:
    return _beta_sums(*_beta_branches(attn, x))


def beta_finish(attn: RABetaAttention, parts: Parts) -> dict[str, torch.Tensor]:
    gate = torch.tanh(_acc(attn.beta.detach()).to(parts["std_sq"].device)).abs()
    ratio = gate * (parts["rec_sq"] / parts["std_sq"].clamp_min(1e-300)).sqrt()
    return {"rec_norm_ratio": ratio}


def gate_parts(attn: SDPAGateAttention, x: torch.Tensor) -> Parts:
    B, T, _ = x.shape
    g = _acc(torch.sigmoid(attn.g_proj(x)).view(B, T, attn.n_head, attn.head_dim))
    return {
        "g": g.sum(dim=(0, 1, 3)),
        "g2": g.pow(2).sum(dim=(0, 1, 3)),
        "n": float(B * T * attn.head_dim),
    }


def gate_finish(parts: Parts) -> dict[str, torch.Tensor]:
    mean = parts["g"] / parts["n"]
    var = (parts["g2"] / parts["n"] - mean.pow(2)).clamp_min(0.0)
    return {"gate_mean": mean, "gate_std": var.sqrt()}


# ---------------------------------------------------------------- one layer


def layer_parts(attn, x: torch.Tensor, rows: torch.Tensor | QueryRows | None = None) -> Parts:
    """Additive sums of the measures of one attention module on its input x (B, T, C);
    {} for a variant without measures (baseline). `rows`: the query positions of
    the folded-RA measures (None: every one)."""
    if isinstance(attn, _FoldedRA):
        return folded_parts(attn, x, rows)
    if isinstance(attn, RABetaAttention):
        return beta_parts(attn, x)
    if isinstance(attn, SDPAGateAttention):
        return gate_parts(attn, x)
    return {}


def _stats_dtype(t: torch.Tensor) -> torch.dtype:
    """The measures' statistics are float32 at least (float64 stays float64)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def layer_step(attn, h: torch.Tensor, rows: torch.Tensor | QueryRows) -> tuple[torch.Tensor, Parts]:
    """The module's output on its input h (B, T, C) and its `layer_parts`, sharing
    the work: folded RA composes W_f once and runs its one GEMM once; ra_beta
    computes its two branches once. The output is computed as the module's forward
    computes it, in the context it is called in (under autocast for a bf16 forward);
    the statistics run outside autocast, in float32 at least: when the forward's
    projections came out in a lower precision, folded RA projects the measured
    query rows and the keys again in float32 from the same W_f."""
    dev = h.device.type
    sd = _stats_dtype(h)
    if isinstance(attn, _FoldedRA):
        with torch.autocast(dev, enabled=False):
            W_f, b_f = attn.folded_weight()
        qkv = split32.linear(h, W_f, b_f)
        qf, kf, v = (attn._heads(t) for t in qkv.split(attn.n_embd, dim=2))
        y = attn._out(attn._merge(attn._attend(qf, kf, v)))
        with torch.autocast(dev, enabled=False):
            if qf.dtype != sd:
                C = attn.n_embd
                bq, bk = (None, None) if b_f is None else (b_f[:C], b_f[C : 2 * C])
                hs = h.to(sd)
                qf = attn._heads(split32.linear(hs[:, _positions(rows)], W_f[:C].to(sd), bq))
                kf = attn._heads(split32.linear(hs, W_f[C : 2 * C].to(sd), bk))
            else:
                qf = qf[:, :, _positions(rows)]
            return y, folded_stats(qf, kf, attn.d_std, rows)
    if isinstance(attn, RABetaAttention):
        y_std, y_rec = _beta_branches(attn, h)
        y = y_std + torch.tanh(attn.beta).view(attn.n_head, 1, 1) * y_rec
        with torch.autocast(dev, enabled=False):
            parts = _beta_sums(y_std.to(sd), y_rec.to(sd))
        return attn._out(attn._merge(y)), parts
    y = attn(h)
    with torch.autocast(dev, enabled=False):
        return y, layer_parts(attn, h.to(sd))


def finish(attn, parts: Parts) -> dict[str, torch.Tensor]:
    """Measure name -> per-head float64 values (H,) from pooled `layer_parts` sums."""
    if not parts:
        return {}
    if isinstance(attn, _FoldedRA):
        return folded_finish(parts)
    if isinstance(attn, RABetaAttention):
        return beta_finish(attn, parts)
    return gate_finish(parts)


def head_measures(attn, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-head measures of one attention module on one input x (B, T, C)."""
    return finish(attn, layer_parts(attn, x))


def has_reciprocal(attn) -> bool:
    """Whether the module has a reciprocal term to remove (folded RA, ra_beta)."""
    return isinstance(attn, (_FoldedRA, RABetaAttention))


def removing_reciprocal(attn, x: torch.Tensor, n: int) -> torch.Tensor:
    """The module's output on x (N, T, C) with its reciprocal term removed from the
    last n sequences (folded RA: w_rec = 0; ra_beta: beta = 0) and kept in the
    others, computed from its parameters without changing them (the module's own
    output for a variant without one)."""
    if isinstance(attn, _FoldedRA):
        qf, kf, v = folded_qkv(attn, x)
        kept = torch.ones(len(x), 1, 1, attn.head_dim, dtype=qf.dtype, device=x.device)
        kept[len(x) - n :, :, :, attn.d_std :] = 0.0  # their reciprocal logits vanish
        return attn._out(attn._merge(_causal_attention(qf * kept, kf, v)))
    if isinstance(attn, RABetaAttention):
        y_std, y_rec = _beta_branches(attn, x)
        kept = torch.ones(len(x), 1, 1, 1, dtype=y_rec.dtype, device=x.device)
        kept[len(x) - n :] = 0.0
        gate = torch.tanh(attn.beta).view(attn.n_head, 1, 1) * kept  # (N, H, 1, 1)
        return attn._out(attn._merge(y_std + gate * y_rec))
    return attn(x)


# ---------------------------------------------------------------- a whole model


def _embed(model, idx: torch.Tensor) -> torch.Tensor:
    """The residual stream entering block 0 (as GPT.forward computes it)."""
    pos = torch.arange(idx.shape[1], dtype=torch.long, device=idx.device)
    return model.transformer.drop(model.transformer.wte(idx) + model.transformer.wpe(pos))


Values = dict[int, dict[str, torch.Tensor]]  # layer -> measure name -> values
Layout = list[tuple[int, str, torch.Size]]  # where each value lies in a packed vector


def _finished(model, parts: list[Parts]) -> Values:
    """Layer -> measure name -> values from each block's pooled sums, computed where the
    sums are (on the device: no wait for the host)."""
    out: Values = {}
    for i, block in enumerate(model.transformer.h):
        values = finish(block.attn, parts[i])
        if values:
            out[i] = values
    return out


def _pack(values: Values) -> tuple[torch.Tensor | None, Layout]:
    """Every value in one float64 vector (so one copy brings them all to the host) and
    where each lies."""
    layout = [(i, k, v.shape) for i, named in values.items() for k, v in named.items()]
    tensors = [v.reshape(-1).to(torch.float64) for named in values.values() for v in named.values()]
    return (torch.cat(tensors) if tensors else None), layout


def _unpack(flat: torch.Tensor | None, layout: Layout) -> Values:
    """`_pack`'s values back from its vector, on the host (one copy, one wait)."""
    out: Values = {}
    if flat is None:
        return out
    flat = flat.cpu()
    start = 0
    for i, k, shape in layout:
        n = shape.numel()
        out.setdefault(i, {})[k] = flat[start : start + n].view(shape)
        start += n
    return out


def _forward_sums(
    model, batches, queries: int, forward_dtype: torch.dtype | None, keep: list | None = None
) -> list[Parts]:
    """The per-layer `layer_parts` sums over `batches`, from the model's own forward block
    by block. With `keep` (the ablation), each batch's `_AblatedPasses` is appended to
    it, run through every block (`INTERLEAVED`: block j's right after the forward's
    block j; else all after the forward) and ended with the model's final stream. With a
    float32 forward its float32 products run as `TENSOR_CORES` says (under a bf16
    forward only the statistics' small products are float32: plain float32 is faster
    there), the weights split afresh in each call (a CUDA graph captured from a call
    reads only what it made)."""
    blocks = list(model.transformer.h)
    parts: list[Parts] = [{} for _ in blocks]
    with split32.float32_on_tensor_cores(model, TENSOR_CORES and forward_dtype is None):
        for idx, targets in batches:
            rows = QueryRows.spread(idx.shape[1], queries, idx.device)
            passes = _AblatedPasses(len(targets)) if keep is not None else None
            entering = []
            forward = (
                torch.autocast(idx.device.type, dtype=forward_dtype, cache_enabled=False)
                if forward_dtype is not None
                else contextlib.nullcontext()
            )
            with forward:
                x = _embed(model, idx)
                for i, block in enumerate(blocks):
                    entering.append(x)
                    y, named = layer_step(block.attn, block.ln_1(x), rows)
                    for name, value in named.items():
                        parts[i][name] = parts[i][name] + value if name in parts[i] else value
                    x = x + y
                    x = x + block.mlp(block.ln_2(x))
                    if passes is not None and INTERLEAVED:
                        passes.through(block, i, entering[i])
            if passes is not None:
                if not INTERLEAVED:
                    for i, block in enumerate(blocks):
                        passes.through(block, i, entering[i])
                passes.final = x
                keep.append(passes)
    return parts


class _AblatedPasses:
    """One batch's passes with one layer's reciprocal term removed, side by side.

    Each ablated pass starts from the model's stream entering its layer (the blocks
    before it are the model's own), and the passes run as one batch: at block j, the
    streams whose ablated layer came before j and the stream that starts at j pass
    through the block together, the reciprocal term removed from the latter alone
    (`removing_reciprocal`). Given `own` (the model's stream entering block 0), the
    model's stream is carried first in that batch (the ablation's own pass); else
    its final stream is set in `final` by the forward that fed the passes."""

    def __init__(self, sequences: int, own: torch.Tensor | None = None):
        self.sequences = sequences  # per stream
        self.own = own is not None
        self.streams: torch.Tensor | None = own
        self.layers: list[int] = []  # the ablated layer of each stream, in order
        self.final: torch.Tensor | None = None  # the model's own final stream (not `own`)

    def through(self, block, j: int, entering: torch.Tensor) -> None:
        starts = has_reciprocal(block.attn)  # the pass without layer j's term
        if starts:
            self.layers.append(j)
            self.streams = entering if self.streams is None else torch.cat([self.streams, entering])
        if self.streams is None:
            return
        ablated = self.sequences if starts else 0
        s = self.streams
        s = s + removing_reciprocal(block.attn, block.ln_1(s), ablated)
        self.streams = s + block.mlp(block.ln_2(s))

    def loss_sums(self, model, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's summed loss and each ablated pass's (`layers`' order), from one
        LM-head pass over all the streams (`_loss_sums`)."""
        if self.own:
            sums = _loss_sums(model, self.streams, targets)
            return sums[0], sums[1:]
        streams = self.final if self.streams is None else torch.cat([self.streams, self.final])
        sums = _loss_sums(model, streams, targets)
        return sums[-1], sums[:-1]


#: on CUDA, the measures without the ablation are captured into a CUDA graph at their
#: first call and replayed at the next ones (set False to always run them eagerly)
GRAPH = True
GRAPH_ERROR: str | None = None  # why the last capture failed, if one did
GRAPHS_PER_MODEL = 4  # settings kept per model (each graph holds its own memory pool)
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {key: graph}


def release(model) -> None:
    """Free the measures' captured graphs of `model` and the memory pools they hold."""
    _GRAPHS.pop(model, None)


def _values(model, batches, queries: int, forward_dtype) -> tuple[torch.Tensor | None, Layout]:
    """The measures without the ablation, packed (`_pack`), computed on the device."""
    return _pack(_finished(model, _forward_sums(model, batches, queries, forward_dtype)))


def _graphed_values(model, batches, queries: int, forward_dtype):
    """`_values` through a CUDA graph kept per model; None where it does not apply.

    The graph is keyed by the batches' shapes, the settings and the parameters'
    addresses: it reads the parameters where they are (so it sees every in-place
    update, such as an optimizer step) and is captured again when one moves. Its
    first call runs eagerly (the warm-up) and then captures; later calls copy the
    batches into the graph's inputs and replay it: the forward, the statistics, their
    finish and the packing into one vector, so the host then copies one vector. A
    setting that failed to capture runs eagerly from then on (`GRAPH_ERROR` says why)."""
    global GRAPH_ERROR
    params = list(model.parameters())
    if not (GRAPH and params and params[0].is_cuda) or torch.cuda.is_current_stream_capturing():
        return None
    key = (
        tuple((tuple(i.shape), i.dtype, tuple(t.shape), t.dtype) for i, t in batches),
        queries,
        forward_dtype,
        tuple(p.data_ptr() for p in params),
        torch.backends.cuda.matmul.allow_tf32,
        TENSOR_CORES,
        STATS_KERNEL,
        split32.KERNEL,
    )
    graphs = _GRAPHS.setdefault(model, {})
    if key in graphs and graphs[key] is None:
        return None
    hit = graphs.get(key)
    if hit is not None:
        inputs, packed, graph = hit
        for (i, t), (si, st) in zip(batches, inputs):
            si.copy_(i)
            st.copy_(t)
        graph.replay()
        return packed
    packed = _values(model, batches, queries, forward_dtype)  # warm-up, and the answer
    inputs = [(i.clone(), t.clone()) for i, t in batches]
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            static = _values(model, inputs, queries, forward_dtype)
    except Exception as exc:  # not capturable here: stay eager
        GRAPH_ERROR = f"{type(exc).__name__}: {exc}"
        graphs[key] = None
        return packed
    if len(graphs) >= GRAPHS_PER_MODEL:
        graphs.pop(next(iter(graphs)))  # the oldest setting
    graphs[key] = (inputs, static, graph)
    return packed


LOSS_ROWS = 4096  # positions per LM-head GEMM of the ablation (4 sequences of 1024)


def _loss_sums(model, streams: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per stream (k,): the summed cross-entropy (float64, on the device) of `streams`
    (k * B, T, C), k final residual streams of the B sequences of `targets` (B, T),
    LOSS_ROWS positions per LM-head GEMM. Each position's loss is taken in the
    logits' dtype (float32: off by about 1e-6 nats, far below the loss changes of
    1e-5 relative that the ablation reads) and the sums in float64; targets -1
    count nothing."""
    k = streams.shape[0] // targets.shape[0]
    x = streams.reshape(-1, streams.shape[-1])
    every = targets.reshape(-1).repeat(k)
    losses = []
    for start in range(0, len(x), LOSS_ROWS):
        logits = model.lm_head(model.transformer.ln_f(x[start : start + LOSS_ROWS]))
        target = every[start : start + LOSS_ROWS]
        losses.append(F.cross_entropy(logits, target, ignore_index=-1, reduction="none"))
    return torch.cat(losses).double().view(k, -1).sum(1)


def _target_counts(batches) -> list[int]:
    """Each batch's targets (those not -1), read by the host at once: called before any
    of the measures' work is issued, so that no later read waits for the device."""
    return torch.stack([(t != -1).sum() for _, t in batches]).tolist() if batches else []


def _ablation_sums(model, batches, kept: list, counts: list[int]) -> tuple[list, dict[int, list]]:
    """The loss sums (float64, on the device) and target counts of the model and, per
    layer with a reciprocal term, of the model with that layer's term removed, from each
    batch's `_AblatedPasses` (`kept` by `_forward_sums`, or `_ablation_alone`);
    `counts`: each batch's targets (`_target_counts`)."""
    base: list = [0.0, 0]
    removed: dict[int, list] = {}
    for (_, targets), passes, n in zip(batches, kept, counts):
        own, ablated = passes.loss_sums(model, targets)
        base[0] += own
        base[1] += n
        for layer, total in zip(passes.layers, ablated):
            acc = removed.setdefault(layer, [0.0, 0])
            acc[0] += total
            acc[1] += n
    return base, removed


def _ablation_alone(model, batches) -> list:
    """Each batch's `_AblatedPasses` from a pass of their own: the model's stream and, from
    each layer with a reciprocal term on, a copy of it with that layer's term removed,
    all through each block as one batch (the model's stream first). No statistics: the
    only float32 pass the ablation needs."""
    kept = []
    for idx, _ in batches:
        B = len(idx)
        passes = _AblatedPasses(B, own=_embed(model, idx))
        for j, block in enumerate(model.transformer.h):
            passes.through(block, j, passes.streams[:B])  # the model's stream entering j
        kept.append(passes)
    return kept


def model_measures(
    model,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    ablation: bool = True,
    queries: int = 0,
    forward_dtype: torch.dtype | None = None,
) -> dict[int, dict[str, torch.Tensor]]:
    """Layer -> measure name -> values for a GPT on (idx, targets) batches.

    Per-head measures have shape (H,); ``rec_ablation`` (layers with a
    reciprocal term, when `ablation`) has shape (1,). The forward is the
    model's own, block by block (GPT.forward): each block's attention input
    is measured as it passes (`layer_step`). `queries`: the folded-RA measures
    score that many query rows of each sequence, spread evenly (`query_rows`),
    each against all its causal keys (0: every row). `forward_dtype` (e.g.
    torch.bfloat16): the blocks run under autocast to it, as an evaluation
    does, while the statistics stay in float32. The ablation's loss changes of
    1e-5 need a full float32 forward: with `ABLATION_ALONE` it has a pass of its
    own (`_ablation_alone`) and the measures keep `forward_dtype`; without it
    (forward_dtype None) the residual stream entering each block is kept and the
    pass from that block on is run again with its reciprocal term removed. Call it under
    torch.no_grad() in eval mode (`racli.training.reciprocity.measure` does).
    No parameter is changed; as any forward does, it updates sdpa_gate's
    `gate_mean` buffer (`record_measures` puts the buffers back). On CUDA the
    float32 products run on TF32 tensor cores at float32's precision
    (`TENSOR_CORES`, `racli_models.split32`).
    """
    if ablation and forward_dtype is not None and not ABLATION_ALONE:
        raise ValueError("the ablation needs a float32 forward (forward_dtype=None)")
    batches = list(batches)
    if not ablation or ABLATION_ALONE:
        counts = _target_counts(batches) if ablation else []  # before any work is issued
        packed = _graphed_values(model, batches, queries, forward_dtype)
        if packed is None:
            packed = _values(model, batches, queries, forward_dtype)
        if not ablation:
            return _unpack(*packed)
        with split32.float32_on_tensor_cores(model, TENSOR_CORES):
            base, removed = _ablation_sums(model, batches, _ablation_alone(model, batches), counts)
        flat, layout = _pack(_ablation_values(base, removed))
        if packed[0] is not None and flat is not None:
            return _unpack(torch.cat([packed[0], flat]), packed[1] + layout)
        return _unpack(*packed) if flat is None else _unpack(flat, layout)
    counts = _target_counts(batches)  # the one host read before the work is issued
    kept: list = []
    # one block: the weights split once for both
    with split32.float32_on_tensor_cores(model, TENSOR_CORES):
        parts = _forward_sums(model, batches, queries, forward_dtype, keep=kept)
        base, removed = _ablation_sums(model, batches, kept, counts)
    values = _finished(model, parts)
    for i, named in _ablation_values(base, removed).items():
        values.setdefault(i, {}).update(named)
    return _unpack(*_pack(values))


def _ablation_values(base: list, removed: dict[int, list]) -> Values:
    """Layer -> {"rec_ablation": the relative change of the loss (1,)}, on the device;
    nothing where no target was counted."""
    if base[1] <= 0:
        return {}
    loss = base[0] / base[1]
    return {
        i: {"rec_ablation": ((t / n - loss) / loss).reshape(1)} for i, (t, n) in removed.items()
    }
