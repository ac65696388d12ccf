"""ra's training step side by side with nanoGPT's, in one process, on one device.

    python3 tools/vs_nanogpt.py --nanogpt PATH/TO/nanoGPT            # GPT-2 124M, batch 32, CUDA
    python3 tools/vs_nanogpt.py --nanogpt DIR --arms nanogpt,baseline,ra_v5 --rounds 5
    python3 tools/vs_nanogpt.py --nanogpt DIR --bench-py              # also nanoGPT's own bench.py
    python3 tools/vs_nanogpt.py --nanogpt DIR --batch 96 --arms nanogpt+micro=12,baseline+micro=32

PATH/TO/nanoGPT is a checkout of nanoGPT (its `model.py` is imported from there;
nothing of it is part of ra). Every arm builds GPT-2 124M (12 x 768, T = 1024,
the 50,304-token output layer, no biases, no dropout) and runs the same training
step: bf16 autocast, forward with loss, backward, gradient clipping at 1.0,
fused AdamW (each model's own optimizer set-up), `zero_grad(set_to_none=True)`.
The nanoGPT arm runs that step as nanoGPT's train.py does; the ra arms run
ra's own step (`racli_models.step.TrainStep`, what `ra train` runs), which
on CUDA replays the whole step as one CUDA graph after its first call.
Arms:
  nanogpt        nanoGPT's `GPT` and `configure_optimizers`, torch.compile
  baseline       ra's `GPT` with attn=baseline, torch.compile
  ra_v5, ...     any ra attention variant
  ARM+K=V        an ra arm with a model setting changed, e.g. baseline+fused_loss=true,
                 or graph=false: ra's step without its CUDA-graph capture, or
                 inductor.NAME=V: torch._inductor.config.NAME while the arm compiles
                 (e.g. baseline+inductor.coordinate_descent_tuning=true,
                 baseline+inductor.triton.mix_order_reduction=false), or
                 ce.NAME=V: the loss kernel's setting NAME (block, warps, reverse,
                 evict, programs_per_sm: racli_models.loss.settings) in the arm's step
                 (e.g. baseline+ce.block=4096+ce.warps=8+ce.reverse=false+ce.evict=false,
                 the kernel as it was before 2026-12-06)
  ARM+sdpa=NAME  an ra arm under `train.sdpa_backend` NAME, e.g. baseline+sdpa=fa4;
                 with fa4, +fa4qkv=false: the heads through the pair's operators and
                 their gradients concatenated, instead of the default one operator over
                 the [q | k | v] projection (racli_models.flash4.qkv_operator)
  ARM+foldclip=false  an ra arm whose step clips with clip_grad_norm_ (a pass of its
                 own over the gradients), as before 2026-12-06, instead of inside
                 fused AdamW's kernel (racli_models.step.folds_clip)
  ARM+adamwk=false  an ra arm whose optimizer step is torch's fused AdamW instead of
                 ra's AdamW kernel (racli_models.adamw), as before 2026-12-06
  ARM+flat=false an ra arm whose residual stream runs as (B, T, C) between the blocks,
                 as before 2026-12-06, instead of (B*T, C) rows (racli_models.gpt.FLAT)
  ARM+gelumm=false  an ra arm whose MLP runs GELU's backward as torch's ops, as before
                 2026-12-06, instead of inside the GEMM of dy W (racli_models.gelu_mm)
  ARM+sharederf=false  an ra arm whose gelu'(h) writes erf's argument with its former
                 constant, as before 2026-12-07 (racli_models.gelu_mm.SHARED_ERF; the
                 same values; on a GPU Triton computes erf once either way)
  ARM+lnrecompute=false  an ra arm whose layer norms save their float32 output for the
                 backward, as before 2026-12-06, instead of their input and row
                 statistics with the output recomputed (racli_models.gpt.LN_RECOMPUTE)
  ARM+lnform=two_pass  an ra arm whose recomputed layer norms are written as the mean
                 and the mean of the centred square instead of var_mean; =native: as
                 var_mean with torch's layer norm backward (racli_models.gpt.LN_FORM)
  ARM+f32grads=false  an ra arm compiled without ra's graph pass: its weight gradients
                 cast from bf16 by kernels of their own, as before 2026-12-06, instead of
                 written in float32 by their GEMMs (racli_models.compiler)
  ARM+micro=N    any arm, nanogpt included: the step's `--batch` sequences in
                 micro-batches of N (gradient accumulation, each loss scaled by
                 1/accumulation steps, as nanoGPT's train.py and `ra train` do);
                 N divides `--batch`. Every arm still trains on `--batch` sequences
                 a step, so the ratios compare equal work: each tool at its own
                 best (or default) micro-batch for the same global batch.
The arms are compiled and warmed up first, then timed in `--rounds` rounds, the
order reversed every other round (A B C, C B A, ...), `--steps` steps per arm
and round with CUDA events around each step. Reported per arm: median and
p10/p90 ms per step over all timed steps, tokens/s from the median, and the
speed relative to the first arm (its median time over the arm's), with the
smallest and largest per-round ratio beside it, and on a GPU that NVML can read
(`nvidia-ml-py`, the `gpu` extra) the median SM clock and power while the arm's
timed steps ran, with the card's power limit: on a card held at its power limit
a step that leaves the SMs less idle runs at a lower clock, so part of a ratio
can be the clock; and the energy a step (the card's energy counter read as each
arm's timed steps begin and end, idle gaps included), which sets the step's time
at the power limit. The counter moves in steps (on an H200 every 100 ms, about
69 J at 690 W), so the energy a step is printed with its standard deviation from
that rounding, "(+-0.77)" at 5 rounds of 20 steps: arms closer than about twice
that are not told apart by it. The reads run on a thread of their own (four NVML
calls every 50 ms, which release the GIL while they wait); `--no-clocks` leaves
them out. The figures are JSON on stdout's
last line and in `--json PATH` (by default $OUT/vs_nanogpt.json when $OUT is set, so
several runs in one folder each need their own path).

`--bench-py` also runs nanoGPT's unmodified `bench.py` (random data, compile,
the nanogpt arm's micro-batch) in a subprocess afterwards and reports the ms per iteration it
prints, for a reader who wants nanoGPT's own number (it has no clipping and
times 20 steps with one wall clock).

On the CPU (`--device cpu --preset tiny --no-compile`) the script only checks
that the arms run: a CPU time says nothing about the GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import types
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from racli.bench.inputs import percentiles  # noqa: E402
from racli.errors import BadInput  # noqa: E402
from racli.names import ATTENTION_NAMES, check_sdpa_backend, comma_list  # noqa: E402
from racli.training.clocks import ClockSampler  # noqa: E402
from racli.training.trainer import step_context  # noqa: E402
from racli_models import GPT, GPTConfig, adamw, compiler, flash4, gelu_mm, gpt  # noqa: E402
from racli_models.loss import check_settings as check_loss_settings  # noqa: E402
from racli_models.loss import settings as loss_settings  # noqa: E402
from racli_models.step import TrainStep  # noqa: E402

#: arm settings that set one of ra's model switches in the arm's step: name -> (its
#: context manager, the values it takes)
SWITCHES = {
    "flat": (gpt.flat_residual, (True, False)),
    "gelumm": (gelu_mm.kernel, (True, False)),
    "sharederf": (gelu_mm.shared_erf, (True, False)),
    "lnrecompute": (gpt.ln_recompute, (True, False)),
    "lnform": (gpt.ln_form, gpt.LN_FORMS),
}
STEP_KEYS = (
    "graph",
    "micro",
    "sdpa",
    "fa4qkv",
    "foldclip",
    "adamwk",
    "f32grads",
    *SWITCHES,
)  # not the model's
INDUCTOR = "inductor."  # arm settings of torch._inductor.config while the arm compiles
CE = "ce."  # arm settings of the loss kernel (racli_models.loss.settings) in the arm's step

PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512),
}
LR, WD, BETAS, CLIP = 6e-4, 0.1, (0.9, 0.95), 1.0


def load_nanogpt(folder: Path):
    path = folder / "model.py"
    if not path.is_file():
        raise SystemExit(f"vs_nanogpt: no model.py in {folder} (give a nanoGPT checkout)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_arm(arm: str) -> tuple[str, dict]:
    """`ra_v5+fused_loss=1+x=2` -> ("ra_v5", {"fused_loss": 1, "x": 2})."""
    name, *sets = arm.split("+")
    extra = {}
    for s in sets:
        key, sep, value = s.partition("=")
        if not sep:
            raise SystemExit(f"vs_nanogpt: bad setting '{s}' in arm '{arm}' (KEY=VALUE)")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    if name != "nanogpt" and name not in ATTENTION_NAMES:
        raise SystemExit(
            f"vs_nanogpt: unknown arm '{name}' (nanogpt, {', '.join(ATTENTION_NAMES)})"
        )
    if "sdpa" in extra:
        try:
            extra["sdpa"] = check_sdpa_backend(str(extra["sdpa"]))
        except BadInput as exc:
            raise SystemExit(f"vs_nanogpt: {exc}") from None
    if "fa4qkv" in extra and (type(extra["fa4qkv"]) is not bool or extra.get("sdpa") != "fa4"):
        raise SystemExit(f"vs_nanogpt: fa4qkv in arm '{arm}' is true or false, with sdpa=fa4")
    for key in ("foldclip", "adamwk", "f32grads"):
        if key in extra and type(extra[key]) is not bool:
            raise SystemExit(f"vs_nanogpt: {key} in arm '{arm}' is true or false")
    for key, (_, values) in SWITCHES.items():
        if key in extra and not any(
            type(extra[key]) is type(v) and extra[key] == v for v in values
        ):
            shown = " or ".join(json.dumps(v) for v in values)
            raise SystemExit(f"vs_nanogpt: {key} in arm '{arm}' is {shown}")
    if name == "nanogpt" and set(extra) - {"micro"}:
        raise SystemExit("vs_nanogpt: the nanogpt arm takes no settings but micro=N")
    if "micro" in extra and (type(extra["micro"]) is not int or extra["micro"] < 1):
        raise SystemExit(f"vs_nanogpt: micro in arm '{arm}' is not a positive whole number")
    try:
        check_loss_settings(under(extra, CE))
    except ValueError as exc:
        raise SystemExit(f"vs_nanogpt: arm '{arm}': {exc}") from None
    for setting in under(extra, INDUCTOR):
        import torch._inductor.config as inductor_config

        if setting not in inductor_config.get_config_copy():  # dotted: triton.NAME
            raise SystemExit(f"vs_nanogpt: torch._inductor.config has no '{INDUCTOR}{setting}'")
    return name, extra


def under(settings: dict, prefix: str) -> dict:
    """The arm settings named PREFIX + NAME, by NAME."""
    return {k[len(prefix) :]: v for k, v in settings.items() if k.startswith(prefix)}


def build_arm(arm: str, shape: dict, device: str, nanogpt_mod):
    name, extra = parse_arm(arm)
    extra = {
        k: v for k, v in extra.items() if k not in STEP_KEYS and not k.startswith((INDUCTOR, CE))
    }
    torch.manual_seed(1234)
    fused = device.startswith("cuda")
    if name == "nanogpt":
        cfg = nanogpt_mod.GPTConfig(**shape, dropout=0.0, bias=False)
        model = nanogpt_mod.GPT(cfg).to(device)
        with contextlib.redirect_stdout(sys.stderr):  # it prints its parameter groups
            opt = model.configure_optimizers(WD, LR, BETAS, "cuda" if fused else "cpu")
    else:
        cfg = GPTConfig(**shape, attn=name, bias=False, dropout=0.0, **extra)
        model = GPT(cfg).to(device)
        opt = model.configure_optimizer(WD, LR, BETAS, fused=fused)
    n_params = sum(p.numel() for p in model.parameters())
    return model, opt, n_params


def own_forward(model: torch.nn.Module, tag: str) -> None:
    """Give `model` a forward of its own code object, so that torch.compile compiles it
    afresh (under the arm's inductor settings) instead of reusing what an earlier arm of
    the same model class compiled: dynamo keeps compiled code per code object."""
    base = type(model).forward
    code = base.__code__.replace(co_name=f"forward_{abs(hash(tag))}")
    fn = types.FunctionType(
        code, base.__globals__, code.co_name, base.__defaults__, base.__closure__
    )
    model.forward = types.MethodType(fn, model)


def autocast_of(
    device: str,
    sdpa: str = "auto",
    fa4qkv: bool | None = None,
    ce: dict | None = None,
    switches: dict | None = None,
):
    """The step's context, as `ra train`'s: bf16 autocast on CUDA, the SDPA backend `sdpa`
    (`fa4qkv`: under fa4, whether its [q | k | v] operator serves; None: ra's default),
    the loss kernel's settings `ce` (racli_models.loss.settings; None: ra's), and the model
    switches `switches` ({name in SWITCHES: on}; those not named: ra's defaults)."""
    if fa4qkv is None and not ce and not switches:
        return partial(step_context, device.startswith("cuda"), sdpa)

    def context() -> contextlib.ExitStack:
        stack = step_context(device.startswith("cuda"), sdpa)
        if fa4qkv is not None:
            stack.enter_context(flash4.qkv_operator(fa4qkv))
        stack.enter_context(loss_settings(**(ce or {})))
        for name, on in (switches or {}).items():
            stack.enter_context(SWITCHES[name][0](on))
        return stack

    return context


def make_step(fwd, opt, params, device: str, micro: int | None = None):
    """nanoGPT's training step (train.py, without its gradient scaler, a no-op in bf16):
    the batch in micro-batches of `micro` sequences, each loss divided by their count."""
    autocast = autocast_of(device)

    def step(x, y):
        n = micro or x.shape[0]
        accum = x.shape[0] // n
        for i in range(accum):
            with autocast():
                _, loss = fwd(x[i * n : (i + 1) * n], y[i * n : (i + 1) * n])
                loss = loss / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def _one_step(step, batches, counter) -> None:
    step(*batches[next(counter) % len(batches)])


class Timer:
    """Per-step times in ms: CUDA events on CUDA, perf_counter on the CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def time(self, fn, n: int) -> list[float]:
        if not self.cuda:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
            return out
        ev = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(n)
        ]
        for a, b in ev:
            a.record()
            fn()
            b.record()
        torch.cuda.synchronize()
        return [a.elapsed_time(b) for a, b in ev]


def release_arms(steps: dict) -> None:
    """Drop the arms' steps, models and optimizers, and give their GPU memory back (ra's
    steps first free their captured graphs' pools)."""
    for step in steps.values():
        step = getattr(step, "train_step", step)
        if isinstance(step, TrainStep):
            step.release()
    steps.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_bench_py(folder: Path, batch: int) -> dict:
    cmd = [sys.executable, "bench.py", f"--batch_size={batch}", "--real_data=False"]
    res = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, check=False)
    for line in res.stdout.splitlines():
        if line.startswith("time per iteration:"):
            ms = float(line.split(":")[1].split("ms")[0])
            return {"command": " ".join(cmd), "ms_per_iter": ms, "line": line.strip()}
    return {"command": " ".join(cmd), "error": (res.stderr or res.stdout).strip()[-500:]}


def warm_arm(arm: str, args, shape: dict, device: str, nanogpt_mod, batches):
    """Build an arm, compile it and run its warm-up steps (the first compiles and captures
    the step): (step, its info), the warm-up time printed on stderr."""
    model, opt, n_params = build_arm(arm, shape, device, nanogpt_mod)
    name, settings = parse_arm(arm)
    patch = under(settings, INDUCTOR)
    switches = {k: v for k, v in settings.items() if k in SWITCHES}
    if patch or switches:
        own_forward(model, arm)
    # static shapes: an arm at another micro-batch must not turn a shared forward dynamic
    if args.no_compile:
        fwd = model
    elif name == "nanogpt":
        fwd = torch.compile(model, dynamic=False)
    else:  # as ra train compiles: with ra's graph pass (racli_models.compiler)
        fwd = compiler.compile(model, dynamic=False, f32_grads=settings.get("f32grads"))
    params = [p for p in model.parameters() if p.requires_grad]
    micro = settings.get("micro")
    if name == "nanogpt":
        step = make_step(fwd, opt, params, device, micro)
    else:
        step = TrainStep(
            model,
            opt,
            fwd=fwd,
            micro=micro,
            clip=CLIP,
            autocast=autocast_of(
                device,
                settings.get("sdpa", "auto"),
                settings.get("fa4qkv"),
                under(settings, CE),
                switches,
            ),
            graph=bool(settings.get("graph", True)),
            fold_clip=settings.get("foldclip", True),
        )
        if "adamwk" in settings:
            step = with_adamw_kernel(step, settings["adamwk"])
    t0 = time.perf_counter()
    with torch._inductor.config.patch(patch) if patch else contextlib.nullcontext():
        for i in range(args.warmup):
            loss = step(*batches[i % 4])
        float(loss.detach())
    info = {
        "params": n_params,
        "micro": micro or args.batch,
        "warmup_s": round(time.perf_counter() - t0, 1),
    }
    train_step = getattr(step, "train_step", step)
    if isinstance(train_step, TrainStep):
        info["graph"] = train_step._graph is not None
        if train_step.graph_error:
            info["graph_error"] = train_step.graph_error
            print(f"{arm}: CUDA graph capture failed: {train_step.graph_error}", file=sys.stderr)
    print(f"{arm}: {n_params:,} parameters, warm-up {info['warmup_s']} s", file=sys.stderr)
    return step, info


def with_adamw_kernel(step, on: bool):
    """`step` with racli_models.adamw.KERNEL = `on` while it runs (a captured step keeps
    the optimizer it was captured with)."""

    def run(x, y):
        with adamw.kernel(on):
            return step(x, y)

    run.train_step = step
    return run


class _Energy:
    """The energy counter's difference summed over an arm's windows (mJ), and the steps
    and windows it covers."""

    def __init__(self):
        self.mj, self.steps, self.windows = 0.0, 0, 0


class ArmClocks:
    """The GPU's SM clock and power, read every `period` s on a thread of its own while an
    arm's timed steps run (`with clocks.arm(name, steps): ...`), kept by arm. A read in the
    first `settle` s of an arm's window is dropped: the clock follows the power controller,
    which is still answering the arm before. The card's energy counter is read as each
    window opens and closes (the window closes after the steps' synchronize), so the energy
    a step counts everything the card drew while the arm ran, idle gaps included. The
    counter moves in steps (every 100 ms on an H200, about 69 J at 690 W), so a window
    counts one step more or less by where it falls between two: the thread also reads the
    counter and keeps its steps, and `summary` gives the energy's standard deviation from
    that rounding, at most sqrt(windows) x step / 2 over the arm's steps. Nothing is read
    where the sampler cannot read."""

    def __init__(self, sampler, period: float = 0.05, settle: float = 0.1):
        self.sampler, self.period, self.settle = sampler, period, settle
        self.samples: dict[str, list[dict]] = {}
        self.energy: dict[str, _Energy] = {}  # what the counter gave each arm's windows
        self.counter_steps: list[float] = []  # the energy counter's moves seen by read(), mJ
        self._last_mj: float | None = None
        self._current: tuple[str, float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        if self.sampler.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @contextlib.contextmanager
    def arm(self, name: str, steps: int = 0):
        e0 = self.sampler.energy_mj()  # None where the sampler cannot read
        self._current = (name, time.perf_counter())
        try:
            yield
        finally:
            self._current = None
            e1 = self.sampler.energy_mj() if e0 is not None else None
            if e1 is not None and steps > 0:
                kept = self.energy.setdefault(name, _Energy())
                kept.mj += e1 - e0
                kept.steps += steps
                kept.windows += 1

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.read()

    def read(self) -> None:
        mj = self.sampler.energy_mj()
        if mj is not None and self._last_mj is not None and mj != self._last_mj:
            self.counter_steps.append(mj - self._last_mj)
        self._last_mj = mj
        current = self._current
        if current is None or time.perf_counter() - current[1] < self.settle:
            return
        sample = self.sampler.sample()
        if sample and self._current is current:  # still the same arm's window
            self.samples.setdefault(current[0], []).append(sample)

    def summary(self, arm: str) -> dict:
        """Median SM clock (MHz) and power (W) over the arm's reads, and how many; `{}`
        without reads."""
        reads = self.samples.get(arm, [])
        out: dict = {}
        for key in ("sm_clock_mhz", "power_w"):
            values = [r[key] for r in reads if key in r]
            if values:
                out[f"{key}_median"] = round(statistics.median(values), 1)
        if out:
            out["clock_reads"] = len(reads)
        kept = self.energy.get(arm)
        if kept is not None:
            out["energy_j_per_step"] = round(kept.mj / kept.steps / 1e3, 2)
            if self.counter_steps:
                out["energy_j_per_step_sd"] = round(
                    math.sqrt(kept.windows) * self.counter_step_mj() / 2 / kept.steps / 1e3, 2
                )
        return out

    def counter_step_mj(self) -> float:
        """The median of the energy counter's moves between two reads (mJ); where the counter
        moves more often than the reads, several moves count as one, so it errs high."""
        return statistics.median(self.counter_steps) if self.counter_steps else 0.0


def clock_sampler(device: str, off: bool) -> ClockSampler:
    """The device's clock sampler; with `off`, one that reads nothing (the CPU's)."""
    return ClockSampler("cpu" if off else device)


def clock_lines(result: dict, period: float) -> list[str]:
    """The printed lines on the GPU's clock, power and energy while each arm ran; none where
    no arm has clock reads."""
    arms = {arm: a for arm, a in result["arms"].items() if "sm_clock_mhz_median" in a}
    if not arms:
        return []
    limit = result.get("power_limit_w")
    head = f"GPU while each arm ran (medians over reads every {period * 1e3:.0f} ms"
    if limit:
        head += f"; power limit {limit:.0f} W"
    if "energy_counter_step_j" in result:
        head += f"; energy counter steps of {result['energy_counter_step_j']:.0f} J"
    lines = [head + "):"]
    for arm, a in arms.items():
        energy = f", {a['energy_j_per_step']:.2f} J a step" if "energy_j_per_step" in a else ""
        if "energy_j_per_step_sd" in a:
            energy += f" (+-{a['energy_j_per_step_sd']:.2f})"
        lines.append(
            f"  {arm:<26} SM clock {a['sm_clock_mhz_median']:>6.0f} MHz, "
            f"power {a.get('power_w_median', float('nan')):>5.0f} W{energy} "
            f"({a['clock_reads']} reads)"
        )
    return lines


def time_rounds(steps: dict, arms: list[str], batches, args, device: str, clocks=None):
    """`args.rounds` interleaved rounds (the order reversed every other round) of
    `args.steps` timed steps per arm: (every step's ms, each round's median), per arm.
    With `clocks` (an ArmClocks), the GPU's clock and power are read during each arm's steps."""
    timer = Timer(device)
    times: dict[str, list[float]] = {a: [] for a in arms}
    per_round: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(args.rounds):
        for arm in arms if r % 2 == 0 else arms[::-1]:
            counter = itertools.count()
            with clocks.arm(arm, args.steps) if clocks else contextlib.nullcontext():
                ms = timer.time(partial(_one_step, steps[arm], batches, counter), args.steps)
            times[arm] += ms
            per_round[arm].append(statistics.median(ms))
    return times, per_round


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", required=True, type=Path, help="a nanoGPT checkout")
    ap.add_argument("--arms", default="nanogpt,baseline,ra_v5")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per arm and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="gpt2")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--bench-py", action="store_true", help="also run nanoGPT's bench.py")
    ap.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="also write the figures here (default: $OUT/vs_nanogpt.json when $OUT is set)",
    )
    ap.add_argument(
        "--no-clocks",
        action="store_true",
        help="do not read the GPU's clock and power while the arms run",
    )
    args = ap.parse_args(argv)

    arms = comma_list(args.arms)
    parsed = {a: parse_arm(a) for a in arms}  # every arm is checked before any work
    for a, (_, settings) in parsed.items():
        micro = settings.get("micro", args.batch)
        if args.batch % micro:
            raise SystemExit(
                f"vs_nanogpt: micro={micro} in arm '{a}' does not divide --batch {args.batch}"
            )
    if len(set(arms)) != len(arms) or not arms:
        raise SystemExit("vs_nanogpt: give distinct arms")
    target = args.json or (
        Path(os.environ["OUT"], "vs_nanogpt.json") if os.environ.get("OUT") else None
    )
    if target is not None and not target.parent.is_dir():
        given = f"--json {target}" if args.json else f"$OUT={target.parent}"
        raise SystemExit(f"vs_nanogpt: {given}: no folder {target.parent}")
    fa4 = [a for a, (_, settings) in parsed.items() if settings.get("sdpa") == "fa4"]
    # before any arm compiles, not at the fa4 arm's first backward
    if fa4 and args.device.startswith("cuda") and (why := flash4.problem(args.device)):
        raise SystemExit(f"vs_nanogpt: arm '{fa4[0]}': sdpa=fa4 {why}")
    folder = args.nanogpt.resolve()
    nano = [a for a, (name, _) in parsed.items() if name == "nanogpt"]
    mod = load_nanogpt(folder) if nano else None
    device = args.device
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    shape = PRESETS[args.preset]
    T, V = shape["block_size"], shape["vocab_size"]
    g = torch.Generator(device=device).manual_seed(0)
    batches = [
        (
            torch.randint(0, V, (args.batch, T), device=device, generator=g),
            torch.randint(0, V, (args.batch, T), device=device, generator=g),
        )
        for _ in range(4)
    ]

    steps, info = {}, {}
    sampler = clock_sampler(device, args.no_clocks)
    clocks = ArmClocks(sampler)
    try:
        for arm in arms:
            steps[arm], info[arm] = warm_arm(arm, args, shape, device, mod, batches)
        with clocks:
            times, per_round = time_rounds(steps, arms, batches, args, device, clocks)
    except torch.OutOfMemoryError:
        held = torch.cuda.memory_reserved() / 2**30 if torch.cuda.is_available() else 0.0
        raise SystemExit(
            f"vs_nanogpt: out of GPU memory with {len(steps)} of {len(arms)} arms built and "
            f"{held:.0f} GiB held (each ra arm keeps its captured step's memory): give fewer arms"
        ) from None

    first = arms[0]
    tokens = args.batch * T
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "preset": args.preset,
        "batch": args.batch,
        "tokens_per_step": tokens,
        "compile": not args.no_compile,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        **sampler.limits(),
        "arms": {},
    }
    if clocks.counter_steps:
        result["energy_counter_step_j"] = round(clocks.counter_step_mj() / 1e3, 2)
    for arm in arms:
        med, p10, p90 = percentiles(times[arm])
        ratios = [f / a for f, a in zip(per_round[first], per_round[arm], strict=True)]
        result["arms"][arm] = {
            **info[arm],
            "ms_median": round(med, 3),
            "ms_p10": round(p10, 3),
            "ms_p90": round(p90, 3),
            "tokens_per_s": round(tokens / (med / 1e3)),
            f"speed_vs_{first}": round(percentiles(times[first])[0] / med, 4),
            "round_ratio_min": round(min(ratios), 4),
            "round_ratio_max": round(max(ratios), 4),
            **clocks.summary(arm),
        }
    if args.bench_py:  # bench.py has no accumulation: it runs the nanogpt arm's micro-batch
        release_arms(steps)  # bench.py's own process needs the memory the arms hold
        bench_batch = info[nano[0]]["micro"] if nano else args.batch
        result["bench_py"] = run_bench_py(folder, bench_batch)
        if "ms_per_iter" in result["bench_py"]:
            result["bench_py"]["tokens_per_s"] = round(
                bench_batch * T / (result["bench_py"]["ms_per_iter"] / 1e3)
            )

    print(f"{'arm':<28} {'ms/step':>9} {'p10':>9} {'p90':>9} {'tokens/s':>11} {'vs ' + first:>12}")
    for arm, a in result["arms"].items():
        print(
            f"{arm:<28} {a['ms_median']:>9.3f} {a['ms_p10']:>9.3f} {a['ms_p90']:>9.3f} "
            f"{a['tokens_per_s']:>11,} {a[f'speed_vs_{first}']:>8.4f}x "
            f"(rounds {a['round_ratio_min']:.4f}-{a['round_ratio_max']:.4f})"
        )
    for line in clock_lines(result, clocks.period):
        print(line)
    if "bench_py" in result:
        print(f"nanoGPT bench.py: {result['bench_py'].get('line') or result['bench_py']}")
    print(json.dumps(result))
    if target is not None:
        target.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
