"""Data-parallel training over MPI: agreement with one process, a consistent exchange,
a job that ends when a rank dies, and resume after it. Launched through mpiexec with
a timeout, the whole process group killed on timeout; traffic stays on this machine."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastlenet.core import Parameter
from fastlenet.distributed import GradientExchange, SingleProcess
from fastlenet.storage import load_tensors
import mpi_train

HERE = Path(__file__).parent


def mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py not installed (pip install -e '.[mpi]')")
    found = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    if not found:
        pytest.skip("no mpiexec on PATH (pip install -e '.[mpi]' brings MPICH's)")
    return found


def launch(*args, timeout=240):
    proc = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=HERE, env={**os.environ, "PYTHONPATH": str(HERE)})
    return proc


def finish(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("mpiexec did not finish in time (killed)")
    return proc.returncode, out, err


def test_exchange_weights_and_sums():
    class TwoRanks(SingleProcess):  # a stand-in whose other rank holds the same gradients
        size = 2

        def allreduce(self, buffer):
            buffer *= 2
            return buffer

    params = [Parameter(np.zeros((2, 3), np.float32)), Parameter(np.zeros(4, np.float32))]
    params[0].grad[...] = 1.0
    params[1].grad[...] = 2.0
    scalars = GradientExchange(TwoRanks(), params)(0.5, 3.0, 4.0, 0.0)
    np.testing.assert_array_equal(params[0].grad, np.ones((2, 3)))  # 2 ranks x weight 0.5
    np.testing.assert_array_equal(params[1].grad, np.full(4, 2.0))
    assert scalars == [6.0, 8.0, 0.0] and params[0].grad.dtype == np.float32


def test_two_ranks_train_like_one_process(tmp_path):
    code, out, err = finish(launch(HERE / "mpi_train.py", tmp_path / "mpi", 20))
    assert code == 0, err
    single = mpi_train.run(str(tmp_path / "one"), 20)
    a, b = (load_tensors(tmp_path / r / "model.safetensors")[0] for r in ("mpi", "one"))
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-5  # summation order differs, nothing else
    summary = json.loads((tmp_path / "mpi" / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["iterations"] == 20
    assert abs(summary["test_accuracy"] - single["test_accuracy"]) <= 0.001
    assert sorted(p.name for p in (tmp_path / "mpi").iterdir() if p.suffix == ".json") == \
        ["checkpoint.json", "config.json", "summary.json"]  # rank 0 alone wrote


def test_a_dead_rank_ends_the_job_and_the_run_resumes(tmp_path, real_mnist):
    out = tmp_path / "run"
    proc = launch("-m", "fastlenet", "train", "--data-dir", real_mnist.directory, "--limit-train", "20000",
                  "--epochs", "2", "--batch-size", "100", "--checkpoint-every", "10", "--threads", "1",
                  "--out", out, "--quiet")
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 30):
        time.sleep(0.05)
    ranks = subprocess.run(["pgrep", "-f", "--", f"--out {out}"], capture_output=True, text=True).stdout.split()
    ranks = [int(p) for p in ranks if int(p) != proc.pid]
    assert ranks, "no rank found"
    killed = time.time()
    os.kill(max(ranks), signal.SIGKILL)
    code, _, err = finish(proc, timeout=60)
    assert code != 0 and time.time() - killed < 60
    resumed = subprocess.run([sys.executable, "-m", "fastlenet", "train", "--resume", str(out), "--quiet",
                              "--data-dir", str(real_mnist.directory)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 2 * 200 and summary["test_accuracy"] > 0.95
