"""What the library does to the process on its own, without a set-up call:
its fast passes run BLAS at the library's thread count, and the first one keeps
freed memory in the heap. No Numba here, so the reference layers stay light.

Two pools share the cores: OpenBLAS (the GEMMs) and Numba (the kernels). Both
spin-wait between calls, so when both use every core each one's idle threads
steal time from the other's working ones; the library's GEMMs therefore run on
one BLAS thread (fastlenet.env.set_threads chooses otherwise). The passes that
call BLAS (`engine_pass`) lower the BLAS pool for their duration and give it
back as they found it, so a user's other NumPy code keeps its BLAS threads.
"""

import ctypes
import functools
import os
import platform
import threading

from threadpoolctl import ThreadpoolController

_gemm_threads = 1  # BLAS threads for the library's own GEMMs (set_gemm_threads changes it)
_blas = None  # threadpoolctl's controllers of the loaded BLAS libraries, found at the first pass
_in_pass = threading.local()  # set while a pass runs, so that nested passes limit BLAS once


def set_gemm_threads(threads):
    global _gemm_threads
    _gemm_threads = int(threads)


def engine_pass(method):
    """Decorates a forward or backward that calls BLAS (a fast Conv2D's or
    Linear's, a model's): it runs with the BLAS pool at the library's count and
    the pool is given back as it was when it returns. A pass inside another
    (a layer's inside a model's) finds the pool set and costs nothing more."""
    @functools.wraps(method)
    def limited(*args, **kwargs):
        if getattr(_in_pass, "active", False):
            return method(*args, **kwargs)
        _in_pass.active = True
        changed = [(pool, threads) for pool in _blas_pools()
                   if (threads := pool.get_num_threads()) not in (None, _gemm_threads)]
        try:
            for pool, _ in changed:
                pool.set_num_threads(_gemm_threads)
            return method(*args, **kwargs)
        finally:
            for pool, threads in changed:
                pool.set_num_threads(threads)
            _in_pass.active = False
    return limited


def _blas_pools():
    """The loaded BLAS libraries' controllers, found once: the search walks every
    loaded library, and threadpoolctl's `limit` re-reads them all (~10 us a call,
    against ~1-3 us for these two calls per library). The first call also holds
    freed memory (hold_freed_memory), unless FASTLENET_HOLD_MEMORY=0."""
    global _blas
    if _blas is None:
        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
        if os.environ.get("FASTLENET_HOLD_MEMORY", "1") != "0":
            hold_freed_memory()
    return _blas


# glibc's mallopt parameters, the values hold_freed_memory sets and glibc's own starting values
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 64 << 20  # bytes: blocks below it come from the heap (batch 1000's largest array is 19 MB)
TRIM_THRESHOLD = 256 << 20  # bytes: free heap kept for the next step before any goes back to the system
GLIBC_THRESHOLD = 128 << 10  # bytes: glibc's initial mmap and trim thresholds
_heap_held = False


def hold_freed_memory():
    """Keeps the large arrays a step frees in glibc's heap for the next step.
    By default glibc maps large blocks (from 128 kB; the bar moves with what was
    freed) and unmaps them on free, and trims the heap's free top, so steps keep
    faulting in and zeroing fresh pages, and each unmap interrupts the other
    core to flush its TLB (the README's Memory paragraph has the figures).
    The working set stays mapped between steps rather than growing past it.
    Process-wide: the first fast pass takes it (see _blas_pools), and
    release_freed_memory undoes it. Returns whether it took effect (glibc only)."""
    return _set_heap_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD)


def release_freed_memory():
    """Gives glibc back its starting thresholds (128 kB each, fixed: glibc's own
    moving bar does not come back once set). Returns whether it took effect."""
    return _set_heap_thresholds(GLIBC_THRESHOLD, GLIBC_THRESHOLD)


def _set_heap_thresholds(mmap_bytes, trim_bytes):
    global _heap_held
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    took = bool(mallopt(M_MMAP_THRESHOLD, mmap_bytes) and mallopt(M_TRIM_THRESHOLD, trim_bytes))
    _heap_held = took and mmap_bytes == MMAP_THRESHOLD
    return took


def heap_held():
    """Whether hold_freed_memory is in force."""
    return _heap_held
