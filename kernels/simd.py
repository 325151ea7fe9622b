"""Register-sized vectors for Numba kernels: load, multiply-add, store.

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
Python under NUMBA_DISABLE_JIT or through `.py_func`.
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


def load(a, i):
    """a[i : i + lanes] as one vector; a is 1-D and contiguous."""
    return a[i:i + lanes(a)].copy()


def store(a, i, v):
    """a[i : i + lanes] = v."""
    a[i:i + v.shape[0]] = v


def splat(s, like):
    """A vector of s, in the dtype of the array `like`."""
    return np.full(lanes(like), s, like.dtype)


def fma(s, x, acc):
    """acc + s * x for a scalar s and vectors x, acc."""
    return acc + acc.dtype.type(s) * x


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


@intrinsic
def _load(typingctx, a, i):
    _check_row(a)
    vt = Vector(a.dtype)

    def codegen(context, builder, sig, args):
        ptr = _vector_pointer(context, builder, sig.args[0], args[0], args[1], context.get_value_type(vt))
        return builder.load(ptr, align=a.dtype.bitwidth // 8)  # element-aligned: no alignment assumed
    return vt(a, i), codegen


@intrinsic
def _store(typingctx, a, i, v):
    _check_row(a)

    def codegen(context, builder, sig, args):
        ptr = _vector_pointer(context, builder, sig.args[0], args[0], args[1], args[2].type)
        builder.store(args[2], ptr, align=a.dtype.bitwidth // 8)
    return types.none(a, i, v), codegen


@intrinsic
def _splat(typingctx, s, like):
    vt = Vector(like.dtype)

    def codegen(context, builder, sig, args):
        scalar = context.cast(builder, args[0], sig.args[0], vt.dtype)
        return _broadcast(builder, scalar, context.get_value_type(vt))
    return vt(s, like), codegen


@intrinsic
def _fma(typingctx, s, x, acc):
    def codegen(context, builder, sig, args):
        vector = context.get_value_type(acc)
        scalar = context.cast(builder, args[0], sig.args[0], acc.dtype)
        # llvm.fmuladd: fused where the CPU has FMA, the same on every call
        name = f"llvm.fmuladd.v{acc.lanes}f{acc.dtype.bitwidth}"
        fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3), name)
        return builder.call(fmuladd, [_broadcast(builder, scalar, vector), args[1], args[2]])
    return acc(s, x, acc), codegen


@overload(lanes, inline="always")
def _lanes(a):
    n = BYTES // (a.dtype.bitwidth // 8)
    return lambda a: n


@overload(load, inline="always")
def _jit_load(a, i):
    return lambda a, i: _load(a, i)


@overload(store, inline="always")
def _jit_store(a, i, v):
    return lambda a, i, v: _store(a, i, v)


@overload(splat, inline="always")
def _jit_splat(s, like):
    return lambda s, like: _splat(s, like)


@overload(fma, inline="always")
def _jit_fma(s, x, acc):
    return lambda s, x, acc: _fma(s, x, acc)
