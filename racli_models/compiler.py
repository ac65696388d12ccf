"""torch.compile as ra compiles its models for training, with one graph pass of its own.

    fwd = compiler.compile(model)            # torch.compile(model), the pass below added

Under autocast a weight is cast to half precision for its GEMMs, so autograd returns its
gradient as a half-precision GEMM result cast back to float32: the GEMM writes 2 bytes an
element and a copy kernel reads them and writes 4. On CUDA the pass has the GEMM write
float32 itself (`aten.mm.dtype`: cuBLAS's float32 accumulator stored as it is), wherever
such a cast is an output of the compiled graph (a gradient, as autograd hands it over)
and its GEMM's result feeds nothing else. One copy a weight less a step, and the gradient
is the GEMM's float32 sum rather than that sum rounded to bf16 first. At GPT-2 124M on an
H100: 48 launches fewer a step (0.19 ms of casts), the GEMMs that now write float32 about
as fast; the step's time moved by less than its run-to-run spread (docs/results.md).

`F32_GRADS` (`f32_grads(on)`) turns the pass off; `compile` reads it when it is called
(its `f32_grads` argument overrides it for one model).

Past dynamo's recompile limit a compiled call runs eager without a word but a warning;
`compiled_or_error(what)` turns that into an error for the calls ra times or records as
compiled (`ra train`'s loop, `ra bench`'s compile rows).
"""

from __future__ import annotations

import contextlib

import torch
import torch.fx

from .switch import setting

F32_GRADS = True
HALF = (torch.bfloat16, torch.float16)


def f32_grads(on: bool = True) -> contextlib.AbstractContextManager[None]:
    """Inside the block `compile` gives the models it compiles the pass on (or off)."""
    return setting(__name__, "F32_GRADS", on)


def _transposes(node) -> bool:
    aten = torch.ops.aten
    if node.target is aten.t.default:
        return True
    return node.target is aten.permute.default and list(node.args[1]) == [1, 0]


def f32_gemm_outputs(graph: torch.fx.Graph, devices: tuple[str, ...] = ("cuda",)) -> int:
    """Rewrite, in `graph` (a post-grad ATen graph), each graph output
    `convert_element_type(mm(a, b), float32)` (or of `mm(a, b)` transposed, any number of
    times) with a and b half precision on one of `devices`, whose mm and transposes feed
    nothing else, as `mm.dtype(a, b, float32)` (transposed alike): the same shape and
    strides, one kernel. Returns how many were rewritten."""
    aten, prims = torch.ops.aten, torch.ops.prims
    out = graph.output_node()
    done = 0
    for cast in list(
        graph.find_nodes(op="call_function", target=prims.convert_element_type.default)
    ):
        if cast.args[1] is not torch.float32 or set(cast.users) != {out}:
            continue
        chain, src = [], cast.args[0]  # transposes between the mm and the cast
        while isinstance(src, torch.fx.Node) and _transposes(src) and len(src.users) == 1:
            chain.append(src)
            src = src.args[0]
        if not isinstance(src, torch.fx.Node) or src.target is not aten.mm.default:
            continue
        if len(src.users) != 1:
            continue
        a, b = src.args
        va, vb = a.meta.get("val"), b.meta.get("val")
        if va is None or vb is None or va.dtype not in HALF or vb.dtype != va.dtype:
            continue
        if va.device.type not in devices or vb.device.type != va.device.type:
            continue
        product = aten.mm.dtype(va, vb, torch.float32)
        flip = len(chain) % 2 == 1
        val = aten.permute.default(product, [1, 0]) if flip else product
        want = cast.meta.get("val")
        if want is None or val.stride() != want.stride():
            continue
        with graph.inserting_before(cast):
            new = graph.call_function(aten.mm.dtype, (a, b, torch.float32))
            new.meta["val"] = product
            if flip:
                new = graph.call_function(aten.permute.default, (new, [1, 0]))
                new.meta["val"] = val
        cast.replace_all_uses_with(new)
        for node in (cast, *chain, src):
            graph.erase_node(node)
        done += 1
    return done


def _lowered() -> bool:
    """Whether this torch has `aten.mm.dtype` and inductor lowers it."""
    from torch._inductor.lowering import lowerings

    return hasattr(torch.ops.aten.mm, "dtype") and torch.ops.aten.mm.dtype in lowerings


#: how many casts the pass rewrote, a compiled graph at a time (tests and tools read it)
REWRITTEN: list[int] = []


def _pass(on: bool | None = None):
    """The pass as inductor's `post_grad_custom_post_pass`, on or off (None: `F32_GRADS`
    now) for every graph of the compiled model, the backward's included (compiled at the
    first backward, wherever that runs): a CustomGraphPass, whose uuid (this file's hash
    and the setting) keys inductor's caches."""
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class F32Grads(CustomGraphPass):
        def __init__(self, on: bool):
            self.on = on

        def __call__(self, graph: torch.fx.Graph) -> None:
            if self.on and _lowered():
                REWRITTEN.append(f32_gemm_outputs(graph))

        def uuid(self) -> str:
            return f"{get_hash_for_files((__file__,)).hex()[:16]}-{int(self.on)}"

    return F32Grads(F32_GRADS if on is None else on)


class RecompileLimitHit(RuntimeError):
    """A compiled call would have run eager: dynamo's recompile limit was reached."""


@contextlib.contextmanager
def compiled_or_error(what: str):
    """Inside the block a compiled call past dynamo's recompile limit raises
    RecompileLimitHit (naming `what`) instead of running eager."""
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        try:
            yield
        except torch._dynamo.exc.FailOnRecompileLimitHit as exc:
            limit = torch._dynamo.config.recompile_limit
            raise RecompileLimitHit(
                f"{what} reached dynamo's recompile limit ({limit} compilations of one "
                "function): past it, it would run eager while recorded as compiled "
                "(raise torch._dynamo.config.recompile_limit, or run without compile)"
            ) from exc


def compile(model, *, f32_grads: bool | None = None, **kwargs):  # noqa: A001
    """torch.compile(model, **kwargs) with ra's post-grad pass, on where `f32_grads` (None:
    `F32_GRADS` as this is called); not with `mode`, which torch.compile takes only
    without options."""
    options = dict(kwargs.pop("options", None) or {})
    options.setdefault("post_grad_custom_post_pass", _pass(f32_grads))
    return torch.compile(model, options=options, **kwargs)
