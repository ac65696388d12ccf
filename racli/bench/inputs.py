"""What a bench times: shapes, modes, phases, dtypes, the block and its inputs, and
the figures derived from a timing (percentiles, FLOPs, TFLOP/s)."""

from __future__ import annotations

import math

import numpy as np
import torch

from racli.config.schema import MAX_SHAPE_DIM, MAX_SHAPE_ELEMENTS, BenchShape
from racli.errors import BadInput
from racli.names import check_sdpa_backend as check_sdpa_backend  # bench's input checks
from racli.names import comma_list
from racli.names import resolve_device as resolve_device

MODES = ("eager", "compile", "cuda_graph")


PHASES = ("fwd", "fwd_bwd")


DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def parse_shape(text: str, presets: dict[str, BenchShape]) -> tuple[str, BenchShape]:
    """A preset name from ra.yaml (`tiny`, `gpt2`, ...) or `B,T,H,D` -> (name, shape).

    The name of an explicit shape is the text itself, normalised ("8,1024,12,64").
    Raises BadInput on anything else.
    """
    text = (text or "").strip()
    if text in presets:
        return text, check_shape_size(text, presets[text])
    valid = ", ".join(presets) if presets else "none"
    if "," not in text:
        raise BadInput(f"unknown shape '{text}' (valid: a preset ({valid}) or B,T,H,D)")
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(parts) != 4 or len(values) != 4 or any(v < 1 for v in values):
        raise BadInput(
            f"bad shape '{text}': expected B,T,H,D as four positive integers, e.g. 8,1024,12,64"
        )
    if values[3] < 2:
        raise BadInput(f"bad shape '{text}': head_dim must be at least 2")
    if max(values) > MAX_SHAPE_DIM:
        raise BadInput(f"bad shape '{text}': each of B,T,H,D must be below 2^31")
    b, t, h, d = values
    name = ",".join(map(str, values))
    return name, check_shape_size(name, BenchShape(batch=b, seq=t, heads=h, head_dim=d))


def check_shape_size(name: str, shape: BenchShape) -> BenchShape:
    """`shape`, unless one q/k/v tensor of it is beyond any device's memory (BadInput)."""
    if shape.elements >= MAX_SHAPE_ELEMENTS:
        raise BadInput(
            f"shape {name} is too large: one q/k/v tensor (B x T x H x D) has "
            f"{shape.elements:,} elements, not below 2^40"
        )
    return shape


def _expand(
    text: str | list[str], valid, alias: str | None, what: str, choices: str = ""
) -> list[str]:
    """A comma list of names from `valid` (`alias` = all of them) -> the names, once each, in
    order. BadInput for an unknown name or an empty list, naming the `choices`."""
    choices = choices or f"valid: {', '.join(valid)}, {alias}"
    out: list[str] = []
    for item in comma_list(text):
        for name in valid if item == alias else (item,):
            if name not in valid:
                raise BadInput(f"unknown {what} '{name}' ({choices})")
            if name not in out:
                out.append(name)
    if not out:
        raise BadInput(f"no {what} given ({choices})")
    return out


def parse_modes(text: str | list[str]) -> list[str]:
    """`eager,compile` -> ["eager", "compile"]; `all` -> the three modes. BadInput otherwise."""
    return _expand(text, MODES, "all", "mode")


def parse_phases(text: str) -> list[str]:
    """`fwd`, `fwd_bwd` or `both` (also a comma list) -> the phases, in order."""
    return _expand(text, PHASES, "both", "phase")


def parse_attns(text: str | list[str], registry) -> list[str]:
    """Comma list of attention names; each must be in `registry`. BadInput otherwise."""
    return _expand(text, registry, None, "attention", f"valid: {', '.join(sorted(registry))}")


def resolve_dtype(name: str | None, device: str) -> str:
    """Canonical dtype name; default float16 on CUDA, float32 on the CPU."""
    if name is None or name == "auto":
        return "float16" if torch.device(device).type == "cuda" else "float32"
    key = name.strip().lower()
    if key not in DTYPES:
        raise BadInput(f"unknown dtype '{name}' (valid: float32, float16, bfloat16)")
    return str(DTYPES[key]).removeprefix("torch.")


def block_flops(
    batch: int, seq: int, heads: int, head_dim: int, phase: str = "fwd", causal: bool = True
) -> int:
    """Nominal FLOPs of one attention block (a multiply-add counts 2).

    With C = heads * head_dim:
        projections  2*B*T*C*(3C)  (q, k, v)  +  2*B*T*C*C  (output)  = 8*B*T*C^2
        attention    2*B*H*T*T*D  (Q K^T)  +  2*B*H*T*T*D  (P V)      = 4*B*H*T^2*D,
                     halved for causal attention (half the T^2 work)   = 2*B*H*T^2*D
        fwd          projections + attention
        fwd_bwd      3 * fwd (the backward does twice the forward's matmul work)
    Softmax, masking and elementwise work are not counted. Every variant gets
    the same nominal count, the work of a standard block, so TFLOP/s compares
    like with like: a variant's extra work (ra_beta's second attention,
    sdpa_gate's gate projection, ra_v5's weight composition) shows as lower
    TFLOP/s, not as more useful work.
    """
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r} (valid: {', '.join(PHASES)})")
    c = heads * head_dim
    proj = 2 * batch * seq * c * (3 * c) + 2 * batch * seq * c * c
    attn = 2 * (2 * batch * heads * seq * seq * head_dim)
    if causal:
        attn //= 2
    fwd = proj + attn
    return fwd if phase == "fwd" else 3 * fwd


def tflops(flops: int, median_ms: float | None) -> float | None:
    """TFLOP/s achieved by `flops` in `median_ms` milliseconds."""
    if median_ms is None or not math.isfinite(median_ms) or median_ms <= 0:
        return None
    return flops / (median_ms * 1e-3) / 1e12


def percentiles(times_ms: list[float]) -> tuple[float, float, float]:
    """(median, p10, p90) of the per-repeat times."""
    p10, p50, p90 = np.percentile(np.asarray(times_ms, dtype=np.float64), [10, 50, 90])
    return float(p50), float(p10), float(p90)


def block_config(attn: str, shape: BenchShape, model_kw: dict | None = None):
    """The GPTConfig of one block; ValueError for a shape the variant cannot take."""
    from racli_models import GPTConfig

    kw = dict(model_kw or {})
    kw["dropout"] = 0.0
    return GPTConfig.for_block(shape.heads, shape.head_dim, shape.seq, attn, **kw)


def build_module(
    attn: str,
    shape: BenchShape,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    seed: int = 0,
    model_kw: dict | None = None,
) -> torch.nn.Module:
    """A fresh block with the weights every configuration of this seed gets."""
    from racli_models import build_attention

    cfg = block_config(attn, shape, model_kw)
    torch.manual_seed(seed)
    module = build_attention(attn, cfg)
    return module.to(device=torch.device(device), dtype=DTYPES[dtype])


def make_inputs(
    shape: BenchShape, *, dtype: str = "float32", device: str = "cpu", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, G): the block input and the output gradient of the fwd_bwd loss, seeded."""
    g = torch.Generator().manual_seed(seed)
    size = (shape.batch, shape.seq, shape.heads * shape.head_dim)
    x = torch.randn(size, generator=g)
    dout = torch.randn(size, generator=g)
    dev, dt = torch.device(device), DTYPES[dtype]
    return x.to(device=dev, dtype=dt), dout.to(device=dev, dtype=dt)
