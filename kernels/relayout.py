"""Layout copies the convolution's rows need (see fastlenet.layout): a batch into
the interleaved layout, and a gradient into the planes layout."""

from numba import prange

from .jit import kernel


@kernel(parallel=True)
def interleave(x, out):
    """out[c, h, w, n] = x[n, c, h, w]: a batch (N, C, H, W) in the interleaved
    layout. One (channel, row) per task, whose (W, N) block of out stays in
    cache while image after image fills a column of it: reads run along x's
    rows, where NumPy's own transposing copy strides across them."""
    n, c, h, w = x.shape
    for task in prange(c * h):
        ch, r = task // h, task % h
        block = out[ch, r]
        for img in range(n):
            row = x[img, ch, r]
            for j in range(w):
                block[j, img] = row[j]


@kernel(parallel=True)
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
