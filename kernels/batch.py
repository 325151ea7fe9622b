"""The trainer's batch in one pass: images picked, scaled, padded and shifted."""

import numpy as np
from numba import prange

from .jit import kernel


@kernel(parallel=True)
def gather_batch(images, idx, shifts, mean, std, out):
    """out[k, 0] = images[idx[k]] scaled to [0, 1], centred in out's larger frame
    and moved by shifts[k] = (down, right) pixels, blank elsewhere (what moves
    past the frame is lost), then standardised as (v - mean) / std (mean 0 and
    std 1 leave it as it is).

    images: (M, H, W) uint8; idx: (N,) indices into images; shifts: (N, 2) ints
    out:    (N, 1, H + 2P, W + 2P) float, overwritten

    The arithmetic of fastlenet.data.preprocess, then data.shift_images (its
    oracle), in the same order and dtype, so the bits are the same; in place of
    a fancy-index copy, a float array, a division, a padded assignment and, for
    --shift, a padded copy and a gather, each a pass of its own.
    """
    n, h, w = idx.shape[0], images.shape[1], images.shape[2]
    height, width = out.shape[2], out.shape[3]
    one = out.dtype.type
    scale, m, s = one(255), one(mean), one(std)
    value = np.empty(256, out.dtype)  # a pixel's value by its byte: one lookup instead of two divisions
    for v in range(256):
        value[v] = (one(v) / scale - m) / s
    blank = value[0]
    for k in prange(n):
        image, target = images[idx[k]], out[k, 0]
        top, left = (height - h) // 2 + shifts[k, 0], (width - w) // 2 + shifts[k, 1]
        for r in range(height):
            for c in range(width):
                target[r, c] = blank
        for r in range(max(0, -top), min(h, height - top)):
            for c in range(max(0, -left), min(w, width - left)):
                target[top + r, left + c] = value[image[r, c]]
