"""Affine resampling of a batch of images: the augmentation behind --rotate and --scale."""

import numpy as np
from numba import prange

from .jit import kernel


@kernel()
def pixel(x, k, c, r, col, fill):
    """x[k, c, r, col], or `fill` outside the image."""
    if 0 <= r < x.shape[2] and 0 <= col < x.shape[3]:
        return x[k, c, r, col]
    return fill


@kernel(parallel=True)
def affine_warp(x, inverse, fill, out):
    """out[k, c, i, j] = x[k, c] read bilinearly at (row, col) = inverse[k] @ (i, j, 1),
    `fill` where that falls outside x. inverse (N, 2, 3) maps output pixels to input
    coordinates. Sums are in float64; an integer translation (zero fractions) moves
    pixels exactly. Points whose four neighbours are all inside (most) skip the
    bounds checks."""
    t = out.dtype.type
    h, w = x.shape[2], x.shape[3]
    for k in prange(x.shape[0]):
        a00, a01, a02 = inverse[k, 0, 0], inverse[k, 0, 1], inverse[k, 0, 2]
        a10, a11, a12 = inverse[k, 1, 0], inverse[k, 1, 1], inverse[k, 1, 2]
        for i in range(out.shape[2]):
            for j in range(out.shape[3]):
                r, col = a00 * i + a01 * j + a02, a10 * i + a11 * j + a12
                r0, c0 = int(np.floor(r)), int(np.floor(col))
                fr, fc = r - r0, col - c0
                inside = 0 <= r0 and r0 + 1 < h and 0 <= c0 and c0 + 1 < w
                for c in range(x.shape[1]):
                    if inside:
                        v00, v01 = x[k, c, r0, c0], x[k, c, r0, c0 + 1]
                        v10, v11 = x[k, c, r0 + 1, c0], x[k, c, r0 + 1, c0 + 1]
                    else:
                        v00, v01 = pixel(x, k, c, r0, c0, fill), pixel(x, k, c, r0, c0 + 1, fill)
                        v10, v11 = pixel(x, k, c, r0 + 1, c0, fill), pixel(x, k, c, r0 + 1, c0 + 1, fill)
                    top = (1 - fc) * v00 + fc * v01
                    bottom = (1 - fc) * v10 + fc * v11
                    out[k, c, i, j] = t((1 - fr) * top + fr * bottom)
