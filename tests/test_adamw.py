"""ra's AdamW kernel (racli_models.adamw) against torch's AdamW: on the CPU through
Triton's interpreter (the kernel's arithmetic and its walk over tensors and blocks), and
on CUDA compiled, against fused AdamW, inside `clipped_step` and a replayed CUDA graph."""

from __future__ import annotations

import pytest
import torch
from helpers import in_triton_interpreter

from racli_models import adamw
from racli_models.step import TrainStep, clipped_step

SHAPES = [(37,), (64, 48), (2 * 2048 + 5,), (12,), (3, 4)]


def _groups(params: list[torch.Tensor], lr) -> list[dict]:
    """AdamW's groups as ra's model makes them: decay, no decay, gates at 3x the lr."""
    return [
        {"params": params[:3], "weight_decay": 0.1},
        {"params": params[3:4], "weight_decay": 0.0},
        {"params": params[4:], "weight_decay": 0.0, "lr": lr * 3},
    ]


def _run(steps: int, lr, scale: float | None, device: str, ours: bool, *, fused=False, dtype=None):
    """The parameters and state after `steps` AdamW steps on fixed random gradients (the
    gradients divided by `scale` where given), ra's kernel or torch's AdamW; the values
    drawn in float32 on the CPU whatever the device and `dtype`."""
    torch.manual_seed(0)

    def draw(shape):
        return torch.randn(shape).to(device, dtype or torch.float32)

    params = [draw(s) for s in SHAPES]
    grads = [[draw(s) for s in SHAPES] for _ in range(steps)]
    opt = torch.optim.AdamW(
        _groups(params, lr), lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused or None
    )
    for i in range(steps):
        for j, p in enumerate(params):
            p.grad = None if (i == 1 and j == 2) else grads[i][j].clone()  # one skipped once
        if ours:
            adamw.step(opt, None if scale is None else torch.tensor(scale, device=device))
        else:
            for p in params:
                if p.grad is not None and scale is not None:
                    p.grad /= scale
            opt.step()
    return params, [opt.state[p] for p in params]


def check_kernel() -> None:
    """Run under TRITON_INTERPRET=1; raises AssertionError naming the first case off."""
    for lr in (3e-3, torch.tensor(3e-3)):
        for scale in (None, 2.5):
            case = f"lr={'tensor' if torch.is_tensor(lr) else 'float'} scale={scale}"
            want, want_state = _run(4, lr, scale, "cpu", ours=False)
            got, got_state = _run(4, lr, scale, "cpu", ours=True)
            for i, (p, q) in enumerate(zip(got, want)):
                assert not torch.equal(p, _run(0, lr, scale, "cpu", True)[0][i]), case
                torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"{case}: param {i}")
            for i, (s, t) in enumerate(zip(got_state, want_state)):
                assert s["step"].item() == t["step"].item() == (3 if i == 2 else 4), case
                for key in ("exp_avg", "exp_avg_sq"):
                    torch.testing.assert_close(
                        s[key], t[key], rtol=1e-5, atol=1e-7, msg=f"{case}: {key} {i}"
                    )


def test_the_kernel_in_tritons_interpreter():
    in_triton_interpreter("test_adamw", "check_kernel()")


def test_only_fused_adamw_on_cuda_is_served(monkeypatch):
    monkeypatch.setattr(adamw, "KERNEL", True)
    p = torch.nn.Parameter(torch.randn(4))
    p.grad = torch.randn(4)
    assert not adamw.serves(torch.optim.AdamW([p]))  # on the CPU
    assert not adamw.serves(torch.optim.SGD([p], lr=0.1))
    if torch.cuda.is_available():
        q = torch.nn.Parameter(torch.randn(8, device="cuda"))
        q.grad = torch.randn(8, device="cuda")
        assert adamw.serves(torch.optim.AdamW([q], fused=True))
        with adamw.kernel(False):
            assert not adamw.serves(torch.optim.AdamW([q], fused=True))
        assert not adamw.serves(torch.optim.AdamW([q], fused=True, amsgrad=True))
        assert not adamw.serves(torch.optim.AdamW([q]))  # foreach
        assert not adamw.serves(torch.optim.Adam([q], fused=True))
        q.grad = torch.randn(9, device="cuda")[1:]  # misaligned gradient
        assert not adamw.serves(torch.optim.AdamW([q], fused=True))


@pytest.mark.gpu
@pytest.mark.parametrize("scale", [None, 2.5])
def test_the_kernel_is_as_exact_as_fused_adamw_on_cuda(scale):
    """Against float64 AdamW, the kernel's parameters and moments are as close as fused
    AdamW's (both round in float32, fused AdamW some steps in float64: they differ from
    each other by rounding)."""
    for lr in (3e-3, torch.tensor(3e-3, device="cuda")):
        exact, exact_state = _run(5, float(lr), scale, "cpu", ours=False, dtype=torch.float64)
        runs = [_run(5, lr, scale, "cuda", ours=o, fused=True) for o in (True, False)]
        (got, got_state), (fused, fused_state) = runs
        for i in range(len(SHAPES)):
            tensors = [(got[i], fused[i], exact[i])] + [
                (got_state[i][k], fused_state[i][k], exact_state[i][k])
                for k in ("exp_avg", "exp_avg_sq")
            ]
            for ours, theirs, want in tensors:
                err = (ours.double().cpu() - want).abs().max().item()
                err_fused = (theirs.double().cpu() - want).abs().max().item()
                scale_of = want.abs().max().item()
                assert err <= 2 * err_fused + 1e-7 * scale_of, (i, err, err_fused)
            assert torch.equal(got_state[i]["step"], fused_state[i]["step"])


def _model_run(on: bool, graph: bool, clip: float) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Embedding(64, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 64)
    ).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=True)

    def fwd(x, y):
        logits = model(x)
        return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())

    with adamw.kernel(on):
        step = TrainStep(model, opt, fwd=fwd, clip=clip, graph=graph)
        g = torch.Generator(device="cuda").manual_seed(1)
        for _ in range(6):
            x = torch.randint(0, 64, (4, 8), device="cuda", generator=g)
            step(x, (x * 7) % 64)
        torch.cuda.synchronize()
        assert step.graph_error is None
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.gpu
@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_the_train_step_with_the_kernel_equals_fused_adamws(graph, clip):
    """Clipped (0.05 clips every step here) or not, run as is or replayed as a CUDA graph.
    The two round differently (above), and six steps feed that back through the loss,
    where Adam's division by sqrt(v) magnifies it on near-zero gradients: equal to a
    thousandth of one step's move (lr 1e-2)."""
    for p, q in zip(_model_run(True, graph, clip), _model_run(False, graph, clip)):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_the_kernel_and_fused_adamw_take_turns():
    """The kernel works on fused AdamW's own state: steps alternating between them equal
    fused AdamW's alone."""
    torch.manual_seed(0)
    params = [torch.randn(s, device="cuda") for s in SHAPES]
    twins = [p.clone() for p in params]
    opts = [torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True) for ps in (params, twins)]
    for i in range(6):
        for p, q in zip(params, twins):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        with adamw.kernel(False):
            clipped_step(opts[0], params, 1.0)
        with adamw.kernel(i % 2 == 0):
            clipped_step(opts[1], twins, 1.0)
    for p, q in zip(params, twins):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)  # rounding (above)


@pytest.mark.parametrize("clip,fold", [(1.0, True), (0.0, True), (1.0, False)])
def test_clipped_step_hands_a_served_optimizer_to_the_kernel(clip, fold, monkeypatch):
    """Where `serves` takes the optimizer, `clipped_step` gives the step to the kernel with
    the clipping's scale (none unclipped) and never runs `opt.step()`; `fold=False`
    keeps `opt.step()` after `clip_grad_norm_`."""
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    p.grad = torch.tensor([30.0, 40.0])  # norm 50
    opt = torch.optim.AdamW([p], lr=0.1)
    calls = []
    monkeypatch.setattr("racli_models.step.folds_clip", lambda o: True)
    monkeypatch.setattr(adamw, "serves", lambda o: True)
    monkeypatch.setattr(adamw, "step", lambda o, scale=None: calls.append(("kernel", scale)))
    monkeypatch.setattr(opt, "step", lambda: calls.append(("torch", None)))
    clipped_step(opt, [p], clip, fold=fold)
    if not fold:
        assert calls == [("torch", None)]
        torch.testing.assert_close(p.grad.norm(), torch.tensor(1.0))
        return
    assert len(calls) == 1 and calls[0][0] == "kernel"
    assert not hasattr(opt, "grad_scale")
    scale = calls[0][1]
    if clip:
        torch.testing.assert_close(scale, torch.tensor((50.0 + 1e-6) / clip))
        assert torch.equal(p.grad, torch.tensor([30.0, 40.0]))  # the kernel divides it
    else:
        assert scale is None


def test_a_misaligned_tensor_is_refused_not_misread():
    p = torch.zeros(9)[1:]  # 4 bytes past an allocation's start
    p.grad = torch.ones(8)
    opt = torch.optim.AdamW([p], lr=0.1)
    with pytest.raises(ValueError, match="16-byte"):
        adamw.step(opt)
