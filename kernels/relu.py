"""ReLU in one pass each way over flat contiguous arrays (NumPy needs two forward),
cut into pieces that the cores share."""

from numba import njit, prange

from .jit import kernel

PIECE = 1 << 15  # elements per task at least: below it, a thread's start costs more than it saves


@njit(inline="always")
def pieces(n):
    """How many pieces of at least PIECE elements an array of n is cut into (one at least)."""
    return max(1, n // PIECE)


@njit(inline="always")
def forward_piece(x, out, mask):
    zero = x.dtype.type(0)
    for i in range(x.shape[0]):
        v = x[i]
        positive = v > zero
        mask[i] = positive
        out[i] = v if positive or v != v else zero


@kernel(parallel=True)
def relu_forward(x, out, mask):
    """out = max(x, 0), mask = x > 0. NaN stays NaN, as with np.maximum, so a
    diverging run still shows a non-finite loss."""
    n = x.shape[0]
    if pieces(n) == 1:  # on this thread: waking the pool costs more than a small array
        forward_piece(x, out, mask)
        return
    for k in prange(pieces(n)):
        start, stop = k * n // pieces(n), (k + 1) * n // pieces(n)
        forward_piece(x[start:stop], out[start:stop], mask[start:stop])


@njit(inline="always")
def backward_piece(dy, mask, dx):
    for i in range(dy.shape[0]):
        dx[i] = dy[i] * mask[i]


@kernel(parallel=True)
def relu_backward(dy, mask, dx):
    """dx = dy * mask (a multiply, not a select: NaN * 0 is NaN, as in NumPy)."""
    n = dy.shape[0]
    if pieces(n) == 1:
        backward_piece(dy, mask, dx)
        return
    for k in prange(pieces(n)):
        start, stop = k * n // pieces(n), (k + 1) * n // pieces(n)
        backward_piece(dy[start:stop], mask[start:stop], dx[start:stop])
