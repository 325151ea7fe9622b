"""Thread pools and the environment a measurement or a run was made in.

Numba's pool and BLAS's share the cores: the kernels parallelise better than
LeNet's thin GEMMs, so Numba gets the cores and the library's GEMMs run on one
BLAS thread (the README's Threads section has the figures). That holds without
any set-up call (fastlenet.policy); set_threads chooses otherwise, process-wide.
"""

import os
import platform
import sys

import llvmlite
import numba
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from . import policy
from .kernels import simd
from .policy import hold_freed_memory, release_freed_memory  # noqa: F401 (their import path before policy.py)


def set_threads(threads=None, blas_threads=1):
    """Sizes the Numba pool (`threads`, default all cores) and the BLAS pool
    (`blas_threads`, default 1; None: the same as `threads`), the one the
    library's GEMMs run on too. Process-wide, unlike the default policy, which
    changes BLAS only for the duration of the library's own passes.
    Returns the sizes in force."""
    threads = numba.config.NUMBA_NUM_THREADS if threads is None else int(threads)
    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads must be between 1 and {numba.config.NUMBA_NUM_THREADS} "
                         f"(this machine's cores, or NUMBA_NUM_THREADS), got {threads}")
    blas_threads = threads if blas_threads is None else int(blas_threads)
    numba.set_num_threads(threads)
    threadpool_limits(limits=blas_threads, user_api="blas")
    policy.set_gemm_threads(blas_threads)
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
        "openmp_settings": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
                            if k in os.environ},
        "freed_memory_held": policy.heap_held(),
        "blas": blas,
        "cpu": cpu_model(),
        "llvm_cpu": simd.llvm_target()[0],
        "vector_bytes": simd.BYTES,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
    }
