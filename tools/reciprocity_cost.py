"""Cost of the reciprocity measures relative to an evaluation, as `ra train` runs them.

    python tools/reciprocity_cost.py --device cuda                 # GPT-2 124M ra_v5, fresh
    python tools/reciprocity_cost.py --device cuda --checkpoint RUN.pt
    python tools/reciprocity_cost.py --device cpu --preset tiny    # quick check on CPU

An evaluation is what the trainer does every `eval_interval` steps: the model
(compiled with --compile, the default on CUDA) in eval mode, bf16 autocast on
CUDA, inside `composed_once()`, over `--eval-batches` batches of
`--batch-size` sequences. The measures are `racli.training.reciprocity.measure`
on the first `--measure-batches` batches cut to `--measure-rows` sequences:
without the ablation (what every evaluation pays) and with it (step 0 and the
end, `gates.ablation: ends`). Times are medians over `--repeats`, with CUDA
events on CUDA (perf_counter on CPU). Prints one line per setting and, with
--json, the figures as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
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
        fields = dict(state["config"]["model"])
        fields["attn"] = state["config"]["attn"]
        model = GPT(GPTConfig(**fields))
        model.load_state_dict(state["model"])
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="gpt2", help="model preset of ra.yaml (default gpt2)")
    p.add_argument("--attn", default="ra_v5")
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--checkpoint", default=None, help="a run's checkpoint (.pt) instead")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument(
        "--measure-batches", type=int, default=None, help="default: ra.yaml gates.measure_batches"
    )
    p.add_argument(
        "--measure-rows",
        default=None,
        help="comma-separated settings to time, e.g. 2,4,8 (default: ra.yaml's)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    gates = load_config(packaged_config_path()).gates
    n_measure = args.measure_batches if args.measure_batches is not None else gates.measure_batches
    rows_list = (
        [int(r) for r in args.measure_rows.split(",")]
        if args.measure_rows
        else [gates.measure_rows]
    )
    model = build_model(args, device).eval()
    T = model.config.block_size
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

    evaluate()  # warm-up (and compilation)
    eval_ms: list[float] = []
    for _ in range(args.repeats):
        with timer(eval_ms):
            evaluate()
    ev = statistics.median(eval_ms)
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
        "eval_ms": ev,
        "settings": [],
    }
    print(
        f"{model.config.attn} {model.config.n_layer}x{model.config.n_embd} T={T} on {device}"
        f"{' (' + results['gpu'] + ')' if cuda else ''}: evaluation of {args.eval_batches} "
        f"batches x {args.batch_size} = {ev:.1f} ms (median of {args.repeats})"
    )
    for rows in rows_list:
        s = MeasureSettings(batches=n_measure, rows=rows)
        picked = measured_batches(batches, s)
        entry = {"measure_batches": n_measure, "measure_rows": rows}
        for ablation in (False, True):
            measure(model, picked, ablation=ablation)  # warm-up
            ms: list[float] = []
            for _ in range(args.repeats):
                with timer(ms):
                    measure(model, picked, ablation=ablation)
            key = "with_ablation" if ablation else "measures"
            entry[f"{key}_ms"] = statistics.median(ms)
            entry[f"{key}_ratio"] = statistics.median(ms) / ev
        results["settings"].append(entry)
        seqs = n_measure * (rows or args.batch_size)
        print(
            f"  measure_batches={n_measure} measure_rows={rows} ({seqs} sequences): "
            f"measures {entry['measures_ms']:.1f} ms = {100 * entry['measures_ratio']:.2f}% "
            f"of an evaluation (every evaluation); with the per-layer ablation "
            f"{entry['with_ablation_ms']:.1f} ms = {100 * entry['with_ablation_ratio']:.1f}% "
            f"(step 0 and the end)"
        )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
