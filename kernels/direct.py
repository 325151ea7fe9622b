"""Direct stride-1 convolution as long contiguous multiply-adds.

With stride 1, output pixel (i, j) reads input pixels (i + a, j + b). Lay the
batch out so that many pixels follow each other in memory, and every kernel
tap (c, a, b) becomes one long contiguous multiply-add over many images at once:

    y[f, i', p] += w[f, c, a, b] * x[c, i' + a * ROW_STEP, p + a * POS_STEP + b * COL_STEP]

Two layouts, same kernels (only the three steps differ):

- interleaved, (C, HP, WP*N): pixel (h, w) of every image side by side, the
  batch innermost; a tap moves a rows and b*N positions (ROW_STEP 1, POS_STEP 0,
  COL_STEP N). An output row is exactly OW*N positions: nothing is wasted.
- planes, (C, 1, N*HP*WP): whole images one after another in one long row; a
  tap moves a*WP + b positions (ROW_STEP 0, POS_STEP WP, COL_STEP 1). The
  windows that cross an image's right or bottom edge are wasted (C3: 49 %),
  but the loops stay long when the batch is small, where the interleaved rows
  are only WP*N positions.

Wasted positions are computed and discarded (forward) or hold zeros
(backward). Long unit-stride loops are what LLVM vectorises; LeNet's 5-wide
windows and 10-wide rows are not.

Rows are cut into segments of SEGMENT positions so that a task's data stays
in cache. One task per (output row, segment), per (pair of filters, channel,
run of rows) or per (pair of channels, input row, segment): every output
element has one writer and a fixed summation order, whatever the thread count.
"""

import numpy as np
from numba import njit, prange

SEGMENT = 4096  # positions per task; measured on LeNet's shapes at batch 256
TASKS = 8  # at least this many weight-gradient tasks, so that two cores share C1's evenly

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
def axpy4_pair(a0, b0, x0, a1, b1, x1, a2, b2, x2, a3, b3, x3, y, z):
    """y += a0 x0 + ... + a3 x3 and z += b0 x0 + ... + b3 x3. Loads and stores
    bound a plain axpy: four inputs per load and store of y (measured ~1.6x
    faster than four axpys), and two outputs per load of the inputs (two
    filters in the forward, C3 ~20 % faster than one at a time; two input
    channels in the input gradient)."""
    for p in range(y.shape[0]):
        v0, v1, v2, v3 = x0[p], x1[p], x2[p], x3[p]
        y[p] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
        z[p] += b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3


@njit(inline="always")
def start_pair(k, y0, z0, a0, b0, x0, a1, b1, x1, a2, b2, x2, y, z):
    """y = y0 + a0 x0 + ... and z = z0 + b0 x0 + ... over the first k <= 3 taps:
    the first pass over the outputs writes the bias and the taps left over
    from the fours, instead of writing the bias and adding those taps in
    passes of their own (C3 forward: 38 passes instead of 42, C1: 7 instead of 9)."""
    n = y.shape[0]
    if k == 0:  # one loop per k: a test inside the loop would keep LLVM from vectorising it
        for p in range(n):
            y[p], z[p] = y0, z0
    elif k == 1:
        for p in range(n):
            y[p], z[p] = y0 + a0 * x0[p], z0 + b0 * x0[p]
    elif k == 2:
        for p in range(n):
            y[p], z[p] = y0 + a0 * x0[p] + a1 * x1[p], z0 + b0 * x0[p] + b1 * x1[p]
    else:
        for p in range(n):
            y[p] = y0 + a0 * x0[p] + a1 * x1[p] + a2 * x2[p]
            z[p] = z0 + b0 * x0[p] + b1 * x1[p] + b2 * x2[p]


@njit(inline="always", fastmath=REDUCE)
def dot(x, y):
    s = x.dtype.type(0)
    for p in range(x.shape[0]):
        s += x[p] * y[p]
    return s


@njit(inline="always", fastmath=REDUCE)
def dot4_pair(g, h, x0, x1, x2, x3, acc, acc2, t):
    """acc[t + k] += g . xk and acc2[t + k] += h . xk for k < 4: two filters'
    gradients g and h against four taps' inputs; each load of an x serves two
    multiply-adds (C3 weight gradient ~25 % faster than one filter per task)."""
    s0 = s1 = s2 = s3 = u0 = u1 = u2 = u3 = g.dtype.type(0)
    for p in range(g.shape[0]):
        v0, v1, v2, v3 = x0[p], x1[p], x2[p], x3[p]
        s0 += g[p] * v0
        s1 += g[p] * v1
        s2 += g[p] * v2
        s3 += g[p] * v3
        u0 += h[p] * v0
        u1 += h[p] * v1
        u2 += h[p] * v2
        u3 += h[p] * v3
    acc[t] += s0
    acc[t + 1] += s1
    acc[t + 2] += s2
    acc[t + 3] += s3
    acc2[t] += u0
    acc2[t + 1] += u1
    acc2[t + 2] += u2
    acc2[t + 3] += u3


@njit(inline="always")
def segment(task, pieces, length):
    """Task -> (row, [start, stop) of the row) when each row is cut into `pieces` segments."""
    row, piece = task // pieces, task % pieces
    start = piece * SEGMENT
    return row, start, min(length, start + SEGMENT)


@njit(inline="always")
def segment_count(length):
    return max(1, -(-length // SEGMENT))


@njit(inline="always")
def reach(kh, kw, pos_step, col_step):
    """How many positions past its first a window's last tap lies, in its row: the
    positions at a row's end where no window fits."""
    return (kh - 1) * pos_step + (kw - 1) * col_step


@njit(inline="always")
def filter_pair(pair, channels, filters):
    """Weight-gradient pair number -> (filter, its partner, channel); an odd last filter partners itself."""
    fo = 2 * (pair // channels)
    return fo, min(fo + 1, filters - 1), pair % channels


@njit(inline="always")
def tap(t, kh, kw, row_step, pos_step, col_step):
    """Kernel tap number t in (C, KH, KW) order -> (channel, rows, positions) it moves."""
    c, a, b = t // (kh * kw), (t // kw) % kh, t % kw
    return c, a * row_step, a * pos_step + b * col_step


@njit(parallel=True, cache=True)
def gradient_to_planes(dy, hp, wp, planes):
    """Lays dy (N, F, OH, OW) out as the forward's output in the planes layout,
    planes: (F, 1, N*HP*WP): output (n, i, j) at position (n*HP + i)*WP + j, zeros
    everywhere else. One (filter, image) per task, reading dy in order."""
    n, f, oh, ow = dy.shape
    for task in prange(f * n):
        fo, img = task // n, task % n
        image = planes[fo, 0, img * hp * wp:(img + 1) * hp * wp]
        image[oh * wp:] = 0
        for i in range(oh):
            g, out = dy[img, fo, i], image[i * wp:(i + 1) * wp]  # sliced from 0: vectorises
            for j in range(ow):
                out[j] = g[j]
            out[ow:] = 0


@njit(parallel=True, cache=True)
def conv_forward(x, w, bias, row_step, pos_step, col_step, out):
    """x: (C, R, L) input rows; w: (F, C, KH, KW); bias: (F,)
    out: (F, R', L') with L' >= L - reach, overwritten up to the last window that fits in a row."""
    c, _, length = x.shape
    f, _, kh, kw = w.shape
    taps = c * kh * kw
    length -= reach(kh, kw, pos_step, col_step)  # the last window that fits in a row
    pieces = segment_count(length)
    fours = taps - taps % 4
    # the taps left over from the fours (up to 3), for the first pass; unused ones repeat the last tap
    u0, u1, u2 = min(fours, taps - 1), min(fours + 1, taps - 1), min(fours + 2, taps - 1)
    l0, s0, q0 = tap(u0, kh, kw, row_step, pos_step, col_step)
    l1, s1, q1 = tap(u1, kh, kw, row_step, pos_step, col_step)
    l2, s2, q2 = tap(u2, kh, kw, row_step, pos_step, col_step)
    for task in prange(out.shape[1] * pieces):
        i, start, stop = segment(task, pieces, length)
        for fo in range(0, f, 2):  # filters in pairs; an odd last one pairs with a scratch row
            f2 = min(fo + 1, f - 1)
            acc = out[fo, i, start:stop]
            acc2 = out[f2, i, start:stop] if f2 > fo else np.empty(stop - start, out.dtype)
            w1, w2 = w[fo].ravel(), w[f2].ravel()
            start_pair(taps - fours, bias[fo], bias[f2], w1[u0], w2[u0], x[l0, i + s0, start + q0:],
                       w1[u1], w2[u1], x[l1, i + s1, start + q1:], w1[u2], w2[u2], x[l2, i + s2, start + q2:],
                       acc, acc2)
            for t in range(0, fours, 4):  # four taps per load and store of acc, across rows and channels
                c0, r0, p0 = tap(t, kh, kw, row_step, pos_step, col_step)
                c1, r1, p1 = tap(t + 1, kh, kw, row_step, pos_step, col_step)
                c2, r2, p2 = tap(t + 2, kh, kw, row_step, pos_step, col_step)
                c3, r3, p3 = tap(t + 3, kh, kw, row_step, pos_step, col_step)
                axpy4_pair(w1[t], w2[t], x[c0, i + r0, start + p0:], w1[t + 1], w2[t + 1], x[c1, i + r1, start + p1:],
                           w1[t + 2], w2[t + 2], x[c2, i + r2, start + p2:], w1[t + 3], w2[t + 3],
                           x[c3, i + r3, start + p3:], acc, acc2)


@njit(parallel=True, cache=True, fastmath=REDUCE)
def conv_weight_grad(x, dy, row_step, pos_step, col_step, dw, bias_grad):
    """dw[f, c, a, b] = sum over output rows i and positions p of
    dy[f, i, p] * x[c, i + a*row_step, p + a*pos_step + b*col_step],
    and bias_grad[f] = sum of dy[f], both overwritten.

    x: (C, R, L); dy: (F, R', L') with L' >= L - reach, zero where no output is
    dw: (F, C, KH, KW). One (pair of filters, channel) per task, an odd last
    filter paired with itself, its (row, segment) pieces summed in order. When
    that gives fewer than TASKS tasks (C1: 3), each task's pieces are split
    into runs, summed apart and then in order: the split depends on the shapes
    only, so the result does not depend on the thread count. The channel-0
    tasks sum the bias gradient too (in float64), while dy is in cache.
    """
    c, _, length = x.shape
    f, _, kh, kw = dw.shape
    taps = kh * kw
    length -= reach(kh, kw, pos_step, col_step)  # the last window that fits in a row
    pieces = segment_count(length)
    work = dy.shape[1] * pieces  # (row, segment) pieces per task
    base = (f + 1) // 2 * c
    runs = max(1, min(work, TASKS // base))
    acc = np.zeros((base * runs, 2, taps), dw.dtype)
    bias = np.zeros((base * runs, 2))
    for task in prange(base * runs):
        pair, run = task // runs, task % runs
        fo, f2, ch = filter_pair(pair, c, f)
        for k in range(run * work // runs, (run + 1) * work // runs):
            i, start, stop = segment(k, pieces, length)
            g, h = dy[fo, i, start:stop], dy[f2, i, start:stop]
            if ch == 0:
                sum_g, sum_h = 0.0, 0.0
                for p in range(g.shape[0]):
                    sum_g += g[p]
                    sum_h += h[p]
                bias[task, 0] += sum_g
                bias[task, 1] += sum_h
            t = 0
            while t + 4 <= taps:
                _, r0, p0 = tap(t, kh, kw, row_step, pos_step, col_step)
                _, r1, p1 = tap(t + 1, kh, kw, row_step, pos_step, col_step)
                _, r2, p2 = tap(t + 2, kh, kw, row_step, pos_step, col_step)
                _, r3, p3 = tap(t + 3, kh, kw, row_step, pos_step, col_step)
                dot4_pair(g, h, x[ch, i + r0, start + p0:], x[ch, i + r1, start + p1:],
                          x[ch, i + r2, start + p2:], x[ch, i + r3, start + p3:], acc[task, 0], acc[task, 1], t)
                t += 4
            for u in range(t, taps):
                _, ru, pu = tap(u, kh, kw, row_step, pos_step, col_step)
                acc[task, 0, u] += dot(g, x[ch, i + ru, start + pu:])
                acc[task, 1, u] += dot(h, x[ch, i + ru, start + pu:])
    for pair in range(base):
        fo, f2, ch = filter_pair(pair, c, f)
        total = acc[pair * runs].copy()
        total_bias = bias[pair * runs].copy()
        for run in range(1, runs):
            total += acc[pair * runs + run]
            total_bias += bias[pair * runs + run]
        dw[fo, ch] = total[0].reshape(kh, kw)
        dw[f2, ch] = total[1].reshape(kh, kw)
        if ch == 0:
            bias_grad[fo], bias_grad[f2] = total_bias[0], total_bias[1]


@njit(parallel=True, cache=True)
def conv_input_grad(dy, w, row_step, pos_step, col_step, dx):
    """dx[c, i + a*row_step, p + a*pos_step + b*col_step] += w[f, c, a, b] * dy[f, i, p]: the
    transposed convolution.

    dy: (F, R', L') with L' >= L - reach, zero where no output is; w: (F, C, KH, KW)
    dx: (C, R, L) padded input rows, overwritten. Gathered: a task owns a segment
    of one input row in two channels (an odd last channel pairs with a scratch
    row) and sums every (f, a, b) that reaches it; each load of dy serves both.
    """
    f, out_rows = dy.shape[:2]
    _, c, kh, kw = w.shape
    _, in_rows, length = dx.shape
    valid = length - reach(kh, kw, pos_step, col_step)  # dy positions that can hold an output
    pieces = segment_count(length)
    for task in prange((c + 1) // 2 * in_rows * pieces):
        row, start, stop = segment(task, pieces, length)
        ch, r = 2 * (row // in_rows), row % in_rows
        ch2 = min(ch + 1, c - 1)
        out = dx[ch, r, start:stop]
        out2 = dx[ch2, r, start:stop] if ch2 > ch else np.empty(stop - start, dx.dtype)
        out[:], out2[:] = 0, 0
        for a in range(kh):
            i = r - a * row_step
            if i < 0 or i >= out_rows:
                continue
            for b in range(kw):
                shift = a * pos_step + b * col_step
                # dx positions q in [start, stop) take dy positions p = q - shift in [0, valid)
                lo, hi = max(start - shift, 0), min(stop - shift, valid)
                if lo >= hi:
                    continue
                first, last = lo + shift - start, hi + shift - start  # within this task's segment
                target, target2 = out[first:last], out2[first:last]
                # filters in fours: four dy rows per load and store of the two dx segments
                for fo in range(0, f - f % 4, 4):
                    axpy4_pair(w[fo, ch, a, b], w[fo, ch2, a, b], dy[fo, i, lo:],
                               w[fo + 1, ch, a, b], w[fo + 1, ch2, a, b], dy[fo + 1, i, lo:],
                               w[fo + 2, ch, a, b], w[fo + 2, ch2, a, b], dy[fo + 2, i, lo:],
                               w[fo + 3, ch, a, b], w[fo + 3, ch2, a, b], dy[fo + 3, i, lo:], target, target2)
                for fo in range(f - f % 4, f):
                    axpy(w[fo, ch, a, b], dy[fo, i, lo:], target)
                    axpy(w[fo, ch2, a, b], dy[fo, i, lo:], target2)


@njit(parallel=True, cache=True)
def interleave(x, out):
    """out[c, h, w, n] = x[n, c, h, w]: a batch (N, C, H, W) in the interleaved
    layout. One (channel, row) per task, whose (W, N) block of out stays in
    cache while image after image fills a column of it: reads run along x's
    rows, and NumPy's own transposing copy is ~5x slower on C1's input."""
    n, c, h, w = x.shape
    for task in prange(c * h):
        ch, r = task // h, task % h
        block = out[ch, r]
        for img in range(n):
            row = x[img, ch, r]
            for j in range(w):
                block[j, img] = row[j]
