"""Speed of `ra data prepare` on plain text: tokens/s with the bytes and the trained tokenizer.

    PYTHONPATH=. python tools/bench_prepare.py [--mb 50] [--workers 2] [--source DIR]

The corpus is plain English text: the built-in Shakespeare corpus repeated to ``--mb`` MB and
cut into 1 MB files (or the ``.txt`` files of ``--source``). For each tokenizer the script
prints the tokenising speed (``meta.json``'s tokens_per_s: reading, tokenising and writing,
worker start-up included, the BPE training of ``train:N`` not included) and the CPU seconds
the tokenising phase used (this process and its workers), so the figure for dedicated cores
can be told apart from a busy machine's: tokens per CPU-second x cores is the ceiling.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class CpuClock:
    """A progress sink that notes the CPU time used between the start and the end of the
    tokenising phase (this process and its reaped workers)."""

    def __init__(self):
        self.start_cpu = self.end_cpu = 0.0

    def note(self, text):
        pass

    def start(self, total_bytes):
        self.start_cpu = _cpu()

    def update(self, **kw):
        pass

    def close(self):
        self.end_cpu = _cpu()


def build_corpus(folder: Path, mb: int) -> int:
    text = gzip.decompress((importlib.resources.files("racli") / "data/corpus.txt.gz").read_bytes())
    size, i = 0, 0
    piece = 1 << 20
    while size < mb * (1 << 20):
        start = (i * piece) % max(1, len(text) - piece)
        (folder / f"part{i:05d}.txt").write_bytes(text[start : start + piece])
        size += piece
        i += 1
    return size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=50, help="corpus size in MB (default 50)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--source", help="a folder of .txt files instead of the built-in corpus")
    ap.add_argument("--tokenizers", default="bytes,train:8192")
    args = ap.parse_args()
    from racli.dataprep.prepare import PrepareSettings, prepare

    with tempfile.TemporaryDirectory(prefix="ra_bench_prepare_") as tmp:
        tmp = Path(tmp)
        if args.source:
            source = Path(args.source)
            size = sum(p.stat().st_size for p in source.rglob("*.txt"))
        else:
            source = tmp / "corpus"
            source.mkdir()
            size = build_corpus(source, args.mb)
        print(
            f"corpus: {size / 1e6:.1f} MB of plain text, {args.workers} workers, "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
        )
        print(
            f"{'tokenizer':<12} {'tokens':>12} {'seconds':>8} {'tokens/s':>12} "
            f"{'CPU s':>7} {'tokens/CPU-s':>13}"
        )
        for name in args.tokenizers.split(","):
            out = tmp / f"out_{name.replace(':', '_')}"
            settings = PrepareSettings(
                sources=[str(source)],
                out=out,
                tokenizer=name,
                workers=args.workers,
                tokenizer_sample_bytes=20_000_000,
            )
            clock = CpuClock()
            t0 = time.perf_counter()
            meta = prepare(settings, clock)
            wall = time.perf_counter() - t0
            tok_s = meta["seconds"]["tokenize"]
            cpu_tok = clock.end_cpu - clock.start_cpu
            total = meta["tokens"]["train"] + meta["tokens"]["val"]
            print(
                f"{name:<12} {total:>12,} {tok_s:>8.2f} {meta['tokens_per_s']:>12,} "
                f"{cpu_tok:>7.2f} {total / max(cpu_tok, 1e-9):>13,.0f}   (wall {wall:.1f}s "
                f"with tokenizer training {meta['seconds']['tokenizer']:.1f}s)"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()
