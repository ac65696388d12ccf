"""Host time of `model_measures` with the ablation, with and without the split block.

A 12-layer, 64-wide ra_v5 GPT on the CPU and one 32-token sequence: the arithmetic
is tiny, so the time is nearly all Python and dispatch. TENSOR_CORES True opens the
split block (routing for CUDA only, so on the CPU it only adds its cost); False does
not. Medians of 20 calls after one warm-up, each setting twice.
"""

import statistics
import time

import torch

from racli_models import GPT, GPTConfig, measures

torch.manual_seed(0)
cfg = GPTConfig(n_layer=12, n_head=4, n_embd=64, block_size=32, vocab_size=256, attn="ra_v5")
model = GPT(cfg).eval()
idx = torch.randint(0, 256, (1, 32))
batches = [(idx, idx)]


def run():
    with torch.no_grad():
        return measures.model_measures(model, batches, ablation=True, queries=16)


for tensor_cores in (True, False, True, False):
    measures.TENSOR_CORES = tensor_cores
    run()
    times = []
    for _ in range(20):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    print(tensor_cores, round(statistics.median(times) * 1e3, 2), "ms")
