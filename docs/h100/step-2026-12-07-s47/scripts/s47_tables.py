"""The tables of docs/performance.md's twenty-third round from a profile folder of this
session: GPU time a step by kernel class (by kernel name, first match wins), and each arm's
100 sustained steps with the SM clock, power and clock-event reasons nvidia-smi read then.
    python3 scripts/s47_tables.py 1-h100-profile     (or 2-h200-profile-step)"""

import csv
import datetime as dt
import re
import statistics as st
import sys
from pathlib import Path

CLASSES = (  # first match wins; ra's GELU-backward GEMM (_tma_kernel) counts as a GEMM
    ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
    (
        "optimizer+clip",
        ("adam", "multi_tensor", "foreach", "norm_kernel", "_amp_", "reduce_kernel"),
    ),
    ("cross_entropy", ("log_softmax", "nll", "cross_entropy", "_ce_kernel")),
    ("gemm", ("gemm", "xmma", "cutlass", "nvjet", "sm90", "cublas", "matmul", "_tma_kernel")),
    ("composition", ("_ra_v5_", "_untied_")),
    ("layer_norm", ("layer_norm", "var_mean")),
    ("gelu", ("gelu",)),
    ("cat", ("cat_",)),
    ("triton_fused", ("triton",)),
)
ARMS = ("nanogpt", "baseline", "ra_v5", "baseline_graph-false")


def kernel_class(name: str) -> str:
    low = name.lower()
    return next((c for c, keys in CLASSES if any(k in low for k in keys)), "other")


def classes(folder: Path) -> dict[str, dict[str, float]]:
    out = {}
    for arm in ARMS:
        rows = (folder / f"kernels_{arm}.txt").read_text().split("\nALL\n")[1].splitlines()
        sums: dict[str, float] = {}
        for line in rows:
            ms, _launches, name = line.split(" ", 2)
            sums[kernel_class(name)] = sums.get(kernel_class(name), 0.0) + float(ms)
        out[arm] = sums
    return out


def smi_reads(folder: Path) -> list[tuple[float, float, float, str]]:
    reads = []
    for r in csv.reader((folder / "smi.csv").open()):
        if not r or r[0].startswith("timestamp"):
            continue
        try:
            t = dt.datetime.strptime(r[0].strip(), "%Y/%m/%d %H:%M:%S.%f")
        except ValueError:
            continue
        t = t.replace(tzinfo=dt.timezone.utc).timestamp()
        reads.append((t, float(r[1].split()[0]), float(r[3].split()[0]), r[5].strip()))
    return reads


def main(folder: Path) -> None:
    table = classes(folder)
    names = sorted(
        {k for sums in table.values() for k in sums}, key=lambda k: -table["nanogpt"].get(k, 0)
    )
    print(f"{'class':16}" + "".join(f"{a:>22}" for a in table))
    for k in names:
        print(f"{k:16}" + "".join(f"{table[a].get(k, 0):22.3f}" for a in table))
    print(f"{'sum':16}" + "".join(f"{sum(table[a].values()):22.3f}" for a in table))
    reads = smi_reads(folder)
    pattern = r"SUSTAIN (\S+) \d+ steps ([\d.]+) ms/step wall ([\d.]+) ([\d.]+)"
    for m in re.finditer(pattern, (folder / "prof.log").read_text()):
        arm, ms, t0, t1 = m.group(1), float(m.group(2)), float(m.group(3)), float(m.group(4))
        sel = [r for r in reads if t0 + 0.5 <= r[0] <= t1]  # the first 0.5 s dropped
        clock = [r[1] for r in sel]
        watts = st.median(r[2] for r in sel)
        print(
            f"{arm:22} {ms:.3f} ms/step, {len(sel)} reads, SM clock median {st.median(clock):.0f} "
            f"(min {min(clock):.0f}, max {max(clock):.0f}) MHz, power median {watts:.1f} W, "
            f"energy {watts * ms / 1e3:.1f} J/step, reasons {sorted({r[3] for r in sel})}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
