"""How much pairing by seed gains: correlation of the two variants' final val losses.

For each seed, trains `baseline` and a candidate with identical batches for a fixed
number of steps (a plain AdamW loop, warm-up then cosine, bf16 autocast on CUDA) and
evaluates both on the same validation batches. Two arms:

* paired:   both variants initialised with the seed (every shared weight equal);
* unpaired: the candidate initialised with seed + 1000 (the old behaviour: unrelated
            starting weights, same batches).

Prints, per arm, the correlation of the paired final losses across seeds and the
ratio of the paired SE to the Welch SE (below 1: pairing narrows the interval).

    python tools/measure_pairing.py --device cuda --seeds 8 --steps 300
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def train_one(attn, seed, init_seed, ds, a, dev):
    import torch

    from racli.training.batches import BatchSampler
    from racli_models import GPT, GPTConfig

    cfg = GPTConfig(
        attn=attn,
        vocab_size=ds.vocab_size,
        n_layer=a.layers,
        n_head=a.heads,
        n_embd=a.embd,
        block_size=a.block,
    )
    model = GPT(cfg, seed=init_seed).to(dev)
    opt = model.configure_optimizer(0.1, a.lr, (0.9, 0.95), fused=dev.type == "cuda")
    batches = BatchSampler(ds.train, a.batch, a.block, seed=seed, device=dev)
    warm = max(1, a.steps // 20)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    for step in range(a.steps):
        f = (
            (step + 1) / warm
            if step < warm
            else 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, a.steps - warm)))
        )
        for g in opt.param_groups:
            g["lr"] = a.lr * f * g["lr_mult"]
        x, y = batches.next()
        with amp:
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    val = BatchSampler(ds.val, a.batch, a.block, seed=12345, device=dev)
    with torch.no_grad(), amp:
        losses = [model(*val.next())[1].item() for _ in range(a.eval_batches)]
    return float(np.mean(losses))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--candidate", default="ra_v5")
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--embd", type=int, default=256)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-batches", type=int, default=20)
    a = p.parse_args()
    import torch

    from racli.training.datasets import load_dataset

    dev = torch.device(a.device)
    ds = load_dataset(None, 0.1, a.block)
    t0 = time.time()
    base = [train_one("baseline", s, s, ds, a, dev) for s in range(a.seeds)]
    for arm, shift in (("paired", 0), ("unpaired", 1000)):
        cand = [train_one(a.candidate, s, s + shift, ds, a, dev) for s in range(a.seeds)]
        b, c = np.array(base), np.array(cand)
        r = float(np.corrcoef(b, c)[0, 1])
        diff = (c - b) / b
        se_paired = diff.std(ddof=1) / math.sqrt(len(b))
        se_welch = math.sqrt(b.var(ddof=1) / len(b) + c.var(ddof=1) / len(c)) / b.mean()
        print(
            f"{arm:9s} r = {r:+.3f}  paired SE / Welch SE = {se_paired / se_welch:.2f}  "
            f"baseline sd {b.std(ddof=1) / b.mean():.2%}  {a.candidate} sd "
            f"{c.std(ddof=1) / c.mean():.2%}  mean diff {diff.mean():+.2%}"
        )
        print(
            "   baseline", np.round(b, 4).tolist(), f"\n   {a.candidate}", np.round(c, 4).tolist()
        )
    print(f"{a.seeds} seeds, {a.steps} steps, {time.time() - t0:.0f} s on {a.device}")


if __name__ == "__main__":
    main()
