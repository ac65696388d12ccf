"""What bounds the GELU kernels: SASS instructions an element, without a GPU. Compiles for
sm_90 three kernels written as inductor writes them (BLOCK 1024, 4 warps): ra's MLP
forward (gelu(h) and gelu'(h) with one erf), nanoGPT's GELU forward (gelu(h) alone) and a
copy of ra's forward's bytes (h in, two bf16 outputs); disassembles each with the
nvdisasm that ships with Triton and prints the instructions an element and the time that
issuing them takes at GPT-2's shape (32768 x 3072 elements a layer) on an H200 (132 SMs,
four warp instructions a clock each) at 1620 MHz."""

import collections
import re
import subprocess
from pathlib import Path

import triton
import triton.compiler
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.language.extra import libdevice

NVDISASM = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"


@triton.jit
def ra_forward(h_ptr, g_ptr, s_ptr, n, BLOCK: tl.constexpr):
    off = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = off < n
    x = tl.load(h_ptr + off, mask=m).to(tl.float32)
    e = libdevice.erf(x * 0.7071067811865476)
    g = 0.5 * x * (1.0 + e)
    s = 0.5 * (1.0 + e) + x * tl.exp(-0.5 * x * x) * 0.3989422804014327
    tl.store(g_ptr + off, g.to(tl.bfloat16), mask=m)
    tl.store(s_ptr + off, s.to(tl.bfloat16), mask=m)


@triton.jit
def nanogpt_forward(h_ptr, g_ptr, s_ptr, n, BLOCK: tl.constexpr):
    off = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = off < n
    x = tl.load(h_ptr + off, mask=m).to(tl.float32)
    g = 0.5 * x * (1.0 + libdevice.erf(x * 0.7071067811865476))
    tl.store(g_ptr + off, g.to(tl.bfloat16), mask=m)


@triton.jit
def copy_of_ra_bytes(h_ptr, g_ptr, s_ptr, n, BLOCK: tl.constexpr):
    off = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = off < n
    x = tl.load(h_ptr + off, mask=m).to(tl.float32)
    tl.store(g_ptr + off, (x * 2).to(tl.bfloat16), mask=m)
    tl.store(s_ptr + off, (x * 3).to(tl.bfloat16), mask=m)


SIGNATURE = {"h_ptr": "*bf16", "g_ptr": "*bf16", "s_ptr": "*bf16", "n": "i32", "BLOCK": "constexpr"}
ELEMENTS, SMS, CLOCK = 32768 * 3072, 132, 1.62e9
for fn in (ra_forward, nanogpt_forward, copy_of_ra_bytes):
    src = triton.compiler.ASTSource(fn=fn, signature=SIGNATURE, constexprs={"BLOCK": 1024})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    cubin = Path(f"/tmp/{fn.__name__}.cubin")
    cubin.write_bytes(kernel.asm["cubin"])
    sass = subprocess.run([NVDISASM, "-c", cubin], capture_output=True, text=True).stdout
    ins = [ln.split("*/", 1)[1] for ln in sass.splitlines() if re.search(r"/\*[0-9a-f]{4}\*/", ln)]
    ops = collections.Counter(
        re.sub(r"^@!?U?P\w+\s+", "", i.strip()).split()[0].split(".")[0] for i in ins
    )
    per = len(ins) / 8  # 1024 elements over 128 threads
    ms = per * ELEMENTS / 32 / (SMS * 4) / CLOCK * 1e3
    print(
        f"{fn.__name__:18s} {len(ins)} SASS for 8 elements a thread: {per:.1f} an element, "
        f"issue time a layer {ms:.3f} ms at {CLOCK / 1e6:.0f} MHz; {dict(ops.most_common(8))}"
    )
print("triton", triton.__version__)
