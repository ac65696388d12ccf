"""One training step, replayed as one CUDA graph on CUDA.

    step = TrainStep(model, opt, fwd=torch.compile(model), micro=32, clip=1.0,
                     autocast=lambda: torch.autocast("cuda", dtype=torch.bfloat16))
    step.set_lr(6e-4)              # each group's lr = base lr * group["lr_mult"] (default 1)
    loss = step(x, y)              # the batch's mean loss, detached, on the device
                                   # (in graph mode the next call overwrites it)

A step is: the batch in micro-batches of `micro` sequences (each loss scaled by
1/accum, so the gradients add up to those of the whole batch's mean loss),
gradient clipping to `clip` (0: none), the optimizer step, the gradients set
to None. Nothing in it waits for the host.

With fused Adam or AdamW (ra's optimizer on CUDA) the clipping takes no pass of its
own: the gradients' norm is computed, and the optimizer's kernel divides each gradient
by max(1, (norm + 1e-6) / clip) as it reads it (its `grad_scale`, the hook torch's
GradScaler uses), which is `clip_grad_norm_`'s scaling; other optimizers get
`clip_grad_norm_`. `fold_clip=False` keeps `clip_grad_norm_` and `opt.step()` for every
optimizer. Where `racli_models.adamw` serves the optimizer (fused AdamW on CUDA; its
`KERNEL` switch, on by default), its Triton kernel takes the step: fused AdamW's
arithmetic without writing the divided gradients back.

With `graph=True` (the default on CUDA) the first call runs the step as
above on a side stream (the warm-up: compilation, the optimizer's state, the
library handles), then captures the next step into a CUDA graph without
running it; every later call copies the batch into the graph's input buffers
and replays the graph: one launch instead of about two thousand, and no gap
while the host catches up. What that needs, and what it does:
- each parameter group's lr lives in a device tensor (fused AdamW reads it
  there); `set_lr` writes it, so the schedule reaches the replays. Set the lr
  through `set_lr` only: a float written into `param_groups` would not.
- the captured step reads the parameters, gradients and optimizer state at
  their addresses: replace none of them afterwards (load a checkpoint before
  the first call, or build a new TrainStep).
- every batch has the shape of the first (a different one raises ValueError).
- fused AdamW (or any optimizer whose step never syncs with the host) with
  `capturable` set on its groups, which this class does.
- each replay moves the parameters' version counters (as an eager optimizer step
  does), so what is cached on them is rebuilt after it.
A capture that fails leaves the step uncaptured: `graph_error` says why.
`release()` frees the captured graph and the memory it holds (a next call
captures again): a process that trains again after this step (tests, a
library caller) gets that memory back at once, with no wait for the garbage
collector.

With `reduce` (several processes, racli.training.distributed.GradMean) the
gradients are views into its flat buffers, zeroed by `reduce.start()` at the
step's beginning, and `reduce()` averages them over the ranks after the last
micro-batch, before the clipping: one all-reduce per step, inside the graph on
CUDA. Every rank captures at the same step; if any rank's capture fails, every
rank runs uncaptured (a graph's collective must be matched by graphs on every
rank).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from . import adamw


def folds_clip(opt: torch.optim.Optimizer) -> bool:
    """Whether `opt` divides its gradients by a `grad_scale` tensor in its kernel: fused
    Adam or AdamW, with no GradScaler's scale already set on it."""
    return (
        type(opt) in (torch.optim.Adam, torch.optim.AdamW)
        and all(g.get("fused") for g in opt.param_groups)
        and getattr(opt, "grad_scale", None) is None
    )


def clipped_step(
    opt: torch.optim.Optimizer, params: list, clip: float, *, fold: bool = True
) -> None:
    """`opt`'s step on the gradients of `params` clipped to norm `clip` (0: none): inside
    the optimizer's kernel where `fold` and `folds_clip(opt)`, else `clip_grad_norm_` first."""
    scale = None
    if clip > 0 and fold and folds_clip(opt):
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        # clip_grad_norm_ multiplies by min(1, clip / (norm + 1e-6)); the kernel divides
        scale = torch.clamp((norm.float() + 1e-6) / clip, min=1.0)
    elif clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
    if fold and adamw.serves(opt):  # the same step without writing the gradients back
        adamw.step(opt, scale)
        return
    if scale is None:
        opt.step()
        return
    opt.grad_scale = scale  # fused AdamW's kernel divides by it
    try:
        opt.step()
    finally:
        del opt.grad_scale


class TrainStep:
    def __init__(
        self,
        model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        *,
        fwd: Callable | None = None,
        micro: int | None = None,
        clip: float = 1.0,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        graph: bool | None = None,
        reduce=None,
        fold_clip: bool = True,
    ):
        self.model, self.opt = model, opt
        self.fwd = fwd if fwd is not None else model
        self.micro, self.clip, self.autocast = micro, clip, autocast
        self.reduce = reduce
        self.fold_clip = fold_clip and folds_clip(opt)
        self.params = [p for p in model.parameters() if p.requires_grad]
        cuda = bool(self.params) and self.params[0].is_cuda
        self.graph_on = cuda if graph is None else (graph and cuda)
        self.graph_error: str | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._x = self._y = self._loss = None
        dev = self.params[0].device if self.params else None
        for g in opt.param_groups:  # graph: the lr in device tensors, read by fused AdamW there
            lr = float(g["lr"])  # (a tensor when a checkpoint of a graph run was loaded)
            g["lr"] = torch.tensor(lr, device=dev) if self.graph_on else lr

    # ---- the step itself -------------------------------------------------
    def set_lr(self, lr: float) -> None:
        """Every group's lr = lr * its `lr_mult` (1 when it has none)."""
        for g in self.opt.param_groups:
            value = lr * g.get("lr_mult", 1.0)
            if torch.is_tensor(g["lr"]):
                g["lr"].fill_(value)
            else:
                g["lr"] = value

    def _body(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        micro = self.micro or x.shape[0]
        accum = x.shape[0] // micro
        if self.reduce is not None:
            self.reduce.start()
        total = None
        for i in range(accum):
            xs, ys = x[i * micro : (i + 1) * micro], y[i * micro : (i + 1) * micro]
            with self.autocast():
                _, loss = self.fwd(xs, ys)
            (loss / accum if accum > 1 else loss).backward()
            part = loss.detach() / accum if accum > 1 else loss.detach()
            total = part if total is None else total + part
        if self.reduce is not None:
            self.reduce()
        clipped_step(self.opt, self.params, self.clip, fold=self.fold_clip)
        self.opt.zero_grad(set_to_none=True)
        return total

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.graph_on:
            return self._body(x, y)
        if self._graph is not None:
            if x.shape != self._x.shape or y.shape != self._y.shape:
                raise ValueError(
                    f"batch of shape {tuple(x.shape)}; the captured step takes {tuple(self._x.shape)}"
                )
            self._x.copy_(x, non_blocking=True)
            self._y.copy_(y, non_blocking=True)
            self._graph.replay()
            # a replay writes the parameters without autograd seeing it: their version
            # counters must move, or a cache keyed on them (RA's composed weight) goes stale
            torch.autograd.graph.increment_version(self.params)
            return self._loss
        # first call: the real step on a side stream, then the capture (nothing runs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loss = self._body(x, y)
        torch.cuda.current_stream().wait_stream(side)
        loss = loss.clone()  # the graph's own output buffer is written by every replay
        self._capture(x, y)
        return loss

    def release(self) -> None:
        """Free the captured graph, its input and output buffers and the gradients, which
        the graph allocated in its memory pool: the pool goes back to the allocator."""
        self._graph = self._x = self._y = self._loss = None
        self.opt.zero_grad(set_to_none=True)

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._x, self._y = x.clone(), y.clone()
        capturable = [g.get("capturable", False) for g in self.opt.param_groups]
        for g in self.opt.param_groups:
            g["capturable"] = True
        graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)  # the graph's backward allocates the gradients
        try:
            with torch.cuda.graph(graph):
                loss = self._body(self._x, self._y)
        except Exception as exc:  # run on uncaptured: correct, only slower
            self.graph_on = False
            self.graph_error = f"{type(exc).__name__}: {exc}"
            self.opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
        else:
            self._graph, self._loss = graph, loss
        finally:  # the flag only guards step() against capture; replays never call it
            for g, was in zip(self.opt.param_groups, capturable):
                g["capturable"] = was
        if self.reduce is not None and not self.reduce.agree(self._graph is not None):
            if self._graph is not None:
                self.graph_error = "another rank's capture failed: every rank runs uncaptured"
            self._graph, self._loss, self.graph_on = None, None, False
