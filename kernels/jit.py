"""The Numba options the kernels share, set in one place."""

from numba import njit


def kernel(parallel=False, fastmath=False):
    """Decorator for a kernel called from the layers: compiled on first call and cached
    on disk (so later processes load it), with prange loops run on Numba's pool when
    `parallel`. `fastmath` takes LLVM's flags (a set, e.g. {"reassoc"}) for the few
    reductions that may be reordered."""
    return njit(parallel=parallel, cache=True, fastmath=fastmath)
