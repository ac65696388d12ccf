"""Does Triton merge the two erf calls of the MLP forward's GELU kernel? Compiles, for sm_90
and without a GPU, a kernel written the way inductor writes the forward's GELU kernel
(gelu(h) from F.gelu's decomposition, gelu'(h) from gelu_mm.gelu_slope, each erf's
argument with its own literal constant), with gelu_slope's constant as now
(0.7071067811865476), as before 2026-12-07 (0.7071067811865475), and, as a control, a
constant that differs in float32 (0.7071); prints the erf calls in the Triton IR and the
PTX's size."""

import re

import triton
import triton.compiler
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.language.extra import libdevice


@triton.jit
def now(h_ptr, g_ptr, s_ptr, n, BLOCK: tl.constexpr):
    off = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = off < n
    x = tl.load(h_ptr + off, mask=m).to(tl.float32)
    g = 0.5 * x * (1.0 + libdevice.erf(x * 0.7071067811865476))
    s = (
        0.5 * (1.0 + libdevice.erf(x * 0.7071067811865476))
        + x * tl.exp(-0.5 * x * x) * 0.3989422804014327
    )
    tl.store(g_ptr + off, g.to(tl.bfloat16), mask=m)
    tl.store(s_ptr + off, s.to(tl.bfloat16), mask=m)


@triton.jit
def before(h_ptr, g_ptr, s_ptr, n, BLOCK: tl.constexpr):
    off = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = off < n
    x = tl.load(h_ptr + off, mask=m).to(tl.float32)
    g = 0.5 * x * (1.0 + libdevice.erf(x * 0.7071067811865476))
    s = (
        0.5 * (1.0 + libdevice.erf(x * 0.7071067811865475))
        + x * tl.exp(-0.5 * x * x) * 0.3989422804014327
    )
    tl.store(g_ptr + off, g.to(tl.bfloat16), mask=m)
    tl.store(s_ptr + off, s.to(tl.bfloat16), mask=m)


@triton.jit
def control(h_ptr, g_ptr, s_ptr, n, BLOCK: tl.constexpr):
    off = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = off < n
    x = tl.load(h_ptr + off, mask=m).to(tl.float32)
    g = 0.5 * x * (1.0 + libdevice.erf(x * 0.7071067811865476))
    s = 0.5 * (1.0 + libdevice.erf(x * 0.7071)) + x * tl.exp(-0.5 * x * x) * 0.3989422804014327
    tl.store(g_ptr + off, g.to(tl.bfloat16), mask=m)
    tl.store(s_ptr + off, s.to(tl.bfloat16), mask=m)


signature = {"h_ptr": "*bf16", "g_ptr": "*bf16", "s_ptr": "*bf16", "n": "i32", "BLOCK": "constexpr"}
for fn in (now, before, control):
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs={"BLOCK": 1024})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    ptx = k.asm["ptx"]
    body = [ln for ln in ptx.splitlines() if re.match(r"\s+[@a-z]", ln)]
    print(
        f"{fn.__name__:8s} erf calls in the Triton IR: {k.asm['ttir'].count('__nv_erff')}, "
        f"PTX instructions: {len(body)}"
    )
print("triton", triton.__version__)
