"""col2im: scatter-add window gradients back onto the input image."""

from numba import prange

from .jit import kernel


@kernel(parallel=True)
def col2im(cols, stride_h, stride_w, out):
    """Sums every window's gradient into the (padded) input gradient.

    cols: (N, OH, OW, C, KH, KW) gradient of each window's pixels
    out:  (N, C, HP, WP) padded input gradient, overwritten

    Windows overlap when the stride is smaller than the kernel, so pixels get
    several contributions; each image is summed by one thread, reading its
    rows of `cols` in memory order, so there are no races and the summation
    order is fixed whatever the thread count.
    """
    n, oh, ow, c, kh, kw = cols.shape
    for img in prange(n):
        out[img] = 0
        for i in range(oh):
            for j in range(ow):
                r0, c0 = i * stride_h, j * stride_w
                for ch in range(c):
                    for a in range(kh):
                        for b in range(kw):
                            out[img, ch, r0 + a, c0 + b] += cols[img, i, j, ch, a, b]
