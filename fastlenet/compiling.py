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
    and the functions it calls nest theirs inside it (only the outermost is told).
    Compiles in helper processes (fastlenet.compile_ahead) are told through `tell`."""

    active = None  # the listener of the `announced` block under way

    def __init__(self, log):
        self.log, self.depth, self.kernels, self.seconds, self._start = log, 0, 0, 0.0, 0.0
        self.processes, self.saved = 1, 0.0  # compile_ahead's processes, and the seconds they saved

    def heading(self, processes=1):
        if self.kernels == 0 and self.processes == 1:
            on = f" on {processes} processes" if processes > 1 else ""
            self.log(f"compiling the kernels for this CPU{on}, once (later runs load them from {cache_dir()}):")
        self.processes = max(self.processes, processes)

    def on_start(self, ev):
        self.depth += 1
        if self.depth > 1:
            return
        self.heading()
        self._start = time.perf_counter()

    def on_end(self, ev):
        self.depth -= 1
        if not self.depth:
            self.record(ev.data["dispatcher"].py_func.__name__, signature(ev.data["args"]),
                        time.perf_counter() - self._start)

    def record(self, name, args, seconds):
        self.kernels += 1
        self.seconds += seconds
        self.log(f"  {name}({args})  {seconds:.1f} s")

    @classmethod
    def tell(cls, name, args, seconds):
        """A kernel compiled in another process for this one."""
        if cls.active:
            cls.active.record(name, args, seconds)

    @classmethod
    @contextmanager
    def sharing(cls, processes):
        """Within: kernels compile on `processes` processes at once; the total then
        gives the wall time as well as the compiling time."""
        listener = cls.active
        if listener is None:
            yield
            return
        listener.heading(processes)
        before, start = listener.seconds, time.perf_counter()
        try:
            yield
        finally:
            listener.saved += (listener.seconds - before) - (time.perf_counter() - start)

    def total(self):
        if self.processes == 1:
            return f"compiled {self.kernels} kernels in {self.seconds:.1f} s"
        return (f"compiled {self.kernels} kernels in {self.seconds - self.saved:.1f} s ({self.seconds:.1f} s of "
                f"compiling, on {self.processes} processes at once)")


def to_stderr(message):
    print(message, file=sys.stderr, flush=True)


@contextmanager
def announced(log=to_stderr):
    """Within: each kernel compiled is announced (the first with a heading) and
    timed; the total is told at the end. Yields the CompileLog (.kernels, .seconds)."""
    listener = CompileLog(log)
    CompileLog.active, outer = listener, CompileLog.active
    try:
        with event.install_listener("numba:compile", listener):
            yield listener
    finally:
        CompileLog.active = outer
    if listener.kernels:
        log(listener.total())
