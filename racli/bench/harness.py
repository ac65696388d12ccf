"""The timing harness of `ra bench`: one attention block, every mode and phase.

Plain functions, no CLI and no printing; racli.bench.run drives them and
tests call them directly. What is timed, how each mode runs, how the SDPA
backend that ran is found: docs/bench.md.
"""

from __future__ import annotations

import contextlib
import gc
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from racli.bench.inputs import (
    MODES,
    PHASES,
    block_flops,
    build_module,
    make_inputs,
    percentiles,
    resolve_dtype,
    tflops,
)
from racli.bench.ranking import TimingRow
from racli.config.schema import BenchShape
from racli.errors import first_line
from racli.names import check_sdpa_backend as check_sdpa_backend  # bench's input checks
from racli.names import resolve_device as resolve_device
from racli.names import sdpa_backend_context as backend_context
from racli_models import compiler

REASON_CHARS = 300  # the most characters of an error kept as a row's reason
GRAPH_WARMUP = 3  # side-stream steps before a CUDA-graph capture (at least)
_NO_CHECK = contextlib.nullcontext()

# fused SDPA kernels (aten op names) -> the backend name recorded in `timings.backend`
KERNEL_BACKENDS = {
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_flash_attention_for_cpu": "cpu_flash",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",
    "_scaled_dot_product_attention_math_for_mps": "mps_math",
    "fa4_attention": "fa4",  # racli_models.flash4 (cuDNN's forward, FA4's backward)
}


# --------------------------------------------------------------------------
# backend detection
# --------------------------------------------------------------------------


def detect_backend(step: Callable[[], Any]) -> str:
    """Run `step` once and name the SDPA backend(s) its attention calls ran.

    A TorchFunctionMode counts calls of `F.scaled_dot_product_attention`; a
    TorchDispatchMode sees the fused forward kernel each call dispatched to
    (see the module docstring for the names). Calls that reached no fused
    kernel ran the composite math path. Several distinct backends (possible
    for a variant with two attention calls) are joined with "+"; "none" when
    the step made no SDPA call.
    """
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    sdpa = torch.nn.functional.scaled_dot_product_attention

    class _Calls(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is sdpa:
                self.n += 1
            return func(*args, **(kwargs or {}))

    class _Kernels(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._schema.name.split("::")[-1]
            if name in KERNEL_BACKENDS:
                self.seen.append(KERNEL_BACKENDS[name])
            return func(*args, **(kwargs or {}))

    with _Calls() as calls, _Kernels() as kernels:
        step()
    names = list(kernels.seen)
    names += ["math"] * max(0, calls.n - len(kernels.seen))
    unique = list(dict.fromkeys(names))
    return "+".join(unique) if unique else "none"


# --------------------------------------------------------------------------
# configurations and settings
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One configuration to time."""

    attn: str
    mode: str
    phase: str


@dataclass
class BenchSettings:
    """What every configuration of one bench shares."""

    shape: BenchShape
    dtype: str = "float32"
    device: str = "cpu"
    repeats: int = 100
    warmup: int = 20
    sdpa_backend: str = "auto"
    seed: int = 0
    model_kw: dict | None = None
    #: called inside the timed region of every repeat as ``in_step(config, i)``: lets a test
    #: inject jitter into one side's repeats; None in normal use
    in_step: Callable[[Config, int], None] | None = None


def _reason(exc: BaseException) -> str:
    first = first_line(exc, REASON_CHARS)
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Skip(Exception):
    """The configuration cannot run here (becomes a `skipped` row)."""


def _probe(step: Callable[[], Any], sdpa_backend: str) -> str:
    """One eager step under the backend flags; the backend that ran.

    With a forced backend, a RuntimeError (other than running out of memory)
    means the backend cannot serve this variant: _Skip with torch's reason
    (the most specific warning it printed, else the error's first line).
    """
    if sdpa_backend == "auto":
        return detect_backend(step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return detect_backend(step)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            why = [
                first_line(w.message, REASON_CHARS)
                for w in caught
                if issubclass(w.category, UserWarning)
            ]
            why = [
                w
                for w in why
                if w
                and not w.lower().endswith("because:")
                and ("attention" in w.lower() or "kernel" in w.lower())
            ]
            detail = why[0] if why else first_line(exc, REASON_CHARS)
            raise _Skip(
                f"SDPA backend '{sdpa_backend}' unavailable for this configuration: {detail}"
            ) from exc


def make_step(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dout: torch.Tensor, phase: str
) -> Callable[[], torch.Tensor]:
    """One step of `phase` on `fn` (a module or its compiled form).

    fwd: `fn(x)` under `torch.no_grad()`. fwd_bwd: `fn(x)`, then the backward
    of L = sum(out * dout), seeded as `out.backward(dout)`; parameter grads
    (and x's, when x requires grad) accumulate into `.grad` unless cleared.
    """
    if phase == "fwd":

        def step() -> torch.Tensor:
            with torch.no_grad():
                return fn(x)
    else:

        def step() -> torch.Tensor:
            out = fn(x)
            out.backward(dout)
            return out

    return step


# --------------------------------------------------------------------------
# one configuration, ready to time
# --------------------------------------------------------------------------


@dataclass
class _Ready:
    """A configuration built, probed, compiled or captured and warmed up."""

    config: Config
    step: Callable[[], Any]
    before: Callable[[], None]  # outside the timed region (clears grads for fwd_bwd)
    backend: str
    compile_s: float | None
    keep: dict = field(default_factory=dict)  # module, inputs, compiled module, graph


def _prepare(c: Config, s: BenchSettings) -> _Ready:
    """Build, probe and warm up one configuration (see the module docstring)."""
    dev = torch.device(s.device)
    module = build_module(
        c.attn, s.shape, dtype=s.dtype, device=s.device, seed=s.seed, model_kw=s.model_kw
    )
    x, dout = make_inputs(s.shape, dtype=s.dtype, device=s.device, seed=s.seed)
    keep: dict[str, Any] = {"module": module, "x": x, "dout": dout}
    params = list(module.parameters())
    if c.phase == "fwd":
        module.eval()
    else:
        module.train()
        x.requires_grad_(True)

    def clear_grads() -> None:
        for p in params:
            p.grad = None
        x.grad = None

    def no_op() -> None:
        pass

    eager = make_step(module, x, dout, c.phase)
    backend = _probe(eager, s.sdpa_backend)
    clear_grads()
    compile_s = None
    before = clear_grads if c.phase == "fwd_bwd" else no_op
    if c.mode == "eager":
        step = eager
    elif c.mode == "compile":
        compiled = keep["compiled"] = torch.compile(module, dynamic=False)
        step = make_step(compiled, x, dout, c.phase)
        t0 = time.perf_counter()
        with compiler.compiled_or_error("this block"):  # not eager timed as compiled
            step()
        _sync(dev)
        compile_s = time.perf_counter() - t0
        clear_grads()
    else:  # cuda_graph
        step, compile_s = _capture(eager, clear_grads, c.phase, dev, s.warmup, keep)
        before = no_op
    with compiler.compiled_or_error("this block") if c.mode == "compile" else _NO_CHECK:
        for _ in range(s.warmup):
            before()
            step()
    _sync(dev)
    return _Ready(c, step, before, backend, compile_s, keep)


def _capture(
    eager: Callable[[], Any],
    clear_grads: Callable[[], None],
    phase: str,
    dev: torch.device,
    warmup: int,
    state: dict,
) -> tuple[Callable[[], Any], float]:
    """Warm up on a side stream, capture one step into a CUDA graph; (replay, capture seconds)."""
    side = torch.cuda.Stream(device=dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        for _ in range(max(GRAPH_WARMUP, min(warmup, 10))):
            clear_grads()
            eager()
    torch.cuda.current_stream(dev).wait_stream(side)
    torch.cuda.synchronize(dev)
    graph = torch.cuda.CUDAGraph()
    # grads set to None before capture: backward allocates them from the graph's
    # pool, and each replay rewrites those same tensors (no accumulation)
    clear_grads()
    t0 = time.perf_counter()
    with torch.cuda.graph(graph):
        state["static_out"] = eager()
    torch.cuda.synchronize(dev)
    capture_s = time.perf_counter() - t0
    state["graph"] = graph
    return graph.replay, capture_s


def _interleaved(ready: list[_Ready], s: BenchSettings) -> dict[Config, list[float] | str]:
    """Per-repeat times (ms) of every ready configuration, timed round-robin: repeat i of
    each configuration runs before repeat i + 1 of any, so drift in the machine's load
    hits every configuration alike. A configuration that raises drops out (its reason)."""
    dev = torch.device(s.device)
    cuda = dev.type == "cuda"
    times: dict[Config, list] = {r.config: [] for r in ready}
    out: dict[Config, list[float] | str] = {}
    live = list(ready)
    for i in range(s.repeats):
        for r in list(live):
            try:
                r.before()
                if cuda:
                    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                    start.record()
                else:
                    t0 = time.perf_counter()
                r.step()
                if s.in_step is not None:
                    s.in_step(r.config, i)
                if cuda:
                    end.record()
                    times[r.config].append((start, end))
                else:
                    times[r.config].append((time.perf_counter() - t0) * 1e3)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one failing configuration must not stop the rest
                out[r.config] = _reason(exc)
                live.remove(r)
    _sync(dev)
    for r in live:
        t = times[r.config]
        out[r.config] = [a.elapsed_time(b) for a, b in t] if cuda else t
    return out


# --------------------------------------------------------------------------
# rounds: the configurations of one phase, timed together
# --------------------------------------------------------------------------


def time_round(configs: list[Config], s: BenchSettings) -> list[TimingRow]:
    """Time ``configs`` (one phase) interleaved; their rows, in the order given.

    Never raises for a configuration that cannot run (except KeyboardInterrupt):
    its row says `skipped` (CUDA graph without CUDA, a forced SDPA backend the
    variant cannot use) or `failed` (anything else, e.g. a compile error), with
    the reason.
    """
    dtype = resolve_dtype(s.dtype, s.device)
    s = replace(s, dtype=dtype)
    dev = torch.device(s.device)
    shape = s.shape
    rows = {
        c: TimingRow(
            c.attn,
            c.mode,
            c.phase,
            batch=shape.batch,
            seq=shape.seq,
            heads=shape.heads,
            head_dim=shape.head_dim,
            dtype=dtype,
            device=dev.type,
        )
        for c in configs
    }
    for c in configs:
        if c.mode not in MODES:
            raise ValueError(f"unknown mode {c.mode!r} (valid: {', '.join(MODES)})")
        if c.phase not in PHASES:
            raise ValueError(f"unknown phase {c.phase!r} (valid: {', '.join(PHASES)})")
        if s.sdpa_backend != "auto":
            rows[c].backend = s.sdpa_backend
    ready: list[_Ready] = []
    timed: dict[Config, list[float] | str] = {}
    try:
        with backend_context(s.sdpa_backend):
            torch._dynamo.reset()  # nothing compiled before this round is reused
            for c in configs:
                row = rows[c]
                if c.mode == "cuda_graph" and (dev.type != "cuda" or not torch.cuda.is_available()):
                    row.status = "skipped"
                    row.reason = f"CUDA graphs need a CUDA device; this bench runs on {dev.type}"
                    continue
                try:
                    ready.append(_prepare(c, s))
                except KeyboardInterrupt:
                    raise
                except _Skip as exc:
                    row.status, row.reason = "skipped", str(exc)
                except Exception as exc:  # noqa: BLE001 - the others still run
                    row.status, row.reason = "failed", _reason(exc)
            found = {r.config: (r.backend, r.compile_s) for r in ready}
            timed = _interleaved(ready, s)
    finally:
        for r in ready:
            r.keep.clear()
        ready.clear()
        torch._dynamo.reset()
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for c, result in timed.items():
        row = rows[c]
        if isinstance(result, str):
            row.status, row.reason = "failed", result
            continue
        median, p10, p90 = percentiles(result)
        flops = block_flops(shape.batch, shape.seq, shape.heads, shape.head_dim, c.phase)
        row.median_ms, row.p10_ms, row.p90_ms, row.iters = median, p10, p90, len(result)
        row.samples = [float(t) for t in result]  # kept and recorded: the speed test reads them
        row.tflops = tflops(flops, median)
        row.backend, row.compile_s = found[c]
    return [rows[c] for c in configs]


def time_config(attn: str, mode: str, phase: str, shape: BenchShape, **settings) -> TimingRow:
    """Time one configuration alone (keyword settings of :class:`BenchSettings`)."""
    return time_round([Config(attn, mode, phase)], BenchSettings(shape=shape, **settings))[0]


# --------------------------------------------------------------------------
# plans and summaries
# --------------------------------------------------------------------------


def plan(attns: list[str], modes: list[str], phases: list[str]) -> Iterator[tuple[str, str, str]]:
    """Configurations in timing order: per phase (one interleaved round), per attention,
    per mode."""
    for phase in phases:
        for attn in attns:
            for mode in modes:
                yield attn, mode, phase


def rounds(attns: list[str], modes: list[str], phases: list[str]) -> list[list[Config]]:
    """The configurations of each phase: what one round times interleaved."""
    return [[Config(a, m, p) for a in attns for m in modes] for p in phases]


def baseline_eager_ratio(
    row: TimingRow, rows: list[TimingRow], baseline: str = "baseline"
) -> float | None:
    """`row`'s median over the baseline's eager median, same phase and backend (or None)."""
    if row.status != "ok" or row.median_ms is None:
        return None
    for r in rows:
        if (
            r.attn == baseline
            and r.mode == "eager"
            and r.phase == row.phase
            and r.backend == row.backend
            and r.status == "ok"
            and r.median_ms
        ):
            return row.median_ms / r.median_ms
    return None
