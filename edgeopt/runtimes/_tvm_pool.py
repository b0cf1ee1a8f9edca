"""Channels-last window pooling for TVM builds: clamped loads and a mask instead of a padded window.

TOPI's pool2d (Relax's default legalization of `relax.nn.avg_pool2d` / `max_pool2d`) reads a zero-padded input
through a reduction over the window, and with `count_include_pad=False` divides each output by a window size
computed in integer arithmetic per element. MetaSchedule's CPU rules give that reduction block no vector loop
over the channels (its innermost loops are the window's), so the default schedule runs it close to scalar
(docs/tvm.md has efficientformer_l1's pooling token mixers built both ways).

Here a pooling window is written out instead: every output element is the sum (or max) of `kh x kw` loads, each
from a row and column index clamped into the image, each masked by whether the unclamped position lies inside it
(a select on a value already loaded, never a conditional load), and an average is divided by the count of
positions inside the image (or the whole window with `count_include_pad`). With the channels innermost (NHWC)
the clamped indices and the mask depend only on the pixel, so the loop over the channels is a plain vector loop:
the default schedule parallelizes the pixels and vectorizes the channels. The function has no reduction block;
marked `OUT_EWISE_FUSABLE`, it takes its elementwise consumers into its kernel and is never inlined into another.

Only what this covers exactly is rewritten: layout and output layout NHWC, static shapes, float data, windows of
at most `MAX_WINDOW` positions, and for averages dilation 1 and no `ceil_mode` with `count_include_pad`. Any
other pooling keeps TOPI's legalization. Host-side only (imports tvm, never torch).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from typing import Any

# Positions of the largest window written out (the expression holds one load per position).
MAX_WINDOW = 49
KERNEL_NAMES = {"avg": "avg_pool2d_clamped", "max": "max_pool2d_clamped"}
# The function's fusion pattern (`relax.transform.FuseOps`: TVM's OpPatternKind kOutEWiseFusable, what Relay gave
# its pooling ops): elementwise consumers fuse into it, and it is never inlined into a consumer. Without it the
# function reads as injective and a pool feeding another pool (an SPPF block's chain of three) would be inlined
# into it, each of the consumer's loads recomputing the producer's whole window.
OUT_EWISE_FUSABLE = 4
STEP = "LegalizeOps(avg/max_pool2d NHWC as clamped window loads: edgeopt.runtimes._tvm_pool)"


def legalize_map() -> dict[str, Callable[[Any, Any], Any]]:
    """`customize_legalize_map` for `relax.transform.LegalizeOps`: the pooling ops this module legalizes."""
    return {"relax.nn.avg_pool2d": lambda bb, call: _pool2d(bb, call, "avg"),
            "relax.nn.max_pool2d": lambda bb, call: _pool2d(bb, call, "max")}


def _ints(values) -> list[int] | None:
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):  # a symbolic dimension
        return None


def _shape(expr) -> list[int] | None:
    shape = getattr(expr.ty, "shape", None)
    return None if shape is None else _ints(getattr(shape, "values", shape))


def _covered(call, kind: str) -> bool:
    a = call.attrs
    x_shape, out_shape = _shape(call.args[0]), _shape(call)
    if str(a.layout) != "NHWC" or str(a.out_layout) != "NHWC" or x_shape is None or out_shape is None:
        return False
    if len(x_shape) != 4 or not str(call.args[0].ty.dtype).startswith(("float", "bfloat")):
        return False
    kh, kw = (int(k) for k in a.pool_size)
    if kh * kw > MAX_WINDOW:
        return False
    if kind == "avg" and ((int(a.dilation[0]), int(a.dilation[1])) != (1, 1) or (bool(a.ceil_mode) and bool(a.count_include_pad))):
        return False
    return True


def _pool2d(bb, call, kind: str):
    """`call` legalized as a written-out window (see the module doc), or by TOPI's pool2d where not covered."""
    import tvm
    from tvm import te

    if not _covered(call, kind):
        return tvm.ir.Op.get(str(call.op.name)).get_attr("FLegalize")(bb, call)
    a = call.attrs
    _, height, width, _ = _shape(call.args[0])
    out_shape = _shape(call)
    kh, kw = (int(k) for k in a.pool_size)
    sh, sw = (int(s) for s in a.strides)
    dh, dw = (int(d) for d in a.dilation)
    top, left = int(a.padding[0]), int(a.padding[1])
    dtype = str(call.args[0].ty.dtype)
    select = tvm.tirx.Select
    fill = tvm.tirx.const(0, dtype) if kind == "avg" else tvm.te.min_value(dtype)

    def clamp(i, n):
        return te.max(te.min(i, n - 1), 0)

    def compute(data):
        def element(b, i, j, c):
            terms = []
            for u in range(kh):
                row = i * sh + u * dh - top
                for v in range(kw):
                    col = j * sw + v * dw - left
                    inside = te.all(row >= 0, row < height, col >= 0, col < width)
                    terms.append(select(inside, data[b, clamp(row, height), clamp(col, width), c], fill))
            if kind == "max":
                return reduce(te.max, terms)
            total = reduce(lambda p, q: p + q, terms)
            if bool(a.count_include_pad):
                return total / tvm.tirx.const(kh * kw, dtype)
            r0, c0 = i * sh - top, j * sw - left
            count = (te.min(r0 + kh, height) - te.max(r0, 0)) * (te.min(c0 + kw, width) - te.max(c0, 0))
            return total / te.max(count, 1).astype(dtype)

        return te.compute(out_shape, element, name=f"{kind}_pool")

    return bb.call_te(compute, call.args[0], primfunc_name_hint=KERNEL_NAMES[kind], primfunc_attrs={"op_pattern": OUT_EWISE_FUSABLE})
