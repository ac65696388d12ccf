import time, torch, statistics
from racli_models import GPT, GPTConfig
from racli_models import measures
torch.manual_seed(0)
cfg = GPTConfig(n_layer=12, n_head=4, n_embd=64, block_size=32, vocab_size=256, attn="ra_v5")
m = GPT(cfg).eval()
idx = torch.randint(0, 256, (1, 32)); batches=[(idx, idx)]
def run():
    with torch.no_grad():
        return measures.model_measures(m, batches, ablation=True, queries=16)
for tc in (True, False, True, False):
    measures.TENSOR_CORES = tc
    run(); ts=[]
    for _ in range(20):
        t=time.perf_counter(); run(); ts.append(time.perf_counter()-t)
    print(tc, round(statistics.median(ts)*1e3,2), "ms")
