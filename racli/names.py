"""Names and small parsers shared by config validation, training, bench and the tools.

One home for each rule:

- attention variant names (`ATTENTION_NAMES`; the model registry
  `racli_models.ATTENTION` holds the same names, a test keeps them in step);
- SDPA backend names and their torch kernels (`SDPA_BACKENDS`,
  `check_sdpa_backend`, `sdpa_backend_context`);
- the device rule (`resolve_device`: auto, cpu, cuda, cuda:N);
- comma lists (`comma_list`);
- run tags (`check_tag`: text the store can hold).

This module imports neither torch nor the database (torch is imported inside
the functions that need it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from racli.errors import BadInput

ATTENTION_NAMES = ("baseline", "ra_v5", "ra_v5_untied", "ra_beta", "sdpa_gate")
#: the variants that split the head dim D = D_std + R (model.ra_rank; racli_models.config.RANKED)
RANKED_ATTENTION = ("ra_v5", "ra_v5_untied")

#: recorded in every train run's config: a seed fixes the initial value of every weight (drawn
#: from (seed, parameter name), racli_models.GPT) and the batch stream (BatchSampler), so two
#: variants trained on one seed start from the same shared weights and see the same batches
PAIRING_RULE = {"init": "seed+name", "batches": "seed"}

SDPA_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math", "fa4")
#: not torch's: cuDNN's forward with FlashAttention-4's backward (racli_models.flash4)
FA4 = "fa4"
# backend name -> member of torch.nn.attention.SDPBackend (fa4 has none)
SDPA_KERNELS = {
    "flash": "FLASH_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
}

DEVICES = ("auto", "cpu", "cuda", "cuda:N")


# ---------------------------------------------------------------------------- lists


def comma_list(text: str | Iterable[str] | None) -> list[str]:
    """`"a, b,,c"` -> ["a", "b", "c"]; a list or tuple gives its items, stripped; empty
    items are dropped, the order and repeats are kept."""
    if text is None:
        return []
    if isinstance(text, str):
        items = text.split(",")
    else:
        items = [str(t) for t in text]
    return [t.strip() for t in items if t.strip()]


# ---------------------------------------------------------------------------- tags

TAG_MAX = 255


def check_utf8(text: str, option: str) -> None:
    """BadInput for text that is not valid UTF-8: a shell passes such bytes as lone
    surrogates, which the store (UTF-8 alone) can neither hold nor look up."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start].encode("utf-8", "surrogateescape")
        raise BadInput(
            f"{option} is not valid UTF-8 text (byte 0x{bad.hex()} at character "
            f"{exc.start + 1}): give it as UTF-8"
        ) from None


def check_tag(
    tag: str | None, option: str = "--tag", max_len: int | None = TAG_MAX, *, edges: bool = True
) -> None:
    """BadInput for a tag the store cannot hold: empty or blank, not valid UTF-8 (a shell passes such
    bytes as lone surrogates), a NUL character (PostgreSQL refuses it), or (unless
    `max_len` is None) longer than 255 characters (the column's width); with `edges`, also
    one that begins or ends with white space (filters match a tag exactly, so `ra runs
    --tag x` would never find ' x')."""
    if tag is None:
        return
    if not tag.strip():
        raise BadInput(f"{option} is empty: give some text, or leave the option out")
    if edges and tag != tag.strip():
        raise BadInput(
            f"{option} {tag!r} begins or ends with white space: filters match a tag "
            "exactly, give it without"
        )
    check_utf8(tag, option)
    if "\x00" in tag:
        raise BadInput(f"{option} holds a NUL character")
    if max_len is not None and len(tag) > max_len:
        raise BadInput(f"{option} is {len(tag)} characters long (at most {max_len})")


# ---------------------------------------------------------------------------- attention


def check_attention(name: str) -> None:
    """BadInput for a name that is no attention variant."""
    if name not in ATTENTION_NAMES:
        raise BadInput(f"unknown attention '{name}' (valid: {', '.join(sorted(ATTENTION_NAMES))})")


def check_ra_rank(attn: str, ra_rank: int, head_dim: int) -> None:
    """BadInput when `attn` splits its heads (RANKED_ATTENTION) and model.ra_rank leaves no
    standard part: 0 < ra_rank < head_dim. The other variants do not use ra_rank."""
    if attn in RANKED_ATTENTION and not 0 < ra_rank < head_dim:
        raise BadInput(
            f"model.ra_rank: must be between 1 and head_dim-1 = {head_dim - 1} for {attn} "
            f"(head_dim = n_embd / n_head = {head_dim}), got {ra_rank}"
        )


def split_arm(name: str) -> tuple[str, int | None]:
    """``baseline#2`` -> ("baseline", 2), an arm of an experiment that repeats a variant
    (`ra experiment --attn baseline,baseline`); ``ra_v5`` -> ("ra_v5", None). BadInput
    for an unknown variant or a number that is not a positive integer."""
    variant, sep, number = name.partition("#")
    check_attention(variant)
    if not sep:
        return variant, None
    if not (number.isascii() and number.isdigit()) or int(number) < 1:
        raise BadInput(
            f"bad arm '{name}': an arm of a repeated variant is NAME#N with N >= 1, "
            f"e.g. {variant}#2"
        )
    return variant, int(number)


# ---------------------------------------------------------------------------- SDPA backends


def check_sdpa_backend(name: str | None) -> str:
    """The canonical backend name (`auto` for None); BadInput for an unknown one."""
    name = (name or "auto").strip().lower()
    if name not in SDPA_BACKENDS:
        raise BadInput(f"unknown SDPA backend '{name}' (valid: {', '.join(SDPA_BACKENDS)})")
    return name


def fa4_head_size_ok(head_dim: int) -> bool:
    """Whether FA4 takes heads of `head_dim`: 8..256, a multiple of 8 (racli_models.flash4
    checks the same inside its operator, which cannot import ra)."""
    return head_dim % 8 == 0 and 8 <= head_dim <= 256


def sdpa_kernel_of(name: str):
    """The `torch.nn.attention.SDPBackend` member of a backend name (not `auto` or `fa4`)."""
    from torch.nn.attention import SDPBackend

    return getattr(SDPBackend, SDPA_KERNELS[name])


def check_sdpa_backend_on_cpu(name: str, head_dim: int) -> None:
    """BadInput when the forced backend `name` has no CPU kernel for attention of head size
    `head_dim` (cudnn and efficient are CUDA's alone): found by one tiny call, before a
    run is recorded, rather than as a failed run. CUDA backends are left to the run."""
    if name == "auto":
        return
    if name == FA4:
        raise BadInput("train.sdpa_backend=fa4 runs on a CUDA GPU of compute capability 9.x only")
    import torch
    import torch.nn.functional as F

    q = torch.zeros(1, 1, 4, head_dim)
    try:
        with sdpa_backend_context(name):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError:
        raise BadInput(
            f"train.sdpa_backend={name} has no kernel on the CPU (auto, flash and math run there)"
        ) from None


def sdpa_backend_context(name: str):
    """`sdpa_kernel([backend])` for a forced backend; a no-op for `auto`; for `fa4`, causal
    attention through racli_models.flash4 (SDPA's other calls keep torch's choice)."""
    if name == "auto":
        return contextlib.nullcontext()
    if name == FA4:
        from racli_models import flash4

        return flash4.active()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel([sdpa_kernel_of(name)])


# ---------------------------------------------------------------------------- devices


def device_name(name: str | None) -> str:
    """A device's name as given ('auto' for None), lower case; BadInput for an empty or
    unknown one. Nothing about this machine is looked at."""
    if name is not None and not name.strip():
        raise BadInput(f"--device is empty (valid: {', '.join(DEVICES)})")
    name = (name or "auto").strip().lower()
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise BadInput(f"unknown device '{name}' (valid: {', '.join(DEVICES)})")
    return name


def resolve_device(name: str | None) -> str:
    """'auto' (or None) -> 'cuda' when available else 'cpu'; 'cpu', 'cuda' and 'cuda:N' as
    given. Unknown names, and CUDA (or device N) asked for but absent, are BadInput."""
    name = device_name(name)
    if name == "cpu":
        return "cpu"
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise BadInput(f"--device {name}: CUDA is not available on this machine")
    if name.startswith("cuda:"):
        index = name.split(":", 1)[1]
        if not (index.isascii() and index.isdigit()) or int(index) >= torch.cuda.device_count():
            raise BadInput(
                f"--device {name}: no such CUDA device ({torch.cuda.device_count()} present)"
            )
    return name


def device_type(device: str) -> str:
    """'cuda:1' -> 'cuda'; 'cpu' -> 'cpu'."""
    return device.split(":")[0]


# ---------------------------------------------------------------------------- plot paths


MAX_RUN_ID = 2**63 - 1
#: the most timed repeats or warm-up steps of one bench configuration
MAX_BENCH_STEPS = 100_000
#: the largest seed: the store keeps seeds in a signed 64-bit INTEGER column
MAX_SEED = 2**63 - 1


def check_seed(seed: int, option: str = "--seed") -> None:
    """BadInput unless 0 <= seed <= MAX_SEED (the rule of every seed option)."""
    if not 0 <= seed <= MAX_SEED:
        raise BadInput(f"{option} must be between 0 and 2^63 - 1, got {seed}")


def check_run_id(run_id: int, option: str = "run id") -> int:
    """``run_id`` unchanged, or BadInput naming ``option`` when it cannot be a run id."""
    if not -MAX_RUN_ID - 1 <= run_id <= MAX_RUN_ID:
        raise BadInput(f"no run with id {run_id} ({option}): run ids are below 2^63")
    return run_id


PRETTY_NAMES = {"baseline": "Baseline", "ra_v5": "RA v5"}


def display_name(attn: str) -> str:
    """``baseline`` -> "Baseline", ``ra_v5`` -> "RA v5", others unchanged."""
    return PRETTY_NAMES.get(attn, attn)


METRIC_NAMES = {
    "val_loss": "Validation loss",
    "train_loss": "Training loss",
    "tokens_per_s": "Throughput (tok/s)",
}


def metric_label(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)
