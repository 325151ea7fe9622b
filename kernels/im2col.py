"""im2col's one deliberate copy: strided window view -> contiguous columns."""

from numba import prange

from .jit import kernel


@kernel(parallel=True)
def gather_windows(windows, cols):
    """Every window as a row of `cols`, with a 1 after it.

    windows: (N, OH, OW, KH, KW*C) strided view of a channels-innermost padded
             input (no copy): a window's row of KW pixels is one run
    cols:    (N*OH*OW, KH*KW*C + 1) C-contiguous, overwritten; row (n, i, j) is
             window (i, j) of image n, flattened, then 1

    The column of ones carries the bias through the GEMM (the weight matrix's
    last row is the bias), and the weight gradient's GEMM sums the bias
    gradient into the same column: no pass over the output for either. One
    task per row of output pixels, so a batch of one still fills every core.
    """
    n, oh, ow, kh, run = windows.shape
    one = cols.dtype.type(1)
    for task in prange(n * oh):
        img, i = task // oh, task % oh
        for j in range(ow):
            row = cols[task * ow + j]
            for a in range(kh):
                src = windows[img, i, j, a]
                for k in range(run):
                    row[a * run + k] = src[k]
            row[kh * run] = one
