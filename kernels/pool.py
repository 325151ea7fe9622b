"""Max-pooling forward (value and argmax) and backward (scatter to the argmax)."""

import numpy as np
from numba import prange

from .jit import kernel


@kernel(parallel=True)
def maxpool_forward(x, kh, kw, sh, sw, out, argmax):
    """out[n, c, i, j] = max of window (i, j); argmax holds its flat index in the plane.

    x: (N, C, H, W); out, argmax: (N, C, OH, OW), argmax int32.
    The first maximum wins a tie (strict >), as in PyTorch.
    """
    n, c, oh, ow = out.shape
    width = x.shape[3]
    for plane in prange(n * c):
        img, ch = plane // c, plane % c
        for i in range(oh):
            for j in range(ow):
                r0, c0 = i * sh, j * sw
                best = x[img, ch, r0, c0]
                where = r0 * width + c0
                for a in range(kh):
                    for b in range(kw):
                        v = x[img, ch, r0 + a, c0 + b]
                        if v > best:
                            best = v
                            where = (r0 + a) * width + c0 + b
                out[img, ch, i, j] = best
                argmax[img, ch, i, j] = where


@kernel(parallel=True)
def maxpool_backward(dy, argmax, out):
    """Routes each window's gradient to its argmax; out (N, C, H, W), C-contiguous,
    is overwritten. Each plane is addressed flat, as the argmax is: no division.

    Overlapping windows (stride < kernel) may share an argmax, hence +=; one
    thread per (image, channel) plane keeps that race-free.
    """
    n, c, oh, ow = dy.shape
    planes = out.reshape(n, c, out.shape[2] * out.shape[3])
    for plane in prange(n * c):
        img, ch = plane // c, plane % c
        target = planes[img, ch]
        target[:] = 0
        for i in range(oh):
            for j in range(ow):
                target[argmax[img, ch, i, j]] += dy[img, ch, i, j]


@kernel(parallel=True)
def maxpool2x2_forward(x, out, argmax):
    """maxpool_forward for LeNet's 2x2 windows at stride 2, specialised: constant
    offsets let LLVM vectorise the row loop.
    Same outputs, argmax included, so maxpool_backward serves both."""
    n, c, oh, ow = out.shape
    width = x.shape[3]
    for plane in prange(n * c):
        img, ch = plane // c, plane % c
        for i in range(oh):
            top, bottom = x[img, ch, 2 * i], x[img, ch, 2 * i + 1]
            best_row, where_row = out[img, ch, i], argmax[img, ch, i]
            for j in range(ow):
                best, where = top[2 * j], 0
                if top[2 * j + 1] > best:
                    best, where = top[2 * j + 1], 1
                if bottom[2 * j] > best:
                    best, where = bottom[2 * j], width
                if bottom[2 * j + 1] > best:
                    best, where = bottom[2 * j + 1], width + 1
                best_row[j] = best
                where_row[j] = 2 * i * width + 2 * j + where


@kernel(parallel=True)
def maxpool2x2_forward_interleaved(x, out, argmax):
    """maxpool2x2_forward with the batch innermost, as the interleaved convolution
    layout leaves a large batch: the loop over images is unit-stride and
    vectorises. x: (C, H, W, N); out, argmax: (C, OH, OW, N), argmax int8, the
    maximum's place in its window (2 * row + column, as window_max), the first
    maximum winning a tie: a quarter of an int32 flat index's memory, which the
    forward writes and the backward reads once each."""
    c, oh, ow, n = out.shape
    for task in prange(c * oh):
        ch, i = task // oh, task % oh
        top, bottom = x[ch, 2 * i], x[ch, 2 * i + 1]
        for j in range(ow):
            p00, p01, p10, p11 = top[2 * j], top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1]
            best_row, where_row = out[ch, i, j], argmax[ch, i, j]
            for img in range(n):
                best, where = p00[img], np.int8(0)
                if p01[img] > best:
                    best, where = p01[img], np.int8(1)
                if p10[img] > best:
                    best, where = p10[img], np.int8(2)
                if p11[img] > best:
                    best, where = p11[img], np.int8(3)
                best_row[img] = best
                where_row[img] = where


@kernel(parallel=True)
def maxpool2x2_backward_interleaved(dy, argmax, out):
    """maxpool_backward for 2x2 windows at stride 2 with the batch innermost. The
    windows do not overlap, so each input pixel gathers from its one window
    (a select per image, which vectorises, instead of a scatter).
    dy, argmax: (C, OH, OW, N), argmax as maxpool2x2_forward_interleaved's;
    out: (C, H, W, N), overwritten."""
    c, h, w, n = out.shape
    oh, ow = dy.shape[1], dy.shape[2]
    zero = out.dtype.type(0)
    for task in prange(c * h):
        ch, r = task // h, task % h
        for col in range(w):
            target = out[ch, r, col]
            if r >= 2 * oh or col >= 2 * ow:  # the ragged edge no window covers
                target[:] = 0
                continue
            g, where = dy[ch, r // 2, col // 2], argmax[ch, r // 2, col // 2]
            place = np.int8(2 * (r % 2) + col % 2)
            for img in range(n):
                target[img] = g[img] if where[img] == place else zero


@kernel(parallel=True)
def window_max(windows, out, argmax):
    """The im2col rung's pool: the max of every window of a strided view.

    windows: (N, C, OH, OW, KH, KW) as_strided view of the input (no copy)
    out, argmax: (N, C, OH, OW), any strides; argmax int32, the maximum's place
    in its window (a * KW + b), the first maximum winning a tie, as in maxpool_forward.
    One task per image, channels innermost: the order the im2col rung lays them in.
    """
    n, c, oh, ow, kh, kw = windows.shape
    for img in prange(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    best, where = windows[img, ch, i, j, 0, 0], 0
                    for a in range(kh):
                        for b in range(kw):
                            v = windows[img, ch, i, j, a, b]
                            if v > best:
                                best, where = v, a * kw + b
                    out[img, ch, i, j] = best
                    argmax[img, ch, i, j] = where


@kernel(parallel=True)
def window_scatter(dy, argmax, kh, kw, stride_h, stride_w, out):
    """window_max's backward: each window's gradient added at its maximum.

    dy, argmax: (N, C, OH, OW); out: (N, C, H, W), any strides, overwritten.
    One task per image: overlapping windows sharing a maximum add in a fixed
    order, without races. A place in the window becomes a row and column offset
    through two small tables (an integer division per element cost more than the scatter).
    """
    n, c, oh, ow = dy.shape
    h, w = out.shape[2], out.shape[3]
    zero = out.dtype.type(0)
    row_of, col_of = np.empty(kh * kw, np.int64), np.empty(kh * kw, np.int64)
    for where in range(kh * kw):
        row_of[where], col_of[where] = where // kw, where % kw
    for img in prange(n):
        target = out[img]
        for r in range(h):
            for col in range(w):
                for ch in range(c):
                    target[ch, r, col] = zero
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    where = argmax[img, ch, i, j]
                    target[ch, i * stride_h + row_of[where], j * stride_w + col_of[where]] += dy[img, ch, i, j]
