"""Sharing the cores: what other processes use, the threads that leaves, and a run that
follows it without changing a bit of its result."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import pytest

from fastlenet import contention
from fastlenet.storage import load_tensors
from fastlenet.train import TrainConfig, train
from conftest import synthetic_mnist

STAT = """cpu  900 0 300 5000 20 0 10 70 0 0
cpu0 100 0 50 2000 10 0 5 30 0 0
cpu1 300 20 100 1500 5 0 0 40 0 0
cpu2 500 0 150 1500 5 0 5 0 0 0
intr 12345
"""


def test_busy_seconds_counts_only_this_process_cpus(tmp_path):
    """user + nice + system + irq + softirq of the CPUs asked for; idle, I/O wait and steal are not busy."""
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    tick = os.sysconf("SC_CLK_TCK")
    assert contention.busy_seconds([0, 1], stat) == pytest.approx((155 + 420) / tick)
    assert contention.busy_seconds([2], stat) == pytest.approx(655 / tick)
    assert contention.busy_seconds([0], tmp_path / "none") is None


@pytest.mark.parametrize("most, others, cores, threads", [
    (2, 0.0, 2, 2), (2, 0.4, 2, 2), (2, 0.6, 2, 1), (2, 1.0, 2, 1), (2, 2.0, 2, 1), (4, 1.2, 4, 3), (1, 0.0, 2, 1),
])
def test_fair_threads_are_the_cores_left_over(most, others, cores, threads):
    assert contention.fair_threads(most, others, cores) == threads


@pytest.mark.skipif(not os.path.exists("/proc/stat") or len(contention.usable_cpus()) < 2,
                    reason="needs /proc/stat and two CPUs")
def test_a_busy_process_beside_is_seen():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        watch = contention.CoreWatch()
        time.sleep(0.6)
        others = watch.others()
    finally:
        busy.kill()
    assert 0.6 < others < 1.6, others  # one core, give or take the machine's own work


class Crowd:
    """A CoreWatch whose other processes come and go: 1 core busy at every other look."""

    cpus, looks = [0, 1], 0

    def due(self):
        return True

    def others(self):
        Crowd.looks += 1
        return float(Crowd.looks % 2)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_threads_follow_the_crowd_and_change_no_bit(tmp_path, monkeypatch):
    data = synthetic_mnist()
    settings = dict(epochs=1, batch_size=64, val_size=100, eval_every=4, quiet=True)
    fixed = train(TrainConfig(out=str(tmp_path / "fixed"), threads=2, **settings), data=data)
    said, Crowd.looks = [], 0
    monkeypatch.setattr(contention, "CoreWatch", Crowd)
    followed = train(TrainConfig(out=str(tmp_path / "followed"), **settings), data=data, log=said.append)
    records = [json.loads(line) for line in (tmp_path / "followed" / "metrics.jsonl").read_text().splitlines()]
    changes = [r for r in records if r["type"] == "threads"]
    assert [r["numba"] for r in changes[:3]] == [1, 2, 1] and changes[0]["other_cores"] == 1.0
    assert len(said) == 0  # quiet
    wf, wa = (load_tensors(tmp_path / r / "model.safetensors")[0] for r in ("fixed", "followed"))
    for name in wf:
        np.testing.assert_array_equal(wf[name], wa[name])
    assert followed["test_accuracy"] == fixed["test_accuracy"]
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_a_run_says_when_it_makes_room(tmp_path, monkeypatch):
    monkeypatch.setattr(contention, "CoreWatch", Crowd)
    Crowd.looks = 0
    said = []
    train(TrainConfig(out=str(tmp_path / "r"), epochs=1, batch_size=256, val_size=100, eval_every=100),
          data=synthetic_mnist(), log=said.append, progress=None)
    assert "other processes keep 1.0 of 2 cores busy: 1 Numba thread from iteration 1" in said
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def test_a_thread_count_given_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(contention, "CoreWatch", Crowd)
    train(TrainConfig(out=str(tmp_path / "r"), epochs=1, batch_size=64, val_size=100, threads=1, quiet=True),
          data=synthetic_mnist())
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert {r["type"] for r in records} == {"iter", "eval", "epoch"}


def test_a_sweeps_points_share_the_cores(monkeypatch):
    from fastlenet import sweep
    monkeypatch.setattr(sweep, "usable_cpus", lambda: [0, 1])
    said = []
    assert sweep.shared_threads(2, 2, said.append) == 1
    assert said == ["2 workers x 2 threads would ask for more than the 2 cores here: 1 thread per point"]
    assert sweep.shared_threads(1, 2, said.append) == 1 and sweep.shared_threads(2, 1, said.append) == 2
    assert sweep.shared_threads(3, 4, said.append) == 1 and len(said) == 2


@pytest.mark.slow
def test_the_contention_benchmark_runs(real_mnist, tmp_path):
    """bench/contention.py end to end on a few hundred images (its timings are not asserted)."""
    script = Path(__file__).parent.parent / "bench" / "contention.py"
    result = subprocess.run([sys.executable, str(script), "--images", "600", "--rounds", "1", "--data-dir",
                             str(real_mnist.directory)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["scenario", "median", "step", "x", "quiet", "threads"]
    assert [line[:14].strip() for line in lines[1:]] == ["quiet", "busy loop", "two trainings", "sweep 2x2",
                                                          "mpi 2 ranks"]
    fair = min(2, max(1, len(contention.usable_cpus()) // 2))  # --workers 2 --threads 2 on this machine
    assert f"'numba': {fair}" in lines[4]
