"""im2col's one deliberate copy: strided window view -> contiguous columns."""

from numba import prange

from .jit import kernel


@kernel(parallel=True)
def gather_windows(windows, out):
    """out[...] = windows, one image per task.

    windows: (N, OH, OW, C, KH, KW) strided view of the padded input
    out:     (N, OH, OW, C, KH, KW) C-contiguous, i.e. (N*OH*OW, C*KH*KW) columns

    NumPy's own copy of such a view walks it one 5-element run at a time and
    is several times slower on LeNet's shapes.
    """
    n, oh, ow, c, kh, kw = windows.shape
    for img in prange(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    for a in range(kh):
                        for b in range(kw):
                            out[img, i, j, ch, a, b] = windows[img, i, j, ch, a, b]
