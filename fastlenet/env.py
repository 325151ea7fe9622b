"""Thread pools and the environment a measurement or a run was made in.

Two pools share the cores: OpenBLAS (the GEMMs) and Numba (the kernels).
Both spin-wait between calls, so when both use every core each one's idle
threads steal time from the other's working ones. On the 2-core machine a
LeNet-5 training step (batch 256) took 59 ms with both pools at 2 threads,
37 ms with BLAS 2 / Numba 1 and 22 ms with Numba 2 / BLAS 1: the kernels
parallelise better than LeNet's thin GEMMs, so Numba gets the cores and
BLAS runs single-threaded by default.
"""

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
        "blas": blas,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
    }
