"""Nothing lost: atomic files, and runs killed (SIGKILL, SIGTERM) then resumed bit-exactly."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastlenet.storage import atomic_write, load_tensors

RUN = ["--limit-train", "3000", "--epochs", "3", "--batch-size", "100", "--eval-every", "10",
       "--checkpoint-every", "7", "--val-size", "500", "--quiet"]


def test_atomic_write_never_leaves_half_a_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.safetensors"
    atomic_write(path, b"old and whole")

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new" * 1000)
    assert path.read_bytes() == b"old and whole"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]  # no temporary left


def start(out, data_dir, *extra):
    return subprocess.Popen([sys.executable, "-m", "fastlenet", "train", *RUN, "--out", str(out),
                             "--data-dir", str(data_dir), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_iteration(out, iteration, proc, timeout=120):
    deadline = time.time() + timeout
    metrics = out / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists():
            lines = metrics.read_text().splitlines()
            if lines and json.loads(lines[-1] or "{}").get("iteration", 0) >= iteration:
                return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("run did not get that far in time")


def outcome(run):
    weights = load_tensors(run / "model.safetensors")[0]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records = [{k: v for k, v in r.items() if k != "time_s" and "seconds" not in k} for r in records]
    summary = json.loads((run / "summary.json").read_text())
    return weights, records, {k: summary[k] for k in ("test_accuracy", "validation_accuracy", "train_accuracy")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, real_mnist):
    out = tmp_path_factory.mktemp("whole") / "run"
    proc = start(out, real_mnist.directory)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return outcome(out)


@pytest.mark.slow
@pytest.mark.parametrize("signum, at", [(signal.SIGKILL, 40), (signal.SIGTERM, 23)])
def test_killed_run_resumes_bit_exactly(tmp_path, real_mnist, uninterrupted, signum, at):
    out = tmp_path / "run"
    proc = start(out, real_mnist.directory)
    wait_for_iteration(out, at, proc)
    proc.send_signal(signum)
    code = proc.wait(timeout=60)
    if signum == signal.SIGTERM:
        assert code == 130
        assert "Resume with: fastlenet train --resume" in proc.stderr.read()
        state = json.loads((out / "checkpoint.json").read_text())
        assert state["iteration"] >= at  # stopped at the end of a step and saved there
    else:
        assert code == -signal.SIGKILL
    resumed = subprocess.run([sys.executable, "-m", "fastlenet", "train", "--resume", str(out), "--quiet",
                              "--data-dir", str(real_mnist.directory)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    weights, records, summary = outcome(out)
    ref_weights, ref_records, ref_summary = uninterrupted
    for name in ref_weights:
        np.testing.assert_array_equal(weights[name], ref_weights[name])
    assert records == ref_records
    assert summary == ref_summary


def test_kernels_give_the_same_bits_for_any_thread_count():
    import numba

    from fastlenet.models import LeNet5
    from fastlenet.losses import SoftmaxCrossEntropy
    from fastlenet.workloads import synthetic_batch

    x, y = synthetic_batch(64)
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        model, loss = LeNet5(seed=0), SoftmaxCrossEntropy()
        logits = model.forward(x)
        loss.forward(logits, y)
        model.backward(loss.backward())
        results.append([logits] + [p.grad.copy() for p in model.params])
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_reference_backend_is_deterministic_too(tmp_path):
    from conftest import synthetic_mnist
    from fastlenet.train import TrainConfig, train

    data = synthetic_mnist(n_train=300, n_test=50)
    for name in ("a", "b"):
        train(TrainConfig(epochs=1, batch_size=100, val_size=100, backend="reference", quiet=True,
                          out=str(tmp_path / name)), data=data)
    wa, wb = (load_tensors(tmp_path / n / "model.safetensors")[0] for n in "ab")
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])


def test_corrupt_idx_from_the_cli_is_one_line(tmp_path):
    from conftest import idx_bytes

    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(idx_bytes(np.zeros(10, np.uint8)))
    result = subprocess.run([sys.executable, "-m", "fastlenet", "data", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "not the genuine MNIST file" in result.stderr


def test_images_and_labels_of_different_lengths():
    from fastlenet.data import DataError, check_pair

    with pytest.raises(DataError, match=r"training set: \(5, 28, 28\) images and \(4,\) labels do not pair up"):
        check_pair(np.zeros((5, 28, 28)), np.zeros(4), "training set")
