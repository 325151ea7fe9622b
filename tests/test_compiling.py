"""The first run's compilations are announced, kernel by kernel, and timed; a cold
cache compiles on every core (compile_ahead)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from numba import njit

from fastlenet.compile_ahead import compile_ahead, dry_run, dry_runs
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


def test_a_dry_run_records_each_call_and_runs_nothing():
    @njit
    def fill(a, value):
        a[:] = value

    a = np.zeros(3)
    with dry_run([fill]) as calls:
        fill(a, 1.0)
        fill(a, 2.0)  # the same types: one entry
        fill(a.astype(np.float32), 3)
    assert np.all(a == 0) and not fill.overloads  # nothing ran, nothing compiled
    assert [str(types) for _, types in calls] == ["(Array(float64, 1, 'C', False, aligned=True), float64)",
                                                  "(Array(float32, 1, 'C', False, aligned=True), int64)"]
    fill(a, 4.0)  # and afterwards the function is itself again
    assert np.all(a == 4) and dry_runs()


def test_compile_ahead_leaves_a_process_that_ran_kernels_alone():
    from fastlenet import kernels
    x = np.ones(4, np.float32)
    kernels.relu_forward(x, np.empty_like(x), np.empty(4, np.bool_))  # this process has run a kernel
    ran = []
    assert compile_ahead(lambda: ran.append(1), processes=2) == 0 and ran == []  # no dry run: kernels would run
    assert compile_ahead(lambda: ran.append(1), processes=1) == 0 and ran == []


COLD_CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
from conftest import synthetic_mnist
from fastlenet import kernels
from fastlenet.compiling import announced
from fastlenet.train import TrainConfig, train
lines = []
with announced(lines.append):
    train(TrainConfig(epochs=1, batch_size=64, val_size=50, out={out!r}, quiet=True, threads=2), data=synthetic_mnist())
print(json.dumps(lines))
"""


@pytest.mark.slow
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="compiling on two processes needs two cores")
def test_a_cold_cache_compiles_on_two_processes_then_loads(tmp_path):
    """A fresh process with an empty Numba cache: the warm-up's kernels compile on two
    processes at once, each told; a second run loads them all and compiles nothing."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    told = []
    for run in ("cold", "warm"):
        child = COLD_CHILD.format(tests=str(Path(__file__).parent), out=str(tmp_path / run))
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=900, env=env)
        assert out.returncode == 0, out.stderr
        told.append(json.loads(out.stdout.strip().splitlines()[-1]))
    cold, warm = told
    assert cold[0].startswith("compiling the kernels for this CPU on 2 processes, once (later runs load them from ")
    total = re.fullmatch(r"compiled (\d+) kernels in ([\d.]+) s \(([\d.]+) s of compiling, on 2 processes at once\)",
                         cold[-1])
    assert total and int(total[1]) == len(cold) - 2 >= 8  # every kernel told once, the helper's too
    assert any(line.startswith("  conv_weight_grad(float32 3d C") for line in cold)
    assert float(total[2]) < float(total[3])  # the processes overlapped
    assert warm == []
