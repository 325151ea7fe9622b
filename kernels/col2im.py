"""col2im: scatter-add window gradients back onto the input image."""

from numba import prange

from .jit import kernel


@kernel(parallel=True)
def col2im(cols, stride_h, stride_w, pad_h, pad_w, out):
    """Sums every window's gradient into the channels-innermost input gradient.

    cols: (N, OH, OW, KH, KW*C) gradient of each window's pixels (the GEMM's
          (N*OH*OW, KH*KW*C) columns): a window's row of KW pixels is one run
    out:  (N, H, W, C) C-contiguous, overwritten; what falls in the padding
          is dropped

    Windows overlap when the stride is smaller than the kernel, so pixels get
    several contributions. Each image has one task and no window reaches into
    another image: no races, and every pixel sums its contributions in one
    order, whatever the thread count.
    """
    n, oh, ow, kh, run = cols.shape
    h, w, c = out.shape[1], out.shape[2], out.shape[3]
    zero = out.dtype.type(0)
    for img in prange(n):
        image = out[img].reshape(h, w * c)
        for r in range(h):
            for k in range(w * c):
                image[r, k] = zero
        for i in range(oh):
            for j in range(ow):
                start = (j * stride_w - pad_w) * c  # the runs' first item in a row; may lie in the padding
                first, stop = max(0, -start), min(run, w * c - start)
                # the window's rows in turn: no add half-overlaps the one just before it
                # (a vector load across a store still in flight stalls; j innermost did)
                for a in range(kh):
                    r = i * stride_h + a - pad_h
                    if 0 <= r < h:
                        target, src = image[r], cols[img, i, j, a]
                        for k in range(first, stop):
                            target[start + k] += src[k]
