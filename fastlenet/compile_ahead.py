"""A machine's first run compiles its kernels one after another, on one core,
as the workload first calls each. `compile_ahead` puts every core on it: a dry
run of the workload finds the kernels and argument types it will call (no
kernel runs), and those not in Numba's on-disk cache are compiled, the
longest first, by this process and helper processes taking the next one from
one list. The workload then loads them all from the cache. Only a process that
has run no kernel yet can take the dry run (see `dry_run`); elsewhere, and
when everything is cached, this does nothing.
"""

import multiprocessing
import queue
import time
from contextlib import contextmanager

import numba
import numpy as np
from numba import njit

from .compiling import CompileLog, signature


def dispatchers():
    """The Numba dispatchers of the kernels the layers call (fastlenet.kernels' entry points)."""
    from . import kernels
    return [getattr(kernels, name).kernel for name in kernels.__all__[1:]]  # [0] is the error class


@contextmanager
def dry_run(kernels):
    """Within: a call of a kernel that has no compiled version in this process records
    (kernel, argument types) and returns NaN without running. Safe only when no kernel has
    one: a kernel that ran would read the garbage of the skipped ones before it."""
    calls = {}

    def recorder(kernel):
        def record(*args):
            calls.setdefault((kernel, tuple(kernel.typeof_pyval(a) for a in args)), None)
            return lambda *args: float("nan")  # Numba calls what this returns; the one kernel that returns, a float
        return record

    for kernel in kernels:
        kernel._compile_for_args = recorder(kernel)  # Numba's dispatcher calls it when nothing compiled fits
    try:
        yield calls
    finally:
        for kernel in kernels:
            del kernel._compile_for_args


def dry_runs():
    """Whether this Numba's dispatchers skip a call as `dry_run` asks (the hook is not a
    public API): a function of no consequence is tried. Without it a dry run would run
    kernels on the garbage of others, so none is taken."""
    @njit
    def probe(a):
        a[0] = 1

    a = np.zeros(1)
    with dry_run([probe]) as calls:
        probe(a)
    return a[0] == 0 and len(calls) == 1 and not probe.overloads


def uncached(kernel, types):
    """Whether Numba's on-disk cache lacks this kernel for these argument types (on this CPU).
    Where the cache cannot be asked (a private API), it is compiled: `compile` loads what is cached."""
    cache = getattr(kernel, "_cache", None)
    return cache is None or cache.load_overload(types, kernel.targetctx) is None


def compile_ahead(workload, processes):
    """Runs `workload` dry, then compiles what it calls and the cache lacks on `processes`
    processes (this one and helpers). Returns how many kernels were compiled."""
    if processes < 2 or numba.config.DISABLE_JIT:
        return 0
    kernels = dispatchers()
    if any(kernel.overloads for kernel in kernels) or not dry_runs():
        return 0
    with dry_run(kernels) as calls, np.errstate(all="ignore"):  # the skipped kernels leave garbage behind
        workload()
    jobs = [(kernel, types) for kernel, types in calls if uncached(kernel, types)]
    if not jobs:
        return 0
    # longest first: a parallel kernel's loop body is compiled twice (itself and as Numba's gufunc)
    jobs.sort(key=lambda job: (bool(job[0].targetoptions.get("parallel")), len(job[0].py_func.__code__.co_code)),
              reverse=True)
    context = multiprocessing.get_context("spawn")  # a fork would copy Numba's threads and locks mid-state
    work = [(kernel.py_func.__module__, kernel.py_func.__name__, types) for kernel, types in jobs]
    taken, told = context.Value("i", 0), context.Queue()
    with CompileLog.sharing(processes):
        helpers = start_helpers(context, processes - 1, (work, taken, told))
        mine = compile_share(work, taken)
        heard = collect(told, len(work) - mine, helpers)
        for process in helpers:
            process.join()
    return mine + heard


def start_helpers(context, count, args):
    """The helper processes, as many as could be started (none where this system refuses)."""
    helpers = []
    for _ in range(count):
        process = context.Process(target=compile_share, args=args, daemon=True)
        try:
            process.start()
        except OSError:
            break
        helpers.append(process)
    return helpers


def collect(told, expected, helpers):
    """Tells the listener of the helpers' compiles as they report them (this process's
    listener cannot hear them); stops early if every helper has gone. Returns the count."""
    heard = 0
    while heard < expected:
        try:
            CompileLog.tell(*told.get(timeout=0.5))
        except queue.Empty:
            if not any(process.is_alive() for process in helpers):
                return heard
            continue
        heard += 1
    return heard


def compile_share(work, taken, told=None):
    """Compiles kernels of `work` (module, name, argument types), taking the next one
    not yet taken until none is left, and saves each in the on-disk cache; tells each
    on `told` as (name, types, seconds) when given. Returns how many it compiled."""
    import importlib
    count = 0
    while True:
        with taken.get_lock():
            index = taken.value
            taken.value += 1
        if index >= len(work):
            return count
        module, name, types = work[index]
        start = time.perf_counter()
        getattr(importlib.import_module(module), name).compile(types)
        count += 1
        if told is not None:
            told.put((name, signature(types), time.perf_counter() - start))
