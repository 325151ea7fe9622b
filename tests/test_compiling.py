"""The first run's compilations are announced, kernel by kernel, and timed."""

import numpy as np
from numba import njit

from fastlenet.compiling import announced, kernel_cache_stats


def test_each_compiled_kernel_is_told_once_with_a_heading_and_a_total():
    @njit
    def inner(a):
        return a.sum()

    @njit
    def outer(a):
        return inner(a) * 2

    lines = []
    with announced(lines.append) as compiles:
        outer(np.ones(3, np.float32))
        outer(np.ones(3, np.float32))  # compiled already: nothing more
        inner(np.ones(2))  # float64: a new signature
    assert lines[0].startswith("compiling the kernels for this CPU, once (later runs load them from ")
    assert lines[1].startswith("  outer(float32 1d C)  ") and lines[1].endswith(" s")
    assert lines[2].startswith("  inner(float64 1d C)  ")
    assert lines[3] == f"compiled 2 kernels in {compiles.seconds:.1f} s" and len(lines) == 4
    assert compiles.kernels == 2 and compiles.seconds > 0


def test_nothing_is_said_when_nothing_compiles():
    @njit
    def twice(a):
        return 2 * a

    twice(1)
    lines = []
    with announced(lines.append) as compiles:
        twice(2)
    assert lines == [] and compiles.kernels == 0


def test_cache_stats_count_each_kernel_signature_loaded_or_compiled():
    from fastlenet import kernels
    x = np.ones(5, np.float32)
    kernels.relu_forward(x, np.empty_like(x), np.empty(5, np.bool_))  # loaded from the cache or compiled, once
    stats = kernels.relu_forward.kernel.stats
    mine = sum(stats.cache_hits.values()) + sum(stats.cache_misses.values())
    assert mine >= 1 and sum(kernel_cache_stats().values()) >= mine
