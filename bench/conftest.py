"""Shared set-up of the benchmark suites: thread policy, the parameter matrix,
and the environment and compile time recorded with every result."""

import time

import numpy as np
import pytest

from fastlenet.env import environment, hold_freed_memory, set_threads
from fastlenet.workloads import LADDER

# impl: the ladder's rungs (reference -> im2col -> direct), so each group's table reads as the ladder
MATRIX = pytest.mark.parametrize("impl, dtype, batch", [
    pytest.param(impl, dtype, batch, id=f"{impl}-{np.dtype(dtype).name}-{batch}")
    for impl in LADDER for dtype in (np.float32, np.float64) for batch in (1, 32, 256)])


@pytest.fixture(autouse=True, scope="session")
def thread_policy():
    """The library's default thread split (Numba: all cores, BLAS: 1) and heap, as the trainer uses."""
    set_threads()
    hold_freed_memory()


@pytest.fixture(scope="session")
def env():
    return environment()


@pytest.fixture
def measure(benchmark, env):
    """measure(impl, fn): one untimed call (Numba compiles or loads its cache there; its
    seconds go to extra_info), then the benchmark. The loops get few rounds (pedantic):
    seconds per call, and the suite must stay short."""
    def _measure(impl, fn):
        start = time.perf_counter()
        fn()
        benchmark.extra_info["first_call_s"] = time.perf_counter() - start
        benchmark.extra_info["env"] = env
        if impl == "reference":
            return benchmark.pedantic(fn, rounds=3, iterations=1)
        return benchmark(fn)
    return _measure
