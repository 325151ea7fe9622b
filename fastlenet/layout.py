"""Memory layouts: the protocol between the fast layers, named once.

A large batch flows BATCH_INNERMOST from C1 to the loss: pixel (c, h, w) of every
image side by side, so an (N, C, H, W) array is the (N, C, H, W) view of a dense
(C, H, W, N) block. The convolution returns it (its interleaved rows, see
layers.RowLayout), the pool and the ReLU keep it, Flatten and Linear pass it on,
and the loss makes its logits contiguous. Small batches and a user's own arrays
are IMAGE_MAJOR (C order). Layers ask `order(a)`; none re-derives it from strides.
"""

import math

import numpy as np

BATCH_INNERMOST = "batch-innermost"  # images are the innermost axis in memory
IMAGE_MAJOR = "image-major"          # C order: image after image
STRIDED = "strided"                  # anything else: NumPy walks it

CACHE_LINE = 64  # bytes
ALIGN_FROM = 1 << 18  # bytes; below it the ~4 us an aligned allocation costs outweighs what it saves


def aligned_empty(shape, dtype):
    """np.empty starting on a cache line. malloc's blocks start 16 bytes into
    one, so many of the kernels' vector loads would straddle two lines."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes < ALIGN_FROM:
        return np.empty(shape, dtype)
    raw = np.empty(nbytes + CACHE_LINE, np.uint8)
    start = -raw.__array_interface__["data"][0] % CACHE_LINE
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def reused(buffer, shape, dtype):
    """`buffer` when it has this shape and dtype (a layer's scratch, kept from step
    to step), else a new aligned_empty one."""
    if buffer is not None and buffer.shape == tuple(shape) and buffer.dtype == dtype:
        return buffer
    return aligned_empty(shape, dtype)


def aligned_empty_like(a, dtype=None, shape=None):
    """aligned_empty in a's memory order, as np.empty_like's order "K"; of another
    `shape` (as many axes as a: a layer's output laid out as its input)."""
    shape = a.shape if shape is None else shape
    if a.flags.c_contiguous:
        return aligned_empty(shape, dtype or a.dtype)
    axes = memory_order(a)
    dense = aligned_empty([shape[axis] for axis in axes], dtype or a.dtype)
    return dense.transpose(sorted(range(a.ndim), key=axes.__getitem__))  # back to a's axis order


def order(a):
    """BATCH_INNERMOST, IMAGE_MAJOR or STRIDED: how a's elements lie in memory."""
    if a.shape[0] > 1 and a.strides[0] == a.itemsize:
        return BATCH_INNERMOST
    return IMAGE_MAJOR if a.flags.c_contiguous else STRIDED


def batch_innermost(a):
    return order(a) == BATCH_INNERMOST


def interleaved_steps(n):
    """The direct kernels' tap steps (rows, positions per tap row, per tap column)
    over BATCH_INNERMOST rows: N images side by side at each position."""
    return 1, 0, n


def planes_steps(wp):
    """The same over image-major rows of padded width wp (image after image)."""
    return 0, wp, 1


def memory_order(a):
    """a's axes from outermost to innermost in memory."""
    return sorted(range(a.ndim), key=lambda axis: -a.strides[axis])


def flat(a):
    """a as one 1-D view in memory order, whatever its axis order, or None
    when a is not one dense block."""
    if a.flags.c_contiguous:
        return a.reshape(-1)
    dense = a.transpose(memory_order(a))
    return dense.reshape(-1) if dense.flags.c_contiguous else None


def same_order(a, b):
    """a and b hold their elements in the same memory order (strides alike,
    counted in elements; axes of length 1 do not matter)."""
    return all(sa * b.itemsize == sb * a.itemsize for sa, sb, size in zip(a.strides, b.strides, a.shape) if size > 1)
