"""Shell completion of option values and run ids (`ra --install-completion` sets it up).

Typer calls these with the partial command line parsed into `ctx` and the word being
completed; each returns (value, help) pairs and typer keeps those that start with the
word. Fixed lists (attention names, metrics, launchers) need nothing; model presets
and the default store come from ra.yaml (loaded only while completing); run ids and
tags come from racli.store.recent, which reads the last runs without writing. A
completer never raises: what cannot be read completes nothing. No torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import typer

from racli.names import ATTENTION_NAMES

Items = list[tuple[str, str]]

METRICS = (
    ("val_loss", "final validation loss of train runs"),
    ("tokens_per_s", "training throughput of train runs"),
    ("ms", "bench timings, best mode vs best mode"),
)
LAUNCHERS = (
    ("local", "the GPUs of this host"),
    ("slurm", "one Slurm job per seed (submitit)"),
    ("ray", "one Ray task per seed"),
)
TOKENIZERS = (
    ("gpt2", "GPT-2 BPE through tiktoken, 50,257 tokens"),
    ("bytes", "UTF-8 bytes, 256 tokens"),
    ("train:32768", "a byte-level BPE trained on the corpus (train:VOCAB)"),
)
MODES = (
    ("eager", "plain PyTorch"),
    ("compile", "torch.compile"),
    ("cuda_graph", "one captured CUDA graph"),
    ("all", "the three modes"),
)
PHASES = (("fwd", "forward"), ("fwd_bwd", "forward and backward"), ("both", "fwd and fwd_bwd"))
KINDS = (("train", ""), ("bench", ""), ("calibration", ""))
STATUSES = tuple(
    (s, "") for s in ("running", "finished", "failed", "interrupted", "diverged", "crashed")
)


def _fixed(items: Sequence[tuple[str, str]]) -> Callable[[str], Items]:
    def complete(incomplete: str) -> Items:
        return [(v, h) for v, h in items if v.startswith(incomplete)]

    return complete


def _comma_list(
    items: Sequence[tuple[str, str]], *, repeats: bool = False
) -> Callable[[str], Items]:
    """A completer of comma lists ("baseline,ra<TAB>"): the last item is completed, the
    ones before are kept; names already listed are not offered again unless `repeats`."""

    def complete(incomplete: str) -> Items:
        head, _, last = incomplete.rpartition(",")
        done = set(head.split(",")) if head else set()
        prefix = f"{head}," if head else ""
        return [
            (prefix + v, h) for v, h in items if v.startswith(last) and (repeats or v not in done)
        ]

    return complete


_ATTN_HELP = {
    "baseline": "standard SDPA attention (nanoGPT style)",
    "ra_v5": "reciprocal attention v5, tied",
    "ra_v5_untied": "ablation: RA v5's layout from a free projection",
    "ra_beta": "learned-beta RA: two attention calls",
    "sdpa_gate": "control: sigmoid-gated SDPA output",
}
ATTENTIONS = tuple((name, _ATTN_HELP.get(name, "")) for name in ATTENTION_NAMES)

complete_attention = _fixed(ATTENTIONS)
complete_attentions = _comma_list(ATTENTIONS)  # ra bench --attn baseline,ra_v5
complete_arms = _comma_list(ATTENTIONS, repeats=True)  # ra experiment (A/A repeats a name)
complete_metric = _fixed(METRICS)
complete_launcher = _fixed(LAUNCHERS)
complete_tokenizer = _fixed(TOKENIZERS)
complete_modes = _comma_list(MODES)
complete_phase = _fixed(PHASES)
complete_kind = _fixed(KINDS)
complete_status = _fixed(STATUSES)


# ---- values that come from ra.yaml or the store (read only while completing) -------------


def _given(ctx: typer.Context | None, name: str) -> Any:
    """The value of option `name` given on the line so far, on this command or a parent."""
    while ctx is not None:
        value = (ctx.params or {}).get(name)
        if value not in (None, (), []):
            return value
        ctx = ctx.parent
    return None


def _config(ctx: typer.Context | None):
    from racli.config import load_config

    return load_config(_given(ctx, "config"))


def _db(ctx: typer.Context | None) -> str:
    """The store the command line names: --db, else RA_DB, else ra.yaml's db."""
    import os

    given = _given(ctx, "db") or os.environ.get("RA_DB")
    return given or _config(ctx).db


def _safely(produce: Callable[[], Items]) -> Items:
    try:
        return produce()
    except Exception:  # noqa: BLE001 - a bad ra.yaml or store completes nothing
        return []


def complete_model(ctx: typer.Context, incomplete: str) -> Items:
    """`auto` and the model presets of ra.yaml (with their size)."""

    def produce() -> Items:
        cfg = _config(ctx)
        items = [("auto", "gpt2 on CUDA, tiny on the CPU")]
        for name, p in cfg.models.items():
            items.append((name, f"{p.n_layer} layers, {p.n_head} heads, {p.n_embd} wide"))
        return [(v, h) for v, h in items if v.startswith(incomplete)]

    return _safely(produce)


def complete_shape(ctx: typer.Context, incomplete: str) -> Items:
    """`auto` and the bench shapes of ra.yaml."""

    def produce() -> Items:
        shapes = _config(ctx).bench.shapes
        items = [("auto", "gpt2 on CUDA, tiny on the CPU")] + [
            (name, f"B={s.batch} T={s.seq} H={s.heads} D={s.head_dim}")
            for name, s in shapes.items()
        ]
        return [(v, h) for v, h in items if v.startswith(incomplete)]

    return _safely(produce)


def _run_help(r: dict) -> str:
    words = [r["kind"], r["attn"] or "", r["status"]]
    if r["seed"] is not None:
        words.append(f"seed {r['seed']}")
    words.append(r["started_at"])
    if r["tag"]:
        words.append(f"tag {r['tag']}")
    return " ".join(w for w in words if w)


def _runs(ctx: typer.Context, incomplete: str, kind: str | None, skip: Iterable = ()) -> Items:
    def produce() -> Items:
        from racli.store.recent import recent_runs

        taken = {str(i) for i in skip}
        return [
            (str(r["id"]), _run_help(r))
            for r in recent_runs(_db(ctx), kind=kind)
            if str(r["id"]).startswith(incomplete) and str(r["id"]) not in taken
        ]

    return _safely(produce)


def complete_run_id(ctx: typer.Context, incomplete: str) -> Items:
    """The last runs of the store, newest first by start time (ids already given on the
    line are left out)."""
    given = []
    for name in ("run_ids", "run_a", "run_id"):
        value = (ctx.params or {}).get(name) if ctx is not None else None
        given += list(value) if isinstance(value, (list, tuple)) else [value] if value else []
    return _runs(ctx, incomplete, None, given)


def complete_train_run(ctx: typer.Context, incomplete: str) -> Items:
    """The last train runs (`ra gates --run`, `ra train --resume`)."""
    return _runs(ctx, incomplete, "train")


def complete_train_runs(ctx: typer.Context, incomplete: str) -> Items:
    """A comma list of train run ids (`ra gates --runs 12,14,<TAB>`)."""
    head, _, last = incomplete.rpartition(",")
    done = head.split(",") if head else []
    prefix = f"{head}," if head else ""
    return [(prefix + v, h) for v, h in _runs(ctx, last, "train", done)]


def complete_tag(ctx: typer.Context, incomplete: str) -> Items:
    """The tags of the last runs, most recently used first."""

    def produce() -> Items:
        from racli.store.recent import recent_tags

        return [(t, "") for t in recent_tags(_db(ctx)) if t.startswith(incomplete)]

    return _safely(produce)


#: `ra runs --sort` fields (racli.store.queries.SORT_FIELDS; a test keeps them in step)
SORT_FIELDS = (
    ("started", "start time"),
    ("finished", "end time"),
    ("id", "run id"),
    ("kind", ""),
    ("attn", ""),
    ("status", ""),
    ("seed", ""),
    ("tag", ""),
    ("val_loss", "final validation loss"),
    ("tokens_per_s", "training throughput"),
    ("iterations", ""),
    ("tokens", ""),
    ("epochs", ""),
    ("train_seconds", ""),
)
# a value starting with '-' (descending) is read by the shell as an option, so completion
# offers the fields; `--sort -FIELD` is typed
complete_sort = _fixed(SORT_FIELDS)
