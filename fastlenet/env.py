"""Thread pools and the environment a measurement or a run was made in.

Two pools share the cores: OpenBLAS (the GEMMs) and Numba (the kernels).
Both spin-wait between calls, so when both use every core each one's idle
threads steal time from the other's working ones. The kernels parallelise
better than LeNet's thin GEMMs, so Numba gets the cores and BLAS runs
single-threaded by default (the README's Threads section has the figures).

The allocator is the third setting: see hold_freed_memory.
"""

import ctypes
import os
import platform
import sys

import llvmlite
import numba
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits


def set_threads(threads=None, blas_threads=1):
    """Sizes the Numba pool (`threads`, default all cores) and the BLAS pool
    (`blas_threads`, default 1; None: the same as `threads`).
    Returns the sizes in force."""
    threads = numba.config.NUMBA_NUM_THREADS if threads is None else int(threads)
    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads must be between 1 and {numba.config.NUMBA_NUM_THREADS} "
                         f"(this machine's cores, or NUMBA_NUM_THREADS), got {threads}")
    blas_threads = threads if blas_threads is None else int(blas_threads)
    numba.set_num_threads(threads)
    threadpool_limits(limits=blas_threads, user_api="blas")
    return {"numba": threads, "blas": blas_threads}


# glibc's mallopt parameters and the values hold_freed_memory sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 64 << 20  # bytes: blocks below it come from the heap (batch 1000's largest array is 19 MB)
TRIM_THRESHOLD = 256 << 20  # bytes: free heap kept for the next step before any goes back to the system
_heap_held = False


def hold_freed_memory():
    """Keeps the large arrays a step frees in glibc's heap for the next step.
    By default glibc maps large blocks (from 128 kB; the bar moves with what was
    freed) and unmaps them on free, and trims the heap's free top, so steps keep
    faulting in and zeroing fresh pages, and each unmap interrupts the other
    core to flush its TLB (the README's Memory paragraph has the figures).
    The working set stays mapped between steps rather than growing past it. Process-wide, so the entry points (train, bench, profile) call it,
    not the library on import. Returns whether it took effect (glibc only)."""
    global _heap_held
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    _heap_held = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _heap_held


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment():
    """Versions, thread pools and CPU: what a number measured here depends on."""
    blas = [{"library": p.get("internal_api"), "version": p.get("version"), "threads": p.get("num_threads"),
             "architecture": p.get("architecture")}
            for p in threadpool_info() if p.get("user_api") == "blas"]
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = None
    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "numba": numba.__version__,
        "llvmlite": llvmlite.__version__,
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": layer,
        "freed_memory_held": _heap_held,
        "blas": blas,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
    }
