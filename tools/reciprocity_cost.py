"""Cost of the reciprocity measures relative to an evaluation, as `ra train` runs them.

    python tools/reciprocity_cost.py --device cuda                 # GPT-2 124M ra_v5, fresh
    python tools/reciprocity_cost.py --device cuda --checkpoint RUN.pt
    python tools/reciprocity_cost.py --device cpu --preset small --eval-batches 2 --batch-size 8
    python tools/reciprocity_cost.py --device cuda --measure-queries 128,256,0 --previous
    python tools/reciprocity_cost.py --checkpoint RUN.pt --data builtin --accuracy
    python tools/reciprocity_cost.py --device cuda --plain-float32 --ablation-accuracy --profile
    python tools/reciprocity_cost.py --device cuda --split-ops --precision float32
    python tools/reciprocity_cost.py --device cuda --stats-ops --shared-ablation --separate-ablation

An evaluation is what the trainer does every `eval_interval` steps: the model
(compiled with --compile, the default on CUDA) in eval mode, bf16 autocast on
CUDA, inside `composed_once()`, over `--eval-batches` batches of
`--batch-size` sequences. The measures are `racli.training.reciprocity.measure`
on `--measure-batches` of those batches cut to `--measure-rows` sequences, with
`--measure-queries` query rows per sequence and `--precision` (defaults: the
`gates` section of ra.yaml): without the ablation (what every evaluation pays)
and with it (step 0 and the end, `gates.ablation: ends`). `--previous` also
times the former defaults (2 batches x 2 sequences, every query row, float32)
with the same code. `--accuracy` compares each setting's rec_share and
rec_effect with the full computation (every query row, float32) on all
`--eval-batches` x `--batch-size` sequences (meaningful on a trained
checkpoint). `--plain-float32` also times each setting with the float32
products in plain float32 (`measures.TENSOR_CORES` off), in the same rounds;
`--split-ops` with the split operands from torch ops instead of the one-launch
kernel (`split32.KERNEL` off); `--stats-ops` with the folded-RA statistics from
about twenty torch passes instead of one Triton kernel per layer
(`measures.STATS_KERNEL` off); `--shared-ablation` with the measures and the
ablation from one float32 forward, the way step 0 and the end were measured
before (`measures.ABLATION_ALONE` off; by default the measures come from their
usual bf16 forward and the ablation from a float32 pass of its own);
`--separate-ablation` that shared forward with the ablated passes run after it
instead of beside it (`measures.INTERLEAVED` off as well).
`--ablation-accuracy` compares the first setting's rec_ablation with float64
(the model in float64 on the same device), for the split TF32 products, plain
float32 and plain TF32. `--profile` prints the kernels of one call of the
first setting, without and with the ablation (torch.profiler). Times are
medians over `--repeats` (with p10 and p90), with CUDA events on CUDA
(perf_counter on CPU). Prints one line per setting and, with --json, the
figures as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from racli.config import load_config, packaged_config_path  # noqa: E402
from racli.training.reciprocity import MeasureSettings, measure, measured_batches  # noqa: E402
from racli_models import GPT, GPTConfig, composed_once  # noqa: E402


def build_model(args, device) -> GPT:
    if args.checkpoint:
        from racli.training import checkpoint as ckpt

        state = ckpt.load(Path(args.checkpoint))
        fields = dict(state.config["model"])
        fields["attn"] = state.config["attn"]
        model = GPT(GPTConfig(**fields))
        model.load_state_dict(state.model)
        return model.to(device)
    cfg = load_config(packaged_config_path())
    fields = cfg.model_fields(args.preset)
    fields["vocab_size"] = args.vocab_size or (50304 if args.preset == "gpt2" else 256)
    torch.manual_seed(0)
    return GPT(GPTConfig(attn=args.attn, **fields)).to(device)


class Timer:
    """Elapsed milliseconds of a block: CUDA events on CUDA, perf_counter otherwise."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, out: list[float]):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            yield
            out.append(1000 * (time.perf_counter() - t0))


def data_batches(args, cfg, T: int, vocab_size: int, device) -> list:
    """The trainer's evaluation batches (evenly spaced windows of the validation split)."""
    from racli.training.batches import eval_batches
    from racli.training.datasets import load_dataset

    dataset = load_dataset(args.data, val_fraction=cfg.train.val_fraction, block_size=T)
    if dataset.vocab_size > vocab_size:
        raise SystemExit(f"the data's vocabulary ({dataset.vocab_size}) exceeds the model's")
    return eval_batches(dataset.val, args.batch_size, T, args.eval_batches, device)


def parse_list(text: str | None, default: int) -> list[int]:
    return [int(v) for v in text.split(",")] if text else [default]


def accuracy(model, batches, setting: MeasureSettings) -> dict:
    """How far a setting's rec_share and rec_effect are from the full computation (every
    query row, float32, on every sequence of `batches`): the largest absolute and the
    median relative difference of rec_share over heads, and the median and largest
    relative difference of rec_effect."""
    full = measure(model, batches, ablation=False, queries=0, precision="float32")
    got = measure(
        model,
        measured_batches(batches, setting),
        ablation=False,
        queries=setting.queries,
        precision=setting.precision,
    )
    share, share_rel, effect = [], [], []
    for layer, named in full.items():
        if "rec_share" not in named:
            continue
        for h, want in enumerate(named["rec_share"]):
            share.append(abs(got[layer]["rec_share"][h] - want))
            share_rel.append(share[-1] / max(want, 1e-30))
        for h, want in enumerate(named["rec_effect"]):
            effect.append(abs(got[layer]["rec_effect"][h] - want) / max(want, 1e-30))
    if not share:
        return {}
    return {
        "rec_share_max_abs_diff": max(share),
        "rec_share_median_rel_diff": statistics.median(share_rel),
        "rec_share_mean_full": statistics.mean(
            v for named in full.values() for v in named.get("rec_share", [])
        ),
        "rec_effect_median_rel_diff": statistics.median(effect),
        "rec_effect_max_rel_diff": max(effect),
    }


def ablation_accuracy(model, batches, setting: MeasureSettings) -> dict:
    """The largest |rec_ablation - float64's| over the layers, per precision of the
    float32 products, and float64's values (the first setting's sequences)."""
    import copy

    from racli_models import measures
    from racli_models.measures import model_measures

    picked = measured_batches(batches, setting)
    reference = copy.deepcopy(model).double()
    with torch.no_grad():
        want = model_measures(reference, picked, queries=setting.queries)
    del reference
    values = {i: float(v["rec_ablation"][0]) for i, v in want.items() if "rec_ablation" in v}
    out = {"float64": values}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, split, allow in (("split_tf32", True, False), ("float32", False, False),
                                   ("tf32", False, True)):  # fmt: skip
            measures.TENSOR_CORES = split
            torch.backends.cuda.matmul.allow_tf32 = allow
            with torch.no_grad():
                got = model_measures(model, picked, queries=setting.queries)
            out[name] = max(abs(float(got[i]["rec_ablation"][0]) - v) for i, v in values.items())
    finally:
        measures.TENSOR_CORES = True
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


def profile(job, label: str) -> None:
    """The kernels of one call of `job`, by CUDA time, and the call's CUDA time in all."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as run

    with run(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        job()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in kernels) / 1000  # not the ops launching them
    print(f"  profile of {label}: {total:.2f} ms of kernels")
    print(events.table(sort_by="self_device_time_total", row_limit=18, max_name_column_width=70))


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median, p10 and p90."""
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
    return statistics.median(values), q[0], q[-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="gpt2", help="model preset of ra.yaml (default gpt2)")
    p.add_argument("--attn", default="ra_v5")
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--checkpoint", default=None, help="a run's checkpoint (.pt) instead")
    p.add_argument(
        "--data",
        default=None,
        help="evaluate on this data's validation split (builtin, a .txt, a prepared folder) "
        "instead of random tokens; use it with --checkpoint",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument(
        "--measure-batches", type=int, default=None, help="default: ra.yaml gates.measure_batches"
    )
    p.add_argument(
        "--measure-rows",
        default=None,
        help="sequences per measured batch, comma-separated settings to time, e.g. 1,2,4 "
        "(default: ra.yaml gates.measure_rows)",
    )
    p.add_argument(
        "--measure-queries",
        default=None,
        help="query rows per sequence, comma-separated, 0 for all, e.g. 128,256,0 "
        "(default: ra.yaml gates.measure_queries)",
    )
    p.add_argument(
        "--precision", choices=("auto", "float32"), default=None, help="default: ra.yaml's"
    )
    p.add_argument(
        "--previous",
        action="store_true",
        help="also time the former defaults: 2 batches x 2 sequences, every row, float32",
    )
    p.add_argument(
        "--accuracy",
        action="store_true",
        help="also compare each setting with the full computation on every evaluation sequence",
    )
    p.add_argument(
        "--plain-float32",
        action="store_true",
        help="also time each setting with plain float32 products (TENSOR_CORES off)",
    )
    p.add_argument(
        "--split-ops",
        action="store_true",
        help="also time each setting with the split TF32 operands from torch ops instead of "
        "the one-launch kernel (split32.KERNEL off)",
    )
    p.add_argument(
        "--stats-ops",
        action="store_true",
        help="also time each setting with the folded-RA statistics from torch ops instead "
        "of one Triton kernel per layer (measures.STATS_KERNEL off)",
    )
    p.add_argument(
        "--shared-ablation",
        action="store_true",
        help="also time the measures and the ablation from one float32 forward "
        "(measures.ABLATION_ALONE off; the default: the ablation from a pass of its own)",
    )
    p.add_argument(
        "--separate-ablation",
        action="store_true",
        help="also time the shared float32 forward with the ablated passes run after it "
        "instead of beside it (measures.ABLATION_ALONE and measures.INTERLEAVED off)",
    )
    p.add_argument(
        "--ablation-accuracy",
        action="store_true",
        help="compare the first setting's rec_ablation with float64, per precision",
    )
    p.add_argument("--profile", action="store_true", help="kernels of one call (CUDA)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--no-ablation",
        dest="ablation",
        action="store_false",
        help="do not time the measures with the per-layer ablation",
    )
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads of torch (default: torch's)"
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)  # on a loaded CPU, 1 thread times more steadily
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = load_config(packaged_config_path())
    gates = cfg.gates
    full_seqs = cfg.train.eval_batches * cfg.train.batch_size  # what `ra train` evaluates
    n_measure = args.measure_batches if args.measure_batches is not None else gates.measure_batches
    precision = args.precision or gates.measure_precision
    settings = [
        MeasureSettings(batches=n_measure, rows=rows, queries=queries, precision=precision)
        for rows in parse_list(args.measure_rows, gates.measure_rows)
        for queries in parse_list(args.measure_queries, gates.measure_queries)
    ]
    if args.previous:
        settings.append(MeasureSettings(batches=2, rows=2, queries=0, precision="float32"))
    model = build_model(args, device).eval()
    T = model.config.block_size
    if args.data:
        batches = data_batches(args, cfg, T, model.config.vocab_size, device)
    else:
        g = torch.Generator().manual_seed(1)
        batches = []
        for _ in range(args.eval_batches):
            idx = torch.randint(0, model.config.vocab_size, (args.batch_size, T + 1), generator=g)
            batches.append((idx[:, :-1].to(device), idx[:, 1:].to(device)))
    compiled = args.compile == "on" or (args.compile == "auto" and cuda)
    fwd = torch.compile(model) if compiled else model
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    )
    timer = Timer(device)

    @torch.no_grad()
    def evaluate():
        with composed_once() if not compiled else contextlib.nullcontext():
            total = torch.zeros((), device=device, dtype=torch.float64)
            for x, y in batches:
                with autocast():
                    total += fwd(x, y)[1].double()
        return total.item()

    # what is timed: the evaluation, and each setting without / with the ablation; all of
    # them in every round (interleaved, so a machine whose speed drifts charges each alike)
    from racli_models import measures, split32

    # variants timed beside each setting in the same rounds:
    # tag -> (asked, {(module, flag): value}, with the ablation only)
    variants = {
        "plain": (args.plain_float32, {(measures, "TENSOR_CORES"): False}, False),
        "ops": (args.split_ops, {(split32, "KERNEL"): False}, False),
        "stats": (args.stats_ops, {(measures, "STATS_KERNEL"): False}, False),
        "shared": (args.shared_ablation, {(measures, "ABLATION_ALONE"): False}, True),
        "separate": (
            args.separate_ablation,
            {(measures, "ABLATION_ALONE"): False, (measures, "INTERLEAVED"): False},
            True,
        ),
    }

    def flagged(flags, job):
        before = {key: getattr(*key) for key in flags}
        for (module, name), value in flags.items():
            setattr(module, name, value)
        try:
            return job()
        finally:
            for (module, name), value in before.items():
                setattr(module, name, value)

    jobs = {"eval": evaluate}
    picked = [measured_batches(batches, s) for s in settings]
    for k, s in enumerate(settings):
        for ablation in (False, True) if args.ablation else (False,):
            kw = dict(ablation=ablation, queries=s.queries, precision=s.precision)
            jobs[(k, ablation)] = functools.partial(measure, model, picked[k], **kw)
            for tag, (asked, flags, ablation_only) in variants.items():
                if asked and (ablation or not ablation_only):
                    jobs[(k, ablation, tag)] = functools.partial(
                        flagged, flags, jobs[(k, ablation)]
                    )
    first: dict = {key: [] for key in jobs}
    for key, job in jobs.items():
        with timer(first[key]):
            job()  # warm-up: compilation; the measures' CUDA graph is captured here
    times: dict = {key: [] for key in jobs}
    for _ in range(args.repeats):
        for key, job in jobs.items():
            with timer(times[key]):
                job()
    ev = statistics.median(times["eval"])
    timed_seqs = args.eval_batches * args.batch_size
    ev_full = ev * full_seqs / timed_seqs  # an evaluation's time is linear in its sequences
    results = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "attn": model.config.attn,
        "n_layer": model.config.n_layer,
        "n_embd": model.config.n_embd,
        "block_size": T,
        "batch_size": args.batch_size,
        "eval_batches": args.eval_batches,
        "compiled": compiled,
        "repeats": args.repeats,
        "eval_ms": ev,
        "eval_ms_scaled": ev_full,
        "eval_sequences_scaled": full_seqs,
        "settings": [],
    }
    print(
        f"{model.config.attn} {model.config.n_layer}x{model.config.n_embd} T={T} on {device}"
        f"{' (' + results['gpu'] + ')' if cuda else ''}: evaluation of {args.eval_batches} "
        f"batches x {args.batch_size} = {ev:.1f} ms (median of {args.repeats})"
    )
    for k, s in enumerate(settings):
        entry = {
            "measure_batches": s.batches,
            "measure_rows": s.rows,
            "measure_queries": s.queries,
            "precision": s.precision,
        }
        for ablation in (False, True) if args.ablation else (False,):
            key = "with_ablation" if ablation else "measures"
            entry[f"{key}_ms"], entry[f"{key}_p10_ms"], entry[f"{key}_p90_ms"] = spread(
                times[(k, ablation)]
            )
            if args.plain_float32:
                entry[f"{key}_plain_float32_ms"] = statistics.median(times[(k, ablation, "plain")])
            for tag, field in (
                ("ops", "split_ops"),
                ("stats", "stats_ops"),
                ("shared", "shared"),
                ("separate", "separate"),
            ):
                if (k, ablation, tag) in times:
                    ms, p10, p90 = spread(times[(k, ablation, tag)])
                    entry[f"{key}_{field}_ms"] = ms
                    entry[f"{key}_{field}_p10_ms"], entry[f"{key}_{field}_p90_ms"] = p10, p90
            entry[f"{key}_first_call_ms"] = first[(k, ablation)][0]
            entry[f"{key}_ratio"] = entry[f"{key}_ms"] / ev
            entry[f"{key}_ratio_scaled"] = entry[f"{key}_ms"] / ev_full
        seqs = sum(len(x) for x, _ in picked[k])
        line = (
            f"  measure_batches={s.batches} measure_rows={s.rows} measure_queries={s.queries} "
            f"precision={s.precision} ({seqs} sequences): "
            f"measures {entry['measures_ms']:.1f} ms = {100 * entry['measures_ratio']:.2f}% "
            f"of an evaluation (every evaluation; first call {entry['measures_first_call_ms']:.1f} ms)"
        )
        if args.ablation:
            line += (
                f"; with the per-layer ablation {entry['with_ablation_ms']:.1f} ms = "
                f"{100 * entry['with_ablation_ratio']:.1f}% (step 0 and the end)"
            )
        if timed_seqs != full_seqs:
            line += (
                f" [of ra.yaml's evaluation of {full_seqs} sequences, scaled linearly: "
                f"{100 * entry['measures_ratio_scaled']:.2f}%"
                + (
                    f", with the ablation {100 * entry['with_ablation_ratio_scaled']:.1f}%"
                    if args.ablation
                    else ""
                )
                + "]"
            )
        print(line)
        if args.plain_float32:
            print(
                "    p10-p90: measures {measures_p10_ms:.1f}-{measures_p90_ms:.1f} ms".format(
                    **entry
                )
                + (
                    "; with the ablation {with_ablation_p10_ms:.1f}-{with_ablation_p90_ms:.1f} ms; "
                    "plain float32 products: measures {measures_plain_float32_ms:.1f} ms, with the "
                    "ablation {with_ablation_plain_float32_ms:.1f} ms".format(**entry)
                    if args.ablation
                    else "; plain float32 products: {measures_plain_float32_ms:.1f} ms".format(
                        **entry
                    )
                )
            )
        if args.split_ops:
            print(
                "    split TF32 operands from torch ops (split32.KERNEL off): measures "
                "{measures_split_ops_ms:.1f} ms ({measures_split_ops_p10_ms:.1f}-"
                "{measures_split_ops_p90_ms:.1f})".format(**entry)
                + (
                    "; with the ablation {with_ablation_split_ops_ms:.1f} ms "
                    "({with_ablation_split_ops_p10_ms:.1f}-{with_ablation_split_ops_p90_ms:.1f}); "
                    "one-launch kernel: with the ablation {with_ablation_ms:.1f} ms "
                    "({with_ablation_p10_ms:.1f}-{with_ablation_p90_ms:.1f})".format(**entry)
                    if args.ablation
                    else ""
                )
            )
        if args.stats_ops:
            print(
                "    statistics from torch ops (measures.STATS_KERNEL off): measures "
                "{measures_stats_ops_ms:.1f} ms ({measures_stats_ops_p10_ms:.1f}-"
                "{measures_stats_ops_p90_ms:.1f}) against {measures_ms:.1f} ms "
                "({measures_p10_ms:.1f}-{measures_p90_ms:.1f})".format(**entry)
                + (
                    "; with the ablation {with_ablation_stats_ops_ms:.1f} ms".format(**entry)
                    if args.ablation
                    else ""
                )
            )
        if args.shared_ablation and args.ablation:
            print(
                "    the measures and the ablation from one float32 forward "
                "(measures.ABLATION_ALONE off): with the ablation {with_ablation_shared_ms:.1f} "
                "ms ({with_ablation_shared_p10_ms:.1f}-{with_ablation_shared_p90_ms:.1f}) "
                "against {with_ablation_ms:.1f} ms "
                "({with_ablation_p10_ms:.1f}-{with_ablation_p90_ms:.1f})".format(**entry)
            )
        if args.separate_ablation and args.ablation:
            print(
                "    one float32 forward, the ablated passes after it (measures.ABLATION_ALONE "
                "and INTERLEAVED off): with the "
                "ablation {with_ablation_separate_ms:.1f} ms ({with_ablation_separate_p10_ms:.1f}-"
                "{with_ablation_separate_p90_ms:.1f}) against {with_ablation_ms:.1f} ms "
                "({with_ablation_p10_ms:.1f}-{with_ablation_p90_ms:.1f})".format(**entry)
            )
        if args.accuracy:
            entry["accuracy"] = acc = accuracy(model, batches, s)
            if acc:
                print(
                    f"    against the full computation on {len(batches) * args.batch_size} "
                    f"sequences (mean rec_share {100 * acc['rec_share_mean_full']:.2f}%): "
                    f"rec_share off by at most {100 * acc['rec_share_max_abs_diff']:.3f} points "
                    f"({100 * acc['rec_share_median_rel_diff']:.1f}% median over heads); "
                    f"rec_effect off by {100 * acc['rec_effect_median_rel_diff']:.1f}% "
                    f"(median over heads), at most {100 * acc['rec_effect_max_rel_diff']:.1f}%"
                )
        results["settings"].append(entry)
    if args.ablation_accuracy and args.ablation:
        results["ablation_accuracy"] = acc = ablation_accuracy(model, batches, settings[0])
        print(
            "  rec_ablation against float64 (the first setting): largest difference over layers "
            f"{acc['split_tf32']:.2e} (split TF32, the default), {acc['float32']:.2e} (plain "
            f"float32), {acc['tf32']:.2e} (plain TF32); float64 reads "
            + ", ".join(f"{v:.2e}" for v in acc["float64"].values())
        )
    if args.profile and cuda:
        for ablation in (False, True) if args.ablation else (False,):
            profile(jobs[(0, ablation)], "with the ablation" if ablation else "the measures")
    if measures.GRAPH_ERROR:
        print(f"  (the measures' CUDA graph could not be captured: {measures.GRAPH_ERROR})")
        results["graph_error"] = measures.GRAPH_ERROR
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
