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
(backward).

The forward and the input gradient are register-blocked (fastlenet.kernels.simd):
a block is ROWS filters (or input channels) at BLOCK_VECTORS x lanes consecutive
positions, ROWS x BLOCK_VECTORS vectors of sums that stay in registers while
every tap that reaches them is added; each tap loads BLOCK_VECTORS input vectors
and ROWS weights for ROWS x BLOCK_VECTORS multiply-adds (6 x 2 with 16 vector
registers, 6 x 4 with AVX-512's 32). LLVM's own vectorisation of a long loop
keeps the sums in memory instead, loading and storing them on every tap.
A row's last block ends on the row's last position and overlaps the block
before it, which the same task computed: the same sums, the same bits.

The weight gradient is a set of long dot products, which LLVM vectorises well:
rows are cut into segments of SEGMENT positions so that a task's data stays in
cache. Every output element has one writer and a fixed summation order,
whatever the thread count.
"""

import numpy as np
from numba import njit, prange

from .jit import kernel
from .simd import BLOCK_VECTORS, lanes, loads, outer_fma, row_splats, rows_from, store_rows

SEGMENT = 4096  # positions per task: a task's rows stay in cache (tuned on LeNet's shapes)
# dy is copied into rows this many elements longer: at batch 256 its rows are
# 10 KB apart and its filters 100 KB (multiples of 4 KB), so the 400 lines a
# C3 input-gradient block reads fall into a few L1 sets and evict each other
PAD = 16
RUN = 16  # vectors of positions per forward or input-gradient task: 8 blocks of 2, 4 of 4
ROWS = 6  # filters (forward) or input channels (input gradient) per register block
NARROW = 2  # vectors per block in rows too short for BLOCK_VECTORS (simd.py)
TASKS = 8  # at least this many tasks where a kernel can, so that two cores share the work evenly

# Reassociation lets LLVM vectorise the dot products; the order is still fixed
# by the compiled code, so results stay the same from run to run.
REDUCE = {"reassoc", "contract"}


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
    multiply-adds, where one filter per task spends a load on each."""
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


@njit(inline="always")
def row_runs(rows, n, vectors, width):
    """(blocks per task, tasks per row) for rows of n >= width positions in blocks of
    `vectors` vectors (`width` positions): RUN vectors' worth per task, fewer when
    that would leave fewer than TASKS tasks for the two cores (a Linear's single
    row of N positions)."""
    per_run = max(1, min(RUN // vectors, rows * (n // width) // TASKS))
    return per_run, -(-(n // width) // per_run)


@njit(inline="always")
def task_blocks(task, runs, per_run, n, width):
    """Task -> (its row, the blocks [first, last) of its run); block k starts at
    min(k * width, n - width). The last run also takes the row's end block, when
    width does not divide n: it overlaps the block before it, so both belong to one task."""
    row, run = task // runs, task % runs
    blocks = n // width
    first, last = run * per_run, min(blocks, (run + 1) * per_run)
    if last == blocks and n % width:
        last += 1
    return row, first, last


@njit(inline="always")
def filter_block(xf, wt, bias, offset, base, fo, out, q, vectors):
    """out[fo:fo + ROWS, q:q + vectors x lanes] = bias + every tap, out: (F, plane)
    flat; x's block at xf[base:], tap t at offset[t] from it. The sums stay in
    registers while all taps are added, each tap one load of the x vectors and
    one weight per filter. Filters past the last repeat it (the same sums,
    written twice)."""
    f = wt.shape[0]
    filters = rows_from(fo, f - 1, ROWS)
    sums = row_splats(bias, filters, vectors)
    for t in range(offset.shape[0]):
        sums = outer_fma(wt, filters, t, loads(xf, base + offset[t], vectors), sums)
    store_rows(out, filters, out.shape[0] // f, q, sums)


@njit(inline="always")
def forward_run(task, runs, per_run, xf, wt, bias, offset, length, n, yf, out_length, vectors):
    """Task `task` of conv_forward: its run of blocks of `vectors` x lanes positions of one output row."""
    width = vectors * lanes(xf)
    i, first, last = task_blocks(task, runs, per_run, n, width)
    for k in range(first, last):
        q = min(k * width, n - width)
        for fo in range(0, wt.shape[0], ROWS):
            filter_block(xf, wt, bias, offset, i * length + q, fo, yf, i * out_length + q, vectors)


@kernel(parallel=True)
def conv_forward(x, w, bias, row_step, pos_step, col_step, out):
    """x: (C, R, L) input rows; w: (F, C, KH, KW); bias: (F,)
    out: (F, R', L') with L' >= L - reach, overwritten up to the last window
    that fits in a row. All three contiguous.

    Register-blocked (`filter_block`): a task owns a run of blocks of one
    output row and does every filter on each block while its inputs are in
    cache. Rows too short for BLOCK_VECTORS vectors take blocks of two, and
    rows shorter than that go position by position.
    """
    c, rows, length = x.shape
    f, _, kh, kw = w.shape
    taps = c * kh * kw
    n = length - reach(kh, kw, pos_step, col_step)  # positions with a window, per row
    # reshape, not ravel: it refuses (rather than copies) an array that is not contiguous
    wt, xf, yf = w.reshape(f, taps), x.reshape(-1), out.reshape(-1)
    offset = np.empty(taps, np.int64)  # where tap t reads, from the block's own position in x
    for t in range(taps):
        ch, r, s = tap(t, kh, kw, row_step, pos_step, col_step)
        offset[t] = (ch * rows + r) * length + s
    out_rows, out_length = out.shape[1], out.shape[2]
    if n >= BLOCK_VECTORS * lanes(x):
        per_run, runs = row_runs(out_rows, n, BLOCK_VECTORS, BLOCK_VECTORS * lanes(x))
        for task in prange(out_rows * runs):
            forward_run(task, runs, per_run, xf, wt, bias, offset, length, n, yf, out_length, BLOCK_VECTORS)
    elif n >= NARROW * lanes(x):
        per_run, runs = row_runs(out_rows, n, NARROW, NARROW * lanes(x))
        for task in prange(out_rows * runs):
            forward_run(task, runs, per_run, xf, wt, bias, offset, length, n, yf, out_length, NARROW)
    else:
        for task in prange(out_rows * f):
            i, fo = task // f, task % f
            for p in range(n):
                total = bias[fo]
                for t in range(taps):
                    total += wt[fo, t] * xf[i * length + p + offset[t]]
                out[fo, i, p] = total


@kernel(parallel=True, fastmath=REDUCE)
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
        for t in range(taps):  # element by element: an array assignment's shape check costs seconds to compile
            dw[fo, ch, t // kw, t % kw] = total[0, t]
            dw[f2, ch, t // kw, t % kw] = total[1, t]
        if ch == 0:
            bias_grad[fo], bias_grad[f2] = total_bias[0], total_bias[1]


@njit(inline="always")
def channel_block(dyf, wc, zeros, shape, dy_rows, stride, edge, valid, r, q, co, steps, dxf, out, vectors):
    """dxf[co:co + ROWS, out:out + vectors x lanes] = every (filter, a, b) that
    reaches input positions [q, q + vectors x lanes) of row r. dxf: (C, plane)
    flat; wc: (C, KH*KW*F), the weights filters innermost; zeros: (C,); shape: (KH, KW, F);
    dyf: dy's rows as (R', F, stride) flat, position p at edge + p, zeros
    before and after. The sums stay in registers, each filter one load of the
    dy vectors and one weight per channel. Channels past the last repeat it."""
    (kh, kw, f), (row_step, pos_step, col_step) = shape, steps
    c = wc.shape[0]
    channels = rows_from(co, c - 1, ROWS)
    sums = row_splats(zeros, channels, vectors)
    for a in range(kh):
        i = r - a * row_step
        if i < 0 or i >= dy_rows:
            continue
        for b in range(kw):
            lo = q - a * pos_step - b * col_step
            if lo >= valid or lo + vectors * lanes(dyf) <= 0:  # no output there
                continue
            for fo in range(f):
                sums = outer_fma(wc, channels, (a * kw + b) * f + fo,
                                 loads(dyf, (i * f + fo) * stride + edge + lo, vectors), sums)
    store_rows(dxf, channels, dxf.shape[0] // c, out, sums)


@njit(inline="always")
def input_grad_run(task, runs, per_run, dyf, wc, zeros, shape, dy_rows, stride, edge, valid, length, steps, dxf,
                   vectors):
    """Task `task` of conv_input_grad: its run of blocks of `vectors` x lanes positions of one input row."""
    width = vectors * lanes(dxf)
    r, first, last = task_blocks(task, runs, per_run, length, width)
    for k in range(first, last):
        q = min(k * width, length - width)
        for co in range(0, wc.shape[0], ROWS):
            channel_block(dyf, wc, zeros, shape, dy_rows, stride, edge, valid, r, q, co, steps, dxf, r * length + q,
                          vectors)


@njit(inline="always")
def gather_row(dyf, wc, dy_rows, stride, edge, valid, r, length, row_step, pos_step, col_step, dxf):
    """Input row r, position by position: what six_channels does by blocks, for rows shorter than a block."""
    c, kh, kw, f = wc.shape
    plane = dxf.shape[0] // c
    for ch in range(c):
        for q in range(length):
            total = dxf.dtype.type(0)
            for a in range(kh):
                i = r - a * row_step
                if 0 <= i < dy_rows:
                    for b in range(kw):
                        p = q - a * pos_step - b * col_step
                        if 0 <= p < valid:
                            for fo in range(f):
                                total += wc[ch, a, b, fo] * dyf[(i * f + fo) * stride + edge + p]
            dxf[ch * plane + r * length + q] = total


@njit
def filters_innermost(w):
    """(F, C, KH, KW) -> a (C, KH, KW, F) copy. By loops: np.ascontiguousarray of the
    transposed view does the same and takes seconds longer to compile. The copy
    writes in order and reads across: writing across (F5's 400 x 120) cost 6x more."""
    f, c, kh, kw = w.shape
    wc = np.empty((c, kh, kw, f), w.dtype)
    for ch in range(c):
        for a in range(kh):
            for b in range(kw):
                for fo in range(f):
                    wc[ch, a, b, fo] = w[fo, ch, a, b]
    return wc


@kernel(parallel=True)
def conv_input_grad(dy, w, row_step, pos_step, col_step, dx):
    """dx[c, i + a*row_step, p + a*pos_step + b*col_step] += w[f, c, a, b] * dy[f, i, p]: the
    transposed convolution.

    dy: (F, R', L') with L' >= L - reach, zero where no output is; w: (F, C, KH, KW)
    dx: (C, R, L) padded input rows, overwritten. All contiguous.

    Gathered and register-blocked like the forward (`six_channels`): a block is
    six channels at 2 x lanes positions of one input row, summing every
    (filter, a, b) that reaches it; a task owns a run of blocks of a row. dy
    is first copied into rows with zeros before and after (`reach` each), so
    that a block whose taps straddle an edge of dy's positions (an image's or,
    when N is not a multiple of 2 x lanes, a column's) reads zeros there.
    Rows shorter than a block go position by position.
    """
    f, dy_rows, dy_length = dy.shape
    _, c, kh, kw = w.shape
    _, rows, length = dx.shape
    edge = reach(kh, kw, pos_step, col_step)
    valid = length - edge  # dy positions that can hold an output
    wc = filters_innermost(w)
    stride = edge + valid + edge + PAD
    padded = np.empty((dy_rows, f, stride), dy.dtype)  # (F, R', L') -> (R', F, edge | valid | edge + PAD)
    for task in prange(dy_rows * f):
        i, fo = task // f, task % f
        row = padded[i, fo]
        row[:edge] = 0
        for p in range(valid):  # element by element, as in conv_weight_grad
            row[edge + p] = dy[fo, i, p]
        row[edge + valid:] = 0
    dyf, dxf = padded.reshape(-1), dx.reshape(-1)
    wc2, zeros = wc.reshape(c, kh * kw * f), np.zeros(c, dx.dtype)
    shape, steps = (kh, kw, f), (row_step, pos_step, col_step)
    if length >= BLOCK_VECTORS * lanes(dx):
        per_run, runs = row_runs(rows, length, BLOCK_VECTORS, BLOCK_VECTORS * lanes(dx))
        for task in prange(rows * runs):
            input_grad_run(task, runs, per_run, dyf, wc2, zeros, shape, dy_rows, stride, edge, valid, length, steps,
                           dxf, BLOCK_VECTORS)
    elif length >= NARROW * lanes(dx):
        per_run, runs = row_runs(rows, length, NARROW, NARROW * lanes(dx))
        for task in prange(rows * runs):
            input_grad_run(task, runs, per_run, dyf, wc2, zeros, shape, dy_rows, stride, edge, valid, length, steps,
                           dxf, NARROW)
    else:
        for r in prange(rows):
            gather_row(dyf, wc, dy_rows, stride, edge, valid, r, length, row_step, pos_step, col_step, dxf)
