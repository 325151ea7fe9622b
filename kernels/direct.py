"""Direct stride-1 convolution on image rows laid side by side.

Lay the batch out row-major across images: x[c, h, n * WP + w], every input
row h of every image in one long row of length L = N * WP. With stride 1,
output row i reads input rows i + a, and output pixel (i, j) of image n sits
at position p = n * WP + j of its row, so every kernel tap (c, a, b) is one
long contiguous multiply-add over the whole batch:

    y[f, i, p] += w[f, c, a, b] * x[c, i + a, p + b]

Positions whose window straddles two images (j >= OW: 4 of 14 in C3) are
computed and discarded (forward) or hold zeros (backward); that is the only
waste, and long unit-stride loops are what LLVM vectorises (LeNet's 5-wide
windows and 10-wide rows are not). Measured on C3 against the earlier layout,
planes flattened image after image (which also computed the rows below each
image's last output): forward 3.0-3.5 -> 2.2-2.3 ms at batch 256.

Rows are cut into segments of SEGMENT positions so that a task's rows stay in
cache. One task per (output row, segment), per (filter, channel) or per
(input row, segment): every output element has one writer and a fixed
summation order, whatever the thread count.
"""

import numpy as np
from numba import njit, prange

SEGMENT = 4096  # positions per task; measured on LeNet's shapes at batch 256

# Reassociation lets LLVM vectorise the dot products; the order is still fixed
# by the compiled code, so results stay the same from run to run.
REDUCE = {"reassoc", "contract"}


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
def segment(task, pieces, length):
    """Task -> (row, [start, stop) of the row) when each row is cut into `pieces` segments."""
    row, piece = task // pieces, task % pieces
    start = piece * SEGMENT
    return row, start, min(length, start + SEGMENT)


@njit(inline="always")
def segment_count(length):
    return max(1, -(-length // SEGMENT))


@njit(parallel=True, cache=True, fastmath=REDUCE)
def gradient_to_rows(dy, rows, bias_grad):
    """Lays dy (N, F, OH, OW) out as the forward's rows, rows: (F, OH, N*WP), zero
    where no output is, and sums the bias gradient on the way. One (filter, run of
    images) per task, reading dy in order; the bias adds the runs' sums in order."""
    n, f, oh, ow = dy.shape
    width = rows.shape[2] // n
    run = 16
    runs = (n + run - 1) // run
    partial = np.empty((f, runs))  # float64: sums over up to run*OH*OW terms
    for task in prange(f * runs):
        fo, k = task // runs, task % runs
        total = 0.0
        for img in range(k * run, min(n, (k + 1) * run)):
            start = img * width
            for i in range(oh):
                g, row = dy[img, fo, i], rows[fo, i, start:start + width]
                for j in range(ow):
                    row[j] = g[j]
                    total += g[j]
                for j in range(ow, width):
                    row[j] = 0
        partial[fo, k] = total
    for fo in range(f):
        bias_grad[fo] = partial[fo].sum()


@njit(inline="always")
def tap(t, kh, kw):
    """Kernel tap number t in (C, KH, KW) order -> (c, a, b)."""
    return t // (kh * kw), (t // kw) % kh, t % kw


@njit(parallel=True, cache=True)
def conv_forward(x, w, bias, out):
    """x: (C, HP, N*WP) input rows; w: (F, C, KH, KW); bias: (F,)
    out: (F, OH, N*WP), overwritten up to N*WP - (KW-1) (the rest is left as is)."""
    c, _, length = x.shape
    f, _, kh, kw = w.shape
    oh, taps = out.shape[1], c * kh * kw
    length -= kw - 1  # the last window that stays inside the row
    pieces = segment_count(length)
    for task in prange(oh * pieces):
        i, start, stop = segment(task, pieces, length)
        for fo in range(f):
            acc = out[fo, i, start:stop]
            acc[:] = bias[fo]
            wf = w[fo].ravel()
            t = 0
            while t + 4 <= taps:  # four taps per load and store of acc, across rows and channels
                c0, a0, b0 = tap(t, kh, kw)
                c1, a1, b1 = tap(t + 1, kh, kw)
                c2, a2, b2 = tap(t + 2, kh, kw)
                c3, a3, b3 = tap(t + 3, kh, kw)
                axpy4(wf[t], x[c0, i + a0, start + b0:], wf[t + 1], x[c1, i + a1, start + b1:],
                      wf[t + 2], x[c2, i + a2, start + b2:], wf[t + 3], x[c3, i + a3, start + b3:], acc)
                t += 4
            for r in range(t, taps):
                cr, ar, br = tap(r, kh, kw)
                axpy(wf[r], x[cr, i + ar, start + br:], acc)


@njit(parallel=True, cache=True, fastmath=REDUCE)
def conv_weight_grad(x, dy, dw):
    """dw[f, c, a, b] = sum over rows i and positions p of dy[f, i, p] * x[c, i + a, p + b].

    x: (C, HP, N*WP); dy: (F, OH, N*WP), zero where no output is
    dw: (F, C, KH, KW), overwritten. One (f, c) pair per task, segments summed in order.
    """
    c, _, length = x.shape
    f, _, kh, kw = dw.shape
    oh, taps = dy.shape[1], kh * kw
    length -= kw - 1
    pieces = segment_count(length)
    for task in prange(f * c):
        fo, ch = task // c, task % c
        acc = np.zeros(taps, dw.dtype)
        for k in range(oh * pieces):
            i, start, stop = segment(k, pieces, length)
            g = dy[fo, i, start:stop]
            t = 0
            while t + 4 <= taps:
                _, a0, b0 = tap(t, kh, kw)
                _, a1, b1 = tap(t + 1, kh, kw)
                _, a2, b2 = tap(t + 2, kh, kw)
                _, a3, b3 = tap(t + 3, kh, kw)
                s0, s1, s2, s3 = dot4(g, x[ch, i + a0, start + b0:], x[ch, i + a1, start + b1:],
                                      x[ch, i + a2, start + b2:], x[ch, i + a3, start + b3:])
                acc[t] += s0
                acc[t + 1] += s1
                acc[t + 2] += s2
                acc[t + 3] += s3
                t += 4
            for r in range(t, taps):
                _, ar, br = tap(r, kh, kw)
                acc[r] += dot(g, x[ch, i + ar, start + br:])
        dw[fo, ch] = acc.reshape(kh, kw)


@njit(parallel=True, cache=True)
def conv_input_grad(dy, w, dx):
    """dx[c, i + a, p + b] += w[f, c, a, b] * dy[f, i, p]: the transposed convolution.

    dy: (F, OH, N*WP), zero where no output is; w: (F, C, KH, KW)
    dx: (C, HP, N*WP) padded input rows, overwritten. Gathered: a task owns a
    segment of one input row and sums every (f, a, b) that reaches it.
    """
    f, oh, length = dy.shape
    _, c, kh, kw = w.shape
    hp = dx.shape[1]
    valid = length - (kw - 1)  # dy positions that can hold an output
    pieces = segment_count(length)
    for task in prange(c * hp * pieces):
        row, start, stop = segment(task, pieces, length)
        ch, r = row // hp, row % hp
        out = dx[ch, r]
        out[start:stop] = 0
        for a in range(max(0, r - oh + 1), min(kh, r + 1)):
            i = r - a
            for b in range(kw):
                # dx positions q in [start, stop) take dy positions p = q - b in [0, valid)
                lo, hi = max(start - b, 0), min(stop - b, valid)
                if lo >= hi:
                    continue
                target = out[lo + b:hi + b]
                # filters in fours: four dy rows per load and store of the dx segment
                for fo in range(0, f - f % 4, 4):
                    axpy4(w[fo, ch, a, b], dy[fo, i, lo:], w[fo + 1, ch, a, b], dy[fo + 1, i, lo:],
                          w[fo + 2, ch, a, b], dy[fo + 2, i, lo:], w[fo + 3, ch, a, b], dy[fo + 3, i, lo:], target)
                for fo in range(f - f % 4, f):
                    axpy(w[fo, ch, a, b], dy[fo, i, lo:], target)
