"""The loss kernel (racli_models.loss._ce_kernel) on the CPU, through Triton's interpreter:
each row's loss and the gradient of the mean loss against float64, for every setting of
`launch_ce` (the second pass reversed, the cache hints, fewer programs than rows), with V
several blocks wide and off the block, and ignored rows. The CUDA tests (test_loss.py)
run the compiled kernel; these check its arithmetic and its row and block walks without
a GPU."""

from __future__ import annotations

import torch
from helpers import in_triton_interpreter

SETTINGS = [  # (reverse, evict, programs_per_sm); on the CPU an "SM" is 4 programs' worth
    (False, False, 0),
    (True, False, 0),
    (False, True, 0),
    (False, False, 1),
    (True, True, 2),
    (False, False, 100),  # more programs than rows: one a row
]


def check_kernel() -> None:
    """Run under TRITON_INTERPRET=1; raises AssertionError naming the first setting off."""
    from racli_models import loss as L

    N, V, block = 37, 300, 64  # five blocks a row, the last one partly outside
    torch.manual_seed(0)
    logits = torch.randn(N, V) * 3
    targets = torch.randint(0, V, (N,))
    targets[::5] = -1
    targets[1] = V - 1  # the last column, in the last block's valid part
    valid = targets != -1
    n = valid.sum().double()
    x = logits.double()
    lse = torch.logsumexp(x, dim=1)
    t = torch.where(valid, targets, 0)
    want_rows = torch.where(valid, lse - x.gather(1, t[:, None]).squeeze(1), 0.0)
    want_grad = torch.softmax(x, dim=1)
    want_grad[torch.arange(N), t] -= 1.0
    want_grad = want_grad * (valid.double() / n)[:, None]
    for reverse, evict, per_sm in SETTINGS:
        case = f"reverse={reverse} evict={evict} programs_per_sm={per_sm}"
        for with_grad in (True, False):
            rows = torch.full((N,), float("nan"))
            grad = torch.full((N, V), float("nan")) if with_grad else rows
            L.launch_ce(
                logits,
                targets,
                rows,
                grad,
                (1.0 / n).float().reshape(()),
                with_grad=with_grad,
                block=block,
                reverse=reverse,
                evict=evict,
                programs_per_sm=per_sm,
            )
            err = (rows.double() - want_rows).abs().max().item()
            assert err < 1e-5, f"{case}: row losses off by {err:.2e}"
            if with_grad:
                err = (grad.double() - want_grad).abs().max().item()
                assert err < 1e-7, f"{case}: gradient off by {err:.2e}"


def test_the_loss_kernel_in_tritons_interpreter():
    in_triton_interpreter("test_loss_interpreter", "check_kernel()")
