"""The fused composition's Triton kernels (racli_models.fused) on the CPU, through Triton's
interpreter: forward and backward of ra_v5 and ra_v5_untied against the plain torch
composition in float64, every kernel output poisoned with NaN first, and the projection
with its composition as one node (`fused.folded_linear`). The CUDA tests
(test_fused_gpu.py) cover the compiled kernels, CUDA graphs and torch.compile; these run
the same kernel code wherever Triton is installed, so a change to the kernels' arithmetic
is checked without a GPU."""

from __future__ import annotations

import torch
from helpers import in_triton_interpreter, randomize_folded_ra

# (H, D, R): C = 200 is four column tiles of 64, the last one partly outside; C = 32 is one
SHAPES = [(5, 40, 7), (2, 16, 4)]
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3}
COMPOSED = {
    "ra_v5": ("W_q", "W_k", "W_v", "P", "w_std", "w_rec"),
    "ra_v5_untied": ("W_qs", "W_qr", "W_ks", "W_kr", "W_v", "w_std", "w_rec"),
}


def _block(attn: str, shape, seed: int = 0):
    from racli_models import GPTConfig, build_attention

    H, D, R = shape
    torch.manual_seed(seed)
    m = build_attention(attn, GPTConfig.for_block(H, D, 32, attn, ra_rank=R))
    randomize_folded_ra(m)
    return m


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm()).item()


def check_kernels(dtypes=tuple(TOL)) -> None:
    """Run under TRITON_INTERPRET=1: fused vs plain (float64) for every case; raises
    AssertionError naming the first case off by more than its tolerance. bfloat16 is left
    to the CUDA tests: the interpreter (numpy underneath) truncates casts to bfloat16 and
    gets its tl.dot wrong by orders of magnitude (Triton 3.9)."""
    from racli_models import fused

    fused._alloc = lambda shape, device=None, dtype=None: torch.full(
        tuple(shape), float("nan"), device=device, dtype=dtype
    )
    for attn, names in COMPOSED.items():
        compose = fused.compose_ra_v5 if attn == "ra_v5" else fused.compose_untied
        for shape in SHAPES:
            ref_m = _block(attn, shape).double()
            G = torch.randn(3 * shape[0] * shape[1], shape[0] * shape[1], dtype=torch.float64)
            W_ref = ref_m.folded_weight()[0]  # the plain composition on the CPU
            (W_ref * G).sum().backward()
            for dtype in dtypes:
                for dot in (True, False) if dtype == torch.float16 else (None,):
                    if dot is not None:
                        fused.SETTINGS.use_dot = dot
                    m = _block(attn, shape).to(dtype)
                    params = [getattr(m, n) for n in names]
                    W = compose(*params)
                    assert W.dtype == dtype
                    (W.double() * G).sum().backward()
                    case = f"{attn} {shape} {dtype} dot={dot}"
                    err = _rel(W, W_ref)
                    assert err <= TOL[dtype], f"{case}: W_f off by {err:.2e}"
                    for n, p in zip(names, params):
                        err = _rel(p.grad, getattr(ref_m, n).grad)
                        assert err <= 4 * TOL[dtype], f"{case}: d{n} off by {err:.2e}"
    fused.SETTINGS.use_dot = True
    check_folded_linear()


def check_folded_linear() -> None:
    """`fused.folded_linear` (the projection and its composition as one node; on the CPU
    its backward runs in one stream) against F.linear with the plain composition, float64:
    the output and every gradient, the input's included."""
    import torch.nn.functional as F

    from racli_models import fused

    for attn, names in COMPOSED.items():
        for shape in SHAPES:
            H, D, _ = shape
            x = torch.randn(3, 7, H * D, dtype=torch.float64)
            dy = torch.randn(3, 7, 3 * H * D, dtype=torch.float64)
            ref_m = _block(attn, shape).double()
            x_ref = x.clone().requires_grad_(True)
            F.linear(x_ref, ref_m.folded_weight()[0]).backward(dy)
            for dtype in (torch.float64, torch.float32):
                m = _block(attn, shape).to(dtype)
                xd = x.clone().to(dtype).requires_grad_(True)
                params = [getattr(m, n) for n in names]
                y = fused.folded_linear(xd, attn, *params)
                y.backward(dy.to(dtype))
                case = f"folded_linear {attn} {shape} {dtype}"
                err = _rel(y, F.linear(x, ref_m.folded_weight()[0]))
                assert err <= TOL[dtype], f"{case}: y off by {err:.2e}"
                err = _rel(xd.grad, x_ref.grad)
                assert err <= 4 * TOL[dtype], f"{case}: dx off by {err:.2e}"
                for n, p in zip(names, params):
                    err = _rel(p.grad, getattr(ref_m, n).grad)
                    assert err <= 4 * TOL[dtype], f"{case}: d{n} off by {err:.2e}"


def test_the_composition_kernels_in_tritons_interpreter():
    in_triton_interpreter("test_fused_interpreter", "check_kernels()")
