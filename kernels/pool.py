"""Max-pooling forward (value and argmax) and backward (scatter to the argmax)."""

from numba import njit, prange


@njit(parallel=True, cache=True)
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


@njit(parallel=True, cache=True)
def maxpool_backward(dy, argmax, out):
    """Routes each window's gradient to its argmax; out (N, C, H, W) is overwritten.

    Overlapping windows (stride < kernel) may share an argmax, hence +=; one
    thread per (image, channel) plane keeps that race-free.
    """
    n, c, oh, ow = dy.shape
    width = out.shape[3]
    for plane in prange(n * c):
        img, ch = plane // c, plane % c
        out[img, ch] = 0
        for i in range(oh):
            for j in range(ow):
                k = argmax[img, ch, i, j]
                out[img, ch, k // width, k % width] += dy[img, ch, i, j]
