"""Direct stride-1 convolution on flattened, channel-major planes.

With stride 1, output pixel (i, j) of an image reads input pixels
(i + a) * WP + (j + b) of its flattened padded plane. Lay the batch out
channel-major, x[c, n * HP*WP + i * WP + j], and compute the output on the
input's own grid: every kernel tap (c, a, b) becomes one long contiguous
multiply-add over many images at once,

    y[f, p] += w[f, c, a, b] * x[c, p + a * WP + b]

Grid positions outside the OH x OW output of their image are computed and
discarded (forward) or hold zeros (backward). Long unit-stride loops are what
LLVM vectorises; LeNet's 5-wide windows and 10-wide rows are not.

Work is split into chunks of whole images (about CHUNK_FLOATS grid points),
one task per chunk or per (filter, channel) pair: every output element has
one writer and a fixed summation order, whatever the thread count.
"""

import numpy as np
from numba import njit, prange

# Grid points per task, measured on LeNet's shapes: forward and weight gradient
# stream one row per tap through L2; the input gradient keeps four dy rows and
# one dx row of the chunk in L1.
CHUNK_FLOATS = 4096
INPUT_GRAD_CHUNK_FLOATS = 1024

# Reassociation lets LLVM vectorise the dot products; the order is still fixed
# by the compiled code, so results stay the same from run to run.
REDUCE = {"reassoc", "contract"}


def images_per_chunk(plane, floats=CHUNK_FLOATS):
    return max(1, floats // plane)


@njit(inline="always")
def axpy(alpha, x, y):
    """y += alpha * x over 1-D views. Indexing slices from 0 (rather than
    x[off + p]) is what lets LLVM vectorise: about 8x faster here."""
    for p in range(y.shape[0]):
        y[p] += alpha * x[p]


@njit(inline="always")
def axpy4(a0, x0, a1, x1, a2, x2, a3, x3, y):
    """y += a0 x0 + a1 x1 + a2 x2 + a3 x3: four taps per load and store of y,
    which is what bounds a plain axpy (measured ~1.6x faster than four axpys)."""
    for p in range(y.shape[0]):
        y[p] += a0 * x0[p] + a1 * x1[p] + a2 * x2[p] + a3 * x3[p]


@njit(inline="always", fastmath=REDUCE)
def dot(x, y):
    s = x.dtype.type(0)
    for p in range(x.shape[0]):
        s += x[p] * y[p]
    return s


@njit(inline="always", fastmath=REDUCE)
def dot4(g, x0, x1, x2, x3):
    """Four dot products sharing g: one load of g per four multiply-adds."""
    s0 = s1 = s2 = s3 = g.dtype.type(0)
    for p in range(g.shape[0]):
        s0 += g[p] * x0[p]
        s1 += g[p] * x1[p]
        s2 += g[p] * x2[p]
        s3 += g[p] * x3[p]
    return s0, s1, s2, s3


@njit(inline="always")
def tap_offset(t, kh, kw, width):
    """Kernel tap t = (c, a, b) in (C, KH, KW) order -> (c, a * WP + b)."""
    return t // (kh * kw), ((t // kw) % kh) * width + t % kw


@njit(inline="always")
def chunk_bounds(task, plane, images, total):
    start = task * images * plane
    return start, min(total, start + images * plane)


@njit(parallel=True, cache=True, fastmath=REDUCE)
def gradient_to_grid(dy, grid, bias_grad):
    """Lays dy (N, F, OH, OW) out on the forward's grid, grid: (F, N, HP, WP), zero
    where no output is, and sums the bias gradient on the way. One filter per task."""
    n, f, oh, ow = dy.shape
    for fo in prange(f):
        total = 0.0  # float64: a sum over N*OH*OW terms
        for img in range(n):
            grid[fo, img] = 0
            for i in range(oh):
                row, g = grid[fo, img, i], dy[img, fo, i]
                for j in range(ow):
                    row[j] = g[j]
                    total += g[j]
        bias_grad[fo] = total


@njit(parallel=True, cache=True)
def conv_forward(x, w, bias, width, plane, images, out):
    """x: (C, N*HP*WP) channel-major padded input; w: (F, C, KH, KW); bias: (F,)
    out: (F, N*HP*WP), overwritten where an output pixel can start (the rest is left as is).
    `width` is WP, `plane` HP*WP, `images` the images per task."""
    c, total = x.shape
    f, _, kh, kw = w.shape
    taps = c * kh * kw
    reach = (kh - 1) * width + kw - 1  # the furthest a window reaches past its first pixel
    for task in prange((total // plane + images - 1) // images):
        start, stop = chunk_bounds(task, plane, images, total)
        length = min(stop, total - reach) - start
        for fo in range(f):
            acc = out[fo, start:start + length]
            acc[:] = bias[fo]
            wf = w[fo].ravel()
            t = 0
            while t + 4 <= taps:
                c0, o0 = tap_offset(t, kh, kw, width)
                c1, o1 = tap_offset(t + 1, kh, kw, width)
                c2, o2 = tap_offset(t + 2, kh, kw, width)
                c3, o3 = tap_offset(t + 3, kh, kw, width)
                axpy4(wf[t], x[c0, start + o0:], wf[t + 1], x[c1, start + o1:],
                      wf[t + 2], x[c2, start + o2:], wf[t + 3], x[c3, start + o3:], acc)
                t += 4
            for r in range(t, taps):
                cr, o = tap_offset(r, kh, kw, width)
                axpy(wf[r], x[cr, start + o:], acc)


@njit(parallel=True, cache=True, fastmath=REDUCE)
def conv_weight_grad(x, dy, width, plane, images, dw):
    """dw[f, c, a, b] = sum over grid points p of dy[f, p] * x[c, p + a*WP + b].

    x: (C, N*HP*WP); dy: (F, N*HP*WP), zero outside each image's OH x OW outputs
    dw: (F, C, KH, KW), overwritten. One (f, c) pair per task, chunks summed in order.
    """
    c, total = x.shape
    f, _, kh, kw = dw.shape
    taps = kh * kw
    reach = (kh - 1) * width + kw - 1
    for task in prange(f * c):
        fo, ch = task // c, task % c
        acc = np.zeros(taps, dw.dtype)
        for chunk in range((total // plane + images - 1) // images):
            start, stop = chunk_bounds(chunk, plane, images, total)
            length = min(stop, total - reach) - start
            g = dy[fo, start:start + length]
            t = 0
            while t + 4 <= taps:
                s0, s1, s2, s3 = dot4(g, x[ch, start + tap_offset(t, kh, kw, width)[1]:],
                                      x[ch, start + tap_offset(t + 1, kh, kw, width)[1]:],
                                      x[ch, start + tap_offset(t + 2, kh, kw, width)[1]:],
                                      x[ch, start + tap_offset(t + 3, kh, kw, width)[1]:])
                acc[t] += s0
                acc[t + 1] += s1
                acc[t + 2] += s2
                acc[t + 3] += s3
                t += 4
            for r in range(t, taps):
                acc[r] += dot(g, x[ch, start + tap_offset(r, kh, kw, width)[1]:])
        dw[fo, ch] = acc.reshape(kh, kw)


@njit(parallel=True, cache=True)
def conv_input_grad(dy, w, width, plane, images, dx):
    """dx[c, p + a*WP + b] += w[f, c, a, b] * dy[f, p]: the transposed convolution.

    dy: (F, N*HP*WP), zero outside each image's OH x OW outputs; w: (F, C, KH, KW)
    dx: (C, N*HP*WP) padded input gradient, overwritten. One chunk of images per
    task; a valid output's window never leaves its image, so the task only
    writes inside its chunk (what it skips at the chunk's end multiplies zeros).
    """
    f, total = dy.shape
    _, c, kh, kw = w.shape
    for task in prange((total // plane + images - 1) // images):
        start, stop = chunk_bounds(task, plane, images, total)
        for ch in range(c):
            dx[ch, start:stop] = 0
            # filters in fours, taps inside: four dy rows and one dx row stay in L1.
            # dy[fo, start:] (int, slice) keeps the view contiguous for Numba; dy[:, start:][fo]
            # would not, and would not vectorise
            for fo in range(0, f - f % 4, 4):
                for a in range(kh):
                    for b in range(kw):
                        off = a * width + b
                        axpy4(w[fo, ch, a, b], dy[fo, start:], w[fo + 1, ch, a, b], dy[fo + 1, start:],
                              w[fo + 2, ch, a, b], dy[fo + 2, start:], w[fo + 3, ch, a, b], dy[fo + 3, start:],
                              dx[ch, start + off:stop])
            for fo in range(f - f % 4, f):
                for a in range(kh):
                    for b in range(kw):
                        axpy(w[fo, ch, a, b], dy[fo, start:], dx[ch, start + a * width + b:stop])
