"""ReLU in one pass each way over flat contiguous arrays (NumPy needs two forward)."""

from .jit import kernel


@kernel()
def relu_forward(x, out, mask):
    """out = max(x, 0), mask = x > 0. NaN stays NaN, as with np.maximum, so a
    diverging run still shows a non-finite loss."""
    zero = x.dtype.type(0)
    for i in range(x.shape[0]):
        v = x[i]
        positive = v > zero
        mask[i] = positive
        out[i] = v if positive or v != v else zero


@kernel()
def relu_backward(dy, mask, dx):
    """dx = dy * mask (a multiply, not a select: NaN * 0 is NaN, as in NumPy)."""
    for i in range(dy.shape[0]):
        dx[i] = dy[i] * mask[i]
