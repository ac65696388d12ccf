"""AdamW's step on CUDA as one Triton kernel a parameter group.

torch's fused AdamW divides each gradient by the optimizer's `grad_scale` (where ra folds
the gradient clipping: racli_models.step) and writes the divided gradient back, which
the step then drops: 4 bytes a parameter written for nothing (0.5 GB at GPT-2 124M).
This kernel does torch's AdamW arithmetic and writes the parameters and both moments
only. Each program takes BLOCK elements of one tensor; the tensors are found by their
addresses (as offsets from one of them), in a table copied to the device beside the
step: the gradients need no flat buffer of their own.

It works on the optimizer's own state (`step`, `exp_avg`, `exp_avg_sq`, as torch's
fused AdamW creates them), so checkpoints, `opt.step()` and this kernel can take turns.
Served: torch.optim.AdamW with every group fused, no amsgrad, no maximize, float32
parameters and gradients, contiguous and 16-byte aligned, on CUDA, without a
GradScaler's scale set on the optimizer; anything else runs `opt.step()` (`serves`).
"""

from __future__ import annotations

import contextlib

import torch

from .switch import setting

try:  # Triton ships with CUDA builds of torch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

#: ra's AdamW kernel serves the optimizer where it can (False: torch's fused AdamW, as
#: vs_nanogpt's `+adamwk=false`). On an H100 its launches took 1.16 ms a GPT-2 step
#: against fused AdamW's 1.52 (docs/results.md, 2026-12-06)
KERNEL = True
#: elements a program updates
BLOCK = 2048
WARPS = 8


def kernel(on: bool = True) -> contextlib.AbstractContextManager[None]:
    """Inside the block `KERNEL` is `on`."""
    return setting(__name__, "KERNEL", on)


def serves(opt: torch.optim.Optimizer) -> bool:
    """Whether `step` takes `opt`'s step (else call `opt.step()`)."""
    if not (KERNEL and triton is not None and type(opt) is torch.optim.AdamW):
        return False
    if getattr(opt, "grad_scale", None) is not None or getattr(opt, "found_inf", None) is not None:
        return False
    for g in opt.param_groups:
        if not g.get("fused") or g.get("amsgrad") or g.get("maximize"):
            return False
        if g.get("differentiable") or torch.is_tensor(g["betas"][0]):
            return False
        if torch.is_tensor(g["lr"]) and not g["lr"].is_cuda:
            return False
        for p in g["params"]:
            state = opt.state.get(p, {})
            tensors = [p, p.grad, state.get("exp_avg"), state.get("exp_avg_sq")]
            if not all(t is None or _aligned(t) for t in tensors):
                return False
            if "step" in state and not _aligned(state["step"]):
                return False
    return True


def _aligned(t: torch.Tensor) -> bool:
    """A float32 CUDA tensor, contiguous, at a 16-byte aligned address."""
    return t.is_cuda and t.dtype == torch.float32 and t.is_contiguous() and t.data_ptr() % 16 == 0


def step(opt: torch.optim.Optimizer, grad_scale: torch.Tensor | None = None) -> None:
    """AdamW's step on `opt` (which `serves` took), each gradient divided by `grad_scale`
    (a float32 tensor of one element, on the device) where given. Parameters without a
    gradient are left as they are, as `opt.step()` leaves them."""
    groups = [(g, [p for p in g["params"] if p.grad is not None]) for g in opt.param_groups]
    groups = [(g, params) for g, params in groups if params]
    states = {p: _state(opt, p) for _, params in groups for p in params}
    if states:
        torch._foreach_add_([s["step"] for s in states.values()], 1)
    for group, params in groups:
        numels = [p.numel() for p in params]
        vec = all(n % 4 == 0 for n in numels)
        base = params[0]
        rows = []
        for p, n in zip(params, numels):
            st = states[p]
            for t in (p, p.grad, st["exp_avg"], st["exp_avg_sq"], st["step"]):
                offset, off = divmod(t.data_ptr() - base.data_ptr(), 16)
                if off:
                    raise ValueError("AdamW kernel: a tensor not 16-byte aligned")
                rows.append(offset)
            rows.append(n // 4 if vec else n)
        owner, index = _chunks(numels, base.device)
        table = _to_device(rows, base.device)
        lr = group["lr"]
        beta1, beta2 = group["betas"]
        _adamw_kernel[(owner.numel(),)](
            base,
            table,
            owner,
            index,
            lr if torch.is_tensor(lr) else table,
            0.0 if torch.is_tensor(lr) else float(lr),
            grad_scale if grad_scale is not None else table,
            float(beta1),
            float(beta2),
            float(group["eps"]),
            float(group["weight_decay"]),
            LR_TENSOR=torch.is_tensor(lr),
            SCALED=grad_scale is not None,
            VEC=vec,
            BLOCK=BLOCK,
            num_warps=WARPS,
        )


def _state(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    """`p`'s AdamW state, made as torch's fused AdamW makes it where there is none."""
    state = opt.state[p]
    if not state:
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


_CHUNKS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _chunks(numels: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each program: the tensor it updates and which BLOCK of it (int32 on `device`)."""
    key = (tuple(numels), BLOCK, str(device))
    if key not in _CHUNKS:
        owner, index = [], []
        for t, n in enumerate(numels):
            k = -(-n // BLOCK)
            owner += [t] * k
            index += range(k)
        _CHUNKS[key] = tuple(torch.tensor(v, dtype=torch.int32).to(device) for v in (owner, index))
    return _CHUNKS[key]


_KEEP: list[torch.Tensor] = []


def _to_device(values: list[int], device: torch.device) -> torch.Tensor:
    """`values` as int64 on `device`, copied from pinned memory on the current stream (a
    copy a CUDA graph can capture: the host buffer captured is kept for the graph's
    replays)."""
    host = torch.tensor(values, dtype=torch.int64)
    if device.type != "cuda":
        return host.to(device)
    host = host.pin_memory()
    if torch.cuda.is_current_stream_capturing():
        _KEEP.append(host)  # a replay copies from it again
    return host.to(device, non_blocking=True)


if triton is not None:

    @triton.jit
    def _adamw_kernel(
        base,  # float32: the tensors' addresses are taken from this one's
        table,  # (tensors, 6) int64: (address - base's) / 16 of param, grad, exp_avg,
        # exp_avg_sq, step; then the size in elements (/ 4 with VEC)
        owner,  # (programs,) int32: the tensor a program updates
        index,  # (programs,) int32: which BLOCK of it
        lr_ptr,
        lr_value,
        scale_ptr,
        beta1,
        beta2,
        eps,
        weight_decay,
        LR_TENSOR: tl.constexpr,
        SCALED: tl.constexpr,
        VEC: tl.constexpr,  # every size a multiple of 4
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        t = tl.load(owner + pid).to(tl.int64)
        offs = tl.load(index + pid).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        # each tensor at base + 4 e elements (e stored; 16-byte units), its size 4 n (n
        # stored) with VEC: the compiler then sees the alignment 4-wide accesses need
        row = table + t * 6
        mask = offs < (tl.load(row + 5) * 4 if VEC else tl.load(row + 5))
        param = base + tl.load(row) * 4
        grad = base + tl.load(row + 1) * 4
        exp_avg = base + tl.load(row + 2) * 4
        exp_avg_sq = base + tl.load(row + 3) * 4
        count = tl.load(base + tl.load(row + 4) * 4)
        lr = tl.load(lr_ptr).to(tl.float32) if LR_TENSOR else lr_value

        p = tl.load(param + offs, mask=mask)
        g = tl.load(grad + offs, mask=mask)
        m = tl.load(exp_avg + offs, mask=mask)
        v = tl.load(exp_avg_sq + offs, mask=mask)
        if SCALED:
            g = g / tl.load(scale_ptr)
        p = p - lr * weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        bias1 = 1 - tl.exp2(count * tl.log2(beta1))
        bias2_sqrt = tl.sqrt(1 - tl.exp2(count * tl.log2(beta2)))
        p = p - (lr / bias1) * m / (tl.sqrt(v) / bias2_sqrt + eps)
        tl.store(param + offs, p, mask=mask)
        tl.store(exp_avg + offs, m, mask=mask)
        tl.store(exp_avg_sq + offs, v, mask=mask)
