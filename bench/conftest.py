"""Shared set-up of the benchmark suites: environment recorded with every result."""

import time

import pytest

from fastlenet.env import environment, set_threads


@pytest.fixture(autouse=True, scope="session")
def thread_policy():
    """The library's default thread split (Numba: all cores, BLAS: 1), as the trainer uses."""
    set_threads()


def warm_up(fn):
    """Calls fn once (Numba compiles or loads its cache here) and returns the seconds it took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.fixture
def record(benchmark):
    """Stores the environment and the warm-up (compile) time with a benchmark's result."""
    def _record(first_call_s):
        benchmark.extra_info["first_call_s"] = first_call_s
        benchmark.extra_info["env"] = environment()
    return _record
