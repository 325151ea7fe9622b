"""Numba compiles each kernel for this CPU the first time a machine runs it
(seconds each) and loads it from its on-disk cache afterwards. `announced`
says so while it happens, kernel by kernel, with the seconds each took, so a
first run is not a silent wait; `kernel_cache_stats` counts loads and compiles."""

import sys
import time
from contextlib import contextmanager

from numba.core import event


def cache_dir():
    """Where Numba keeps the compiled kernels (NUMBA_CACHE_DIR, else beside the
    kernels' sources, else a user-wide cache when that is not writable)."""
    from .kernels import conv
    cache = getattr(conv.conv_forward, "_cache", None)  # Numba's cache object (no public accessor)
    return getattr(cache, "_cache_path", None) or "Numba's cache directory"


def kernel_cache_stats():
    """Numba dispatchers' compile/cache counters: did a warm-up compile or load from disk?"""
    from . import kernels
    hits = misses = 0
    for name in kernels.__all__[1:]:  # [0] is the error class
        stats = getattr(kernels, name).kernel.stats
        hits += sum(stats.cache_hits.values())
        misses += sum(stats.cache_misses.values())
    return {"cache_hits": hits, "cache_misses": misses}


def signature(args):
    """Numba's argument types, short: (float32 3d C, int64, ...)."""
    return ", ".join(str(a).replace("array(", "").replace(")", "").replace(",", "") for a in args)


class CompileLog(event.Listener):
    """Listens to Numba's compile events: a kernel called from Python starts one,
    and the functions it calls nest theirs inside it (only the outermost is told)."""

    def __init__(self, log):
        self.log, self.depth, self.kernels, self.seconds, self._start = log, 0, 0, 0.0, 0.0

    def on_start(self, ev):
        self.depth += 1
        if self.depth > 1:
            return
        if self.kernels == 0:
            self.log(f"compiling the kernels for this CPU, once (later runs load them from {cache_dir()}):")
        self._start = time.perf_counter()

    def on_end(self, ev):
        self.depth -= 1
        if self.depth:
            return
        seconds = time.perf_counter() - self._start
        self.kernels += 1
        self.seconds += seconds
        dispatcher = ev.data["dispatcher"]
        self.log(f"  {dispatcher.py_func.__name__}({signature(ev.data['args'])})  {seconds:.1f} s")


def to_stderr(message):
    print(message, file=sys.stderr, flush=True)


@contextmanager
def announced(log=to_stderr):
    """Within: each kernel compiled is announced (the first with a heading) and
    timed; the total is told at the end. Yields the CompileLog (.kernels, .seconds)."""
    listener = CompileLog(log)
    with event.install_listener("numba:compile", listener):
        yield listener
    if listener.kernels:
        log(f"compiled {listener.kernels} kernels in {listener.seconds:.1f} s")
