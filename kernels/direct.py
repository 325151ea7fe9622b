"""Direct stride-1 convolution on flattened planes ("wide" rows).

With stride 1, output pixel (i, j) reads input pixels (i + a) * WP + (j + b)
of the flattened padded plane. Computing the output on a grid as wide as the
input (OH rows of WP, of which the first OW are real) turns every kernel tap
(a, b) into one long contiguous multiply-add over the whole plane:

    y_wide[f, p] += w[f, c, a, b] * x_flat[c, p + a * WP + b],  p < L = (OH - 1) * WP + OW

Long unit-stride loops are what LLVM vectorises; LeNet's 5-wide windows
are not. The WP - OW extra columns per row are discarded (forward) or hold
zeros (backward).
"""

import numpy as np
from numba import njit, prange

# Reassociation lets LLVM vectorise the dot products; the order is still fixed
# by the compiled code, so results stay the same from run to run.
REDUCE = {"reassoc", "contract"}


@njit(inline="always")
def axpy(alpha, x, y):
    """y += alpha * x over 1-D views. Indexing slices from 0 (rather than
    x[off + p]) is what lets LLVM vectorise: about 8x faster here."""
    for p in range(x.shape[0]):
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


@njit(inline="always")
def tap(x, img, t, kh, kw, width, length):
    """The input run that kernel tap t = (c, a, b) multiplies: x[img, c, a*WP + b :][:length]."""
    ch, a, b = t // (kh * kw), (t // kw) % kh, t % kw
    off = a * width + b
    return x[img, ch, off:off + length]


@njit(parallel=True, cache=True)
def conv_forward(x, w, bias, width, out):
    """x: (N, C, HP*WP) flattened padded input; w: (F, C, KH, KW); bias: (F,)
    out: (N, F, OH, OW), overwritten. `width` is WP. One image per task."""
    n, f, oh, ow = out.shape
    _, c, kh, kw = w.shape
    length = (oh - 1) * width + ow
    taps = c * kh * kw
    for img in prange(n):
        acc = np.empty((f, length), out.dtype)
        for fo in range(f):
            acc[fo, :] = bias[fo]
            wf = w[fo].ravel()  # taps in (c, a, b) order
            t = 0
            while t + 4 <= taps:
                axpy4(wf[t], tap(x, img, t, kh, kw, width, length),
                      wf[t + 1], tap(x, img, t + 1, kh, kw, width, length),
                      wf[t + 2], tap(x, img, t + 2, kh, kw, width, length),
                      wf[t + 3], tap(x, img, t + 3, kh, kw, width, length), acc[fo])
                t += 4
            for r in range(t, taps):
                axpy(wf[r], tap(x, img, r, kh, kw, width, length), acc[fo])
            for i in range(oh):
                for j in range(ow):
                    out[img, fo, i, j] = acc[fo, i * width + j]


@njit(parallel=True, cache=True, fastmath=REDUCE)
def conv_weight_grad(x, dy_wide, width, out_w, dw):
    """dw[f, c, a, b] = sum over images and positions of dy * shifted x.

    x: (N, C, HP*WP); dy_wide: (N, F, OH*WP), zero in the columns >= OW
    dw: (F, C, KH, KW), overwritten. One (f, c) pair per task: one writer per
    element, images summed in order, so any thread count gives the same bits.
    """
    n, c, _ = x.shape
    f, _, kh, kw = dw.shape
    length = (dy_wide.shape[2] // width - 1) * width + out_w
    for task in prange(f * c):
        fo, ch = task // c, task % c
        acc = np.zeros((kh, kw), dw.dtype)
        for img in range(n):
            for a in range(kh):
                for b in range(kw):
                    off = a * width + b
                    acc[a, b] += dot(dy_wide[img, fo, :length], x[img, ch, off:off + length])
        dw[fo, ch] = acc


@njit(parallel=True, cache=True)
def conv_input_grad(dy_wide, w, width, out_w, dx):
    """dx_flat[c, p + a*WP + b] += w[f, c, a, b] * dy_wide[f, p]: the transposed convolution.

    dy_wide: (N, F, OH*WP), zero in the columns >= OW; w: (F, C, KH, KW)
    dx: (N, C, HP*WP) padded input gradient, overwritten. One image per task.
    """
    n, f, _ = dy_wide.shape
    _, c, kh, kw = w.shape
    length = (dy_wide.shape[2] // width - 1) * width + out_w
    for img in prange(n):
        dx[img] = 0
        g = dy_wide[img]
        for ch in range(c):
            for a in range(kh):
                for b in range(kw):
                    off = a * width + b
                    target = dx[img, ch, off:off + length]
                    fo = 0
                    while fo + 4 <= f:
                        axpy4(w[fo, ch, a, b], g[fo, :length], w[fo + 1, ch, a, b], g[fo + 1, :length],
                              w[fo + 2, ch, a, b], g[fo + 2, :length], w[fo + 3, ch, a, b], g[fo + 3, :length],
                              target)
                        fo += 4
                    for r in range(fo, f):
                        axpy(w[r, ch, a, b], g[r, :length], target)
