"""The fast path without set-up calls: the library's passes run BLAS at its own
count and give the pool back as they found it; freed memory is held unless declined."""

import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from fastlenet import layers, policy
from fastlenet.core import Layer


def blas_threads():
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


class Probe(Layer):
    """Records the BLAS pool's size while a pass runs through it."""

    def __init__(self, fail=False):
        self.seen, self.fail = [], fail

    def forward(self, x):
        self.seen.append(blas_threads())
        if self.fail:
            raise RuntimeError("probe")
        return x

    def backward(self, dy):
        self.seen.append(blas_threads())
        return dy


@pytest.fixture
def two_blas_threads(monkeypatch):
    monkeypatch.setattr(policy, "_gemm_threads", 1)
    with threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() != [2]:
            pytest.skip("needs one BLAS library that can run 2 threads")
        yield


def test_passes_run_blas_on_one_thread_and_give_the_pool_back(two_blas_threads):
    probe = Probe()
    net = layers.Sequential(layers.Linear(4, 3, rng=0), probe, layers.Linear(3, 2, rng=1))
    x = np.ones((5, 4), np.float32)
    net.backward(np.ones_like(net.forward(x)))
    assert probe.seen == [[1], [1]] and blas_threads() == [2]
    layers.Linear(4, 3, rng=0).forward(x)  # a layer on its own limits as well
    assert blas_threads() == [2]


def test_a_nested_pass_limits_once(two_blas_threads, monkeypatch):
    calls = []
    pools = policy._blas_pools()
    monkeypatch.setattr(policy, "_blas_pools", lambda: calls.append(1) or pools)
    net = layers.Sequential(layers.Linear(4, 3, rng=0), layers.ReLU(), layers.Linear(3, 2, rng=1))
    net.forward(np.ones((5, 4), np.float32))
    assert calls == [1]


def test_a_failing_pass_gives_the_pool_back(two_blas_threads):
    net = layers.Sequential(layers.Linear(4, 4, rng=0), Probe(fail=True))
    with pytest.raises(RuntimeError, match="probe"):
        net.forward(np.ones((1, 4), np.float32))
    assert blas_threads() == [2] and not policy._in_pass.active
    probe = Probe()
    layers.Sequential(probe).forward(np.ones((1, 4), np.float32))
    assert probe.seen == [[1]]  # the next pass limits again


def test_set_threads_chooses_the_passes_blas_threads(two_blas_threads, monkeypatch):
    from fastlenet import env
    monkeypatch.setattr(policy, "_gemm_threads", 1)
    env.set_threads(blas_threads=2)
    assert policy._gemm_threads == 2
    probe = Probe()
    layers.Sequential(probe).forward(np.ones((1, 4), np.float32))
    assert probe.seen == [[2]]


CHILD = """
import sys
import numpy as np
from fastlenet import reference
assert "numba" not in sys.modules, "the reference layers need no Numba"
from fastlenet import env
from fastlenet.models import LeNet5
before = env.environment()["freed_memory_held"]
LeNet5().forward(np.zeros((1, 1, 32, 32), np.float32))
print(before, env.environment()["freed_memory_held"], env.release_freed_memory(),
      env.environment()["freed_memory_held"])
"""


@pytest.mark.parametrize("setting, expected", [(None, "False True True False"), ("0", "False False True False")])
def test_the_first_pass_holds_freed_memory_unless_declined(setting, expected):
    if sys.platform != "linux":
        pytest.skip("glibc's mallopt")
    child_env = {k: v for k, v in os.environ.items() if k != "FASTLENET_HOLD_MEMORY"}
    if setting is not None:
        child_env["FASTLENET_HOLD_MEMORY"] = setting
    out = subprocess.run([sys.executable, "-c", CHILD], env=child_env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == expected.split()
