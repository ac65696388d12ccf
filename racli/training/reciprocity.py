"""Recording the reciprocity measures of a model while it trains.

Design notes: docs/training.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from racli.store.recorder import Recorder

ABLATION_CHOICES = ("every", "ends", "never")


PRECISION_CHOICES = ("auto", "float32")


@dataclass(frozen=True)
class MeasureSettings:
    batches: int = 1  # evaluation batches measured; 0 disables the measures
    rows: int = 1  # sequences per batch; 0: the whole batch
    queries: int = 256  # folded RA: query rows per sequence; 0: every row
    precision: str = "auto"  # auto (bf16 forward on CUDA) | float32
    ablation: str = "ends"  # every | ends | never

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> MeasureSettings:
        """From the `gates` section of ra.yaml (as a dict); missing keys take the defaults."""
        d = d or {}
        s = cls(
            batches=int(d.get("measure_batches", cls.batches)),
            rows=int(d.get("measure_rows", cls.rows)),
            queries=int(d.get("measure_queries", cls.queries)),
            precision=str(d.get("measure_precision", cls.precision)),
            ablation=str(d.get("ablation", cls.ablation)),
        )
        if (
            min(s.batches, s.rows, s.queries) < 0
            or s.ablation not in ABLATION_CHOICES
            or s.precision not in PRECISION_CHOICES
        ):
            raise ValueError(f"bad measure settings {s}")
        return s

    def ablate_at(self, step: int, final: bool) -> bool:
        return self.ablation == "every" or (self.ablation == "ends" and (step == 0 or final))


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), first and last included (all when k >= n)."""
    if k >= n or k == 0:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def measured_batches(batches: Sequence, settings: MeasureSettings) -> list:
    """`settings.batches` of the evaluation batches and `settings.rows` sequences of each,
    spread evenly (the evaluation windows run in order through the validation split, so
    spreading them samples all of it); the same ones at every evaluation."""
    batches = list(batches)
    if settings.batches == 0:
        return []
    out = []
    for b in _spread(len(batches), settings.batches):
        x, y = batches[b]
        rows = _spread(x.shape[0], settings.rows) if settings.rows else list(range(x.shape[0]))
        out.append((x[rows], y[rows]))
    return out


def has_measures(model: torch.nn.Module) -> bool:
    from racli_models.attention import RABetaAttention, SDPAGateAttention, _FoldedRA

    kinds = (_FoldedRA, RABetaAttention, SDPAGateAttention)
    return any(isinstance(m, kinds) for m in model.modules())


def forward_dtype(device: torch.device, precision: str, ablation: bool) -> torch.dtype | None:
    """The autocast dtype of the measured forward: bf16 on CUDA under ``auto`` (when the
    device has it), else None (float32); None with the ablation unless it has a pass of
    its own (`racli_models.measures.ABLATION_ALONE`)."""
    from racli_models import measures

    if (ablation and not measures.ABLATION_ALONE) or precision != "auto" or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else None


def measure(
    model: torch.nn.Module,
    batches: Sequence,
    *,
    ablation: bool,
    queries: int = 0,
    precision: str = "float32",
) -> dict[int, dict[str, list[float]]]:
    """Layer -> name -> values of `racli_models.measures.model_measures`, with the
    model's train flags and buffers put back afterwards."""
    from racli_models.measures import model_measures

    flags = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    device = next(model.parameters()).device
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        model.eval()
        # float32 statistics (and the ablation's losses) without TF32's 10-bit mantissa;
        # a bf16 forward does not use TF32 anyway
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            values = model_measures(
                model,
                batches,
                ablation=ablation,
                queries=queries,
                forward_dtype=forward_dtype(device, precision, ablation),
            )
        return {
            layer: {name: v.tolist() for name, v in named.items()}
            for layer, named in values.items()
        }
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for m, flag in flags.items():
            m.training = flag
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def record_measures(
    model: torch.nn.Module,
    batches: Sequence,
    recorder: Recorder,
    step: int,
    settings: MeasureSettings | Mapping[str, Any] | None = None,
    *,
    final: bool = False,
    elapsed_s: float | None = None,
) -> float:
    """Measure `model` on `batches` and record the values at `step`; returns the seconds
    it took (0.0 when disabled or when the model has nothing to measure)."""
    if not isinstance(settings, MeasureSettings):
        settings = MeasureSettings.from_mapping(settings)
    if settings.batches == 0 or not batches or not has_measures(model):
        return 0.0
    t0 = time.perf_counter()
    values = measure(
        model,
        measured_batches(batches, settings),
        ablation=settings.ablate_at(step, final),
        queries=settings.queries,
        precision=settings.precision,
    )
    dt = time.perf_counter() - t0  # .tolist() above waited for the device
    if values:
        recorder.gates(step, values)
    recorder.metric(step, "measure_s", dt, elapsed_s)
    return dt
