"""Register-sized vectors for Numba kernels, in blocks: load, multiply-add, store.

LLVM vectorises long unit-stride loops on its own, but it keeps a loop's
running sums in memory: every multiply-add loads and stores its output. A
kernel that keeps a block of outputs in registers across a whole reduction
(a register-blocked micro-kernel, as in a BLAS) needs vector values it can
hold in local variables; Numba has none, so this module adds one: `Vector`,
lowered to LLVM's `<lanes x float>`: one register of the CPU the kernels are
compiled for, BYTES wide (`vector_bytes`: 64 with AVX-512, 32 with AVX2, 16
otherwise; FASTLENET_VECTOR_BYTES forces one, which any CPU runs correctly:
LLVM splits a vector wider than its registers). The kernels' on-disk cache is
kept apart per width (jit.py).

Each operation is also a plain NumPy function, so a kernel runs unchanged as
Python under NUMBA_DISABLE_JIT or through `.py_func`. The block's size (rows x
vectors) is a constant of the calling kernel: a tuple's length is its type.
"""

import os

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, models, overload, register_model

from ..errors import FastLeNetError

WIDTHS = (16, 32, 64)  # SSE / NEON, AVX2, AVX-512


class VectorWidthError(FastLeNetError, ValueError):
    """FASTLENET_VECTOR_BYTES set to what no vector is: the CLI prints it as one line."""


def llvm_target():
    """(CPU name, feature string) that Numba compiles for: the host's, or NUMBA_CPU_NAME's and
    NUMBA_CPU_FEATURES'. Numba keys its cache on them."""
    from numba.core.registry import cpu_target
    _, name, features = cpu_target.target_context.codegen().magic_tuple()
    return name, features


def host_vector_bytes(features=None):
    """Bytes of one vector register of the CPU Numba compiles for (`features`: LLVM's
    feature string, default llvm_target()'s)."""
    features = llvm_target()[1] if features is None else features
    enabled = set(f[1:] for f in features.split(",") if f.startswith("+"))
    return 64 if "avx512f" in enabled else 32 if "avx" in enabled else 16


def vector_bytes():
    """FASTLENET_VECTOR_BYTES if set (16, 32 or 64), else the host's register width."""
    forced = os.environ.get("FASTLENET_VECTOR_BYTES", "").strip()
    if not forced:
        return host_vector_bytes()
    if forced not in {str(w) for w in WIDTHS}:
        raise VectorWidthError(f"FASTLENET_VECTOR_BYTES must be one of {', '.join(map(str, WIDTHS))} "
                               f"(bytes per vector), got {forced!r}")
    return int(forced)


BYTES = vector_bytes()


def lanes(a):
    """Elements per vector of a's dtype: BYTES / 4 float32, BYTES / 8 float64."""
    return BYTES // a.dtype.itemsize


# Vectors of consecutive positions per register block (conv.py): a block of 6
# rows holds 6 x this many sums, plus this many input vectors and one broadcast
# weight, in registers. 16 registers (AVX2, SSE) take 6 x 2 + 2 + 1; AVX-512's
# 32 take 6 x 4 + 4 + 1, which loads fewer vectors per multiply-add.
BLOCK_VECTORS = 4 if BYTES == 64 else 2


# A register block's vectors are tuples: the sums of ROWS rows (filters or
# channels) at `count` vectors of positions each, row after row. Each operation
# is a loop here, in NumPy, and compiled, an intrinsic that emits its unrolled
# code for the tuple's length: Numba then types one call per operation, where
# inlining one call per vector kept a kernel compiling several times as long.

def rows_from(first, last, count):
    """(first, first + 1, ..., first + count - 1), those past `last` repeating it."""
    return tuple(min(first + k, last) for k in range(count))


def loads(a, i, count):
    """`count` vectors of a (1-D, contiguous), one after another from a[i]."""
    n = lanes(a)
    return tuple(a[i + k * n:i + (k + 1) * n].copy() for k in range(count))


def row_splats(a, rows, count):
    """`count` vectors of a[r] for each r of rows: a block's sums starting at a bias."""
    return tuple(np.full(lanes(a), a[r], a.dtype) for r in rows for _ in range(count))


def outer_fma(w, rows, t, u, sums):
    """sums + the outer product of w[rows, t] (w 2-D) and the vectors u, row by row:
    sums[k * len(u) + v] + w[rows[k], t] * u[v], fused where the CPU has FMA."""
    return tuple(sums[k] + sums[k].dtype.type(w[rows[k // len(u)], t]) * u[k % len(u)] for k in range(len(sums)))


def store_rows(out, rows, plane, q, sums):
    """Row k's vectors of sums into out (1-D), one after another from rows[k] * plane + q."""
    per_row, n = len(sums) // len(rows), lanes(out)
    for k in range(len(sums)):
        start = rows[k // per_row] * plane + q + (k % per_row) * n
        out[start:start + n] = sums[k]


class Vector(types.Type):
    def __init__(self, dtype):
        self.dtype, self.lanes = dtype, BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"Vector({dtype}x{self.lanes})")


@register_model(Vector)
class VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), fe_type.lanes))


def _check_row(a):
    if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and isinstance(a.dtype, types.Float)):
        raise TypingError(f"vectors load from and store to contiguous 1-D float arrays, got {a}")


def _vector_pointer(context, builder, aryty, ary, index, vector):
    array = context.make_array(aryty)(context, builder, ary)
    ptr = cgutils.get_item_pointer(context, builder, aryty, array, [index])
    return builder.bitcast(ptr, vector.as_pointer())


def _broadcast(builder, scalar, vector):
    v = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), vector.count), [0] * vector.count))


@overload(lanes, inline="always")
def _lanes(a):
    n = BYTES // (a.dtype.bitwidth // 8)
    return lambda a: n


def _literal(count):
    if not isinstance(count, types.IntegerLiteral):
        raise TypingError("a register block's size must be a constant")
    return count.literal_value


def _index(context, builder, value, typ):
    return context.cast(builder, value, typ, types.intp)


def _fmuladd(context, builder, vt):
    """llvm.fmuladd on Vector type vt: fused where the CPU has FMA, the same on every call."""
    vector = context.get_value_type(vt)
    name = f"llvm.fmuladd.v{vt.lanes}f{vt.dtype.bitwidth}"
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3), name)


# The tuple operations generate their unrolled code directly: Numba then types
# one call per block operation instead of inlining one per vector, which kept a
# kernel compiling for several times as long.

@intrinsic(prefer_literal=True)
def _rows_from(typingctx, first, last, count):
    result = types.UniTuple(types.intp, _literal(count))

    def codegen(context, builder, sig, args):
        start, end = _index(context, builder, args[0], first), _index(context, builder, args[1], last)
        rows = [builder.add(start, context.get_constant(types.intp, k)) for k in range(result.count)]
        clamped = [builder.select(builder.icmp_signed("<", r, end), r, end) for r in rows]
        return context.make_tuple(builder, result, clamped)
    return result(first, last, count), codegen


@intrinsic(prefer_literal=True)
def _loads(typingctx, a, i, count):
    _check_row(a)
    vt = Vector(a.dtype)
    result = types.UniTuple(vt, _literal(count))

    def codegen(context, builder, sig, args):
        vector, start = context.get_value_type(vt), _index(context, builder, args[1], sig.args[1])
        values = [builder.load(_vector_pointer(context, builder, sig.args[0], args[0],
                                               builder.add(start, context.get_constant(types.intp, k * vt.lanes)),
                                               vector), align=a.dtype.bitwidth // 8)
                  for k in range(result.count)]
        return context.make_tuple(builder, result, values)
    return result(a, i, count), codegen


@intrinsic(prefer_literal=True)
def _row_splats(typingctx, a, rows, count):
    _check_row(a)
    vt = Vector(a.dtype)
    result = types.UniTuple(vt, len(rows) * _literal(count))

    def codegen(context, builder, sig, args):
        array, vector = context.make_array(sig.args[0])(context, builder, args[0]), context.get_value_type(vt)
        values = []
        for k in range(len(rows)):
            row = _index(context, builder, builder.extract_value(args[1], k), rows[k])
            scalar = builder.load(cgutils.get_item_pointer(context, builder, sig.args[0], array, [row]))
            values += [_broadcast(builder, scalar, vector)] * (result.count // len(rows))
        return context.make_tuple(builder, result, values)
    return result(a, rows, count), codegen


@intrinsic
def _outer_fma(typingctx, w, rows, t, u, sums):
    if not (isinstance(w, types.Array) and w.ndim == 2 and w.layout == "C"):
        raise TypingError(f"outer_fma takes its weights from a contiguous 2-D array, got {w}")

    def codegen(context, builder, sig, args):
        array, vector = context.make_array(w)(context, builder, args[0]), context.get_value_type(u.dtype)
        fmuladd, column = _fmuladd(context, builder, u.dtype), _index(context, builder, args[2], t)
        values = []
        for k in range(len(rows)):
            row = _index(context, builder, builder.extract_value(args[1], k), rows[k])
            scalar = builder.load(cgutils.get_item_pointer(context, builder, w, array, [row, column]))
            weight = _broadcast(builder, context.cast(builder, scalar, w.dtype, u.dtype.dtype), vector)
            values += [builder.call(fmuladd, [weight, builder.extract_value(args[3], v),
                                              builder.extract_value(args[4], k * len(u) + v)]) for v in range(len(u))]
        return context.make_tuple(builder, sums, values)
    return sums(w, rows, t, u, sums), codegen


@intrinsic
def _store_rows(typingctx, out, rows, plane, q, sums):
    _check_row(out)

    def codegen(context, builder, sig, args):
        vector, per_row = context.get_value_type(sums.dtype), len(sums) // len(rows)
        start, stride = _index(context, builder, args[3], q), _index(context, builder, args[2], plane)
        for k in range(len(sums)):
            row = _index(context, builder, builder.extract_value(args[1], k // per_row), rows[k // per_row])
            index = builder.add(builder.add(builder.mul(row, stride), start),
                                context.get_constant(types.intp, (k % per_row) * sums.dtype.lanes))
            builder.store(builder.extract_value(args[4], k),
                          _vector_pointer(context, builder, out, args[0], index, vector), align=out.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(out, rows, plane, q, sums), codegen


@overload(rows_from, inline="always", prefer_literal=True)
def _jit_rows_from(first, last, count):
    return lambda first, last, count: _rows_from(first, last, count)


@overload(loads, inline="always", prefer_literal=True)
def _jit_loads(a, i, count):
    return lambda a, i, count: _loads(a, i, count)


@overload(row_splats, inline="always", prefer_literal=True)
def _jit_row_splats(a, rows, count):
    return lambda a, rows, count: _row_splats(a, rows, count)


@overload(outer_fma, inline="always")
def _jit_outer_fma(w, rows, t, u, sums):
    return lambda w, rows, t, u, sums: _outer_fma(w, rows, t, u, sums)


@overload(store_rows, inline="always")
def _jit_store_rows(out, rows, plane, q, sums):
    return lambda out, rows, plane, q, sums: _store_rows(out, rows, plane, q, sums)
