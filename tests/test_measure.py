"""`fastlenet bench` and `fastlenet profile`: their outputs, on tiny runs (timings are not asserted)."""

import json
import platform
import pstats
import subprocess
import sys

import numpy as np
import pytest

from fastlenet.benchmark import format_bench, run_bench
from fastlenet.cli import main
from fastlenet.profiler import format_profile, profile_training


@pytest.fixture(autouse=True)
def no_mnist(tmp_path, monkeypatch):
    """Nothing to find: these runs use (and must say they use) synthetic data."""
    monkeypatch.delenv("FASTLENET_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_bench_reports_the_documented_schema(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--batch-size", "4", "--repeats", "2", "--reference-repeats", "1", "--no-torch",
                 "--json", str(out), "--data-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["data"].startswith("synthetic")  # no MNIST in tmp_path and none downloaded
    for key in ("fast_s", "reference_s", "speedup"):
        assert r["train_step"][key] > 0
    assert r["inference"]["fast_images_per_s"] > 0 and r["compile_s"] > 0
    assert set(r["layers"]) == {"conv2d-c1", "maxpool2d-s2", "relu-s2", "conv2d-c3", "maxpool2d-s4",
                                "linear-f5", "linear-f6", "linear-f7"}
    assert max(r["max_abs_diff"].values()) < 1e-4 and set(r["max_abs_diff"]) >= {"logits", "c1.weight", "f7.bias"}
    assert r["max_abs_diff"] == r["max_abs_diff_by_rung"]["direct"]  # every fast rung checked against the reference
    assert max(r["max_abs_diff_by_rung"]["im2col"].values()) < 1e-4
    assert all(row[f"{rung}_{direction}_s"] > 0 for row in r["layers"].values()
               for rung in ("reference", "im2col", "direct") for direction in ("forward", "backward"))
    ladder = r["ladder"]
    assert [row["rung"] for row in ladder] == ["reference", "im2col", "direct"]  # no PyTorch row without PyTorch
    assert ladder[0]["speedup_over_previous"] is None and ladder[0]["speedup_over_reference"] == 1
    for before, row in zip(ladder, ladder[1:]):
        assert row["speedup_over_previous"] == pytest.approx(before["train_step_s"] / row["train_step_s"])
        assert row["speedup_over_reference"] == pytest.approx(ladder[0]["train_step_s"] / row["train_step_s"])
    assert ladder[2]["train_step_s"] == r["train_step"]["fast_s"] and ladder[1]["train_step_s"] == r["train_step"]["im2col_s"]
    assert "the ladder" in text and "im2col vs reference on this batch" in text
    c3 = r["layers"]["conv2d-c3"]  # 2 * 4 images * 100 positions * 16 filters * 150 taps, forward
    assert c3["direct_forward_gflops"] == pytest.approx(1.92e6 / c3["direct_forward_s"] / 1e9)
    assert c3["im2col_backward_peak_share"] == pytest.approx(c3["im2col_backward_gflops"] / r["peak_gflops"])
    assert "direct_forward_gflops" not in r["layers"]["maxpool2d-s2"] and "of peak" in text
    assert r["env"]["numba"] and r["env"]["blas"] and r["threads"]["blas"] == 1
    assert "torch" not in r
    assert "medians of 2 runs (reference: 1)" in text and "conv2d-c3     backward" in text
    assert "PyTorch: not compared (--no-torch)" in text  # said so whether or not PyTorch is installed


def test_bench_with_pytorch_when_installed():
    pytest.importorskip("torch", reason="PyTorch is an optional peer (pip install -e '.[compare]')")
    r = run_bench(batch_size=4, repeats=2, reference_repeats=1, layers=False)
    assert r["torch"]["train_step_s"] > 0 and r["torch"]["ratio"] == pytest.approx(
        r["train_step"]["fast_s"] / r["torch"]["train_step_s"])
    assert "fastlenet / PyTorch step time" in format_bench(r)
    assert r["ladder"][-1]["rung"] == "torch" and r["ladder"][-1]["train_step_s"] == r["torch"]["train_step_s"]


def test_profile_table_trace_and_cprofile(tmp_path):
    trace, dump = tmp_path / "trace.json", tmp_path / "steps.prof"
    p = profile_training(steps=3, batch_size=8, trace=str(trace), cprofile=str(dump), data_dir=str(tmp_path))
    names = [row["name"] for row in p["rows"]]
    assert names[:3] == ["c1", "s2", "relu2"] and names[-3:] == ["loss", "optimizer", "data"]
    assert 0.5 < sum(row["share"] for row in p["rows"]) <= 1.0 + 1e-9
    events = json.loads(trace.read_text())["traceEvents"]
    passes = [e for e in events if e["name"].endswith((".forward", ".backward")) and not e["name"].startswith("loss")]
    assert len(passes) == 3 * 12 * 2  # one span per layer pass per step
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in events)
    assert pstats.Stats(str(dump)).total_calls > 0
    text = format_profile(p)
    assert "forward ms" in text and "c3" in text
    rows = {row["name"]: row for row in p["rows"]}
    assert p["peak_gflops"] > 0 and "SGEMM 2048^3" in p["peak_measured_by"] and "GFLOP/s" in text
    c3 = rows["c3"]  # 2 * 8 images * 10 * 10 positions * 16 filters * 6 * 5 * 5 taps, forward
    assert c3["forward_gflops"] == pytest.approx(3.84e6 / (c3["forward_ms"] / 1e3) / 1e9)
    assert c3["forward_peak_share"] == pytest.approx(c3["forward_gflops"] / p["peak_gflops"])
    assert "forward_gflops" not in rows["s2"] and "backward_gflops" in rows["f7"]  # a pool does no arithmetic


def test_a_training_step_is_580_mflop_at_batch_256():
    """The floating-point work each layer pass is credited with (a multiply-add is two):
    forward and backward of LeNet-5 at batch 256, C1 without its input gradient."""
    from fastlenet.models import LeNet5
    from fastlenet.peak import pass_flops
    model, x = LeNet5(), np.zeros((256, 1, 32, 32), np.float32)
    total = {}
    for name, layer in zip(model.layer_names, model.layers):
        total[name] = pass_flops(layer, x.shape)
        x = layer.forward(x)
    assert total["c1"] == (256 * 235_200, 256 * 235_200)  # 28 * 28 positions * 6 filters * 25 taps * 2
    assert total["c3"] == (256 * 480_000, 2 * 256 * 480_000)  # weight and input gradients
    assert total["s2"] == total["relu2"] == (None, None)
    step = sum(f + b for f, b in total.values() if f is not None)
    assert step == 256 * 2_263_920  # 579.6 MFLOP


def test_profiling_leaves_unprofiled_models_alone():
    from fastlenet.profiler import Recorder
    from fastlenet.workloads import training_setup
    profiled, other = training_setup("fast"), training_setup("fast")
    Recorder().instrument(*profiled)
    assert "forward" in vars(profiled[0].layers[0])  # the profiled one is wrapped ...
    assert all("forward" not in vars(layer) and "backward" not in vars(layer) for layer in other[0].layers)
    assert "step" not in vars(other[1]) and "forward" not in vars(other[2])  # ... the other one is not


def test_bad_measure_flags(capsys):
    assert main(["bench", "--repeats", "0"]) == 1
    assert "--repeats must be >= 1, got 0" in capsys.readouterr().err
    assert main(["profile", "--steps", "0"]) == 1


FAULTS_PER_STEP = """
import resource
from fastlenet.env import environment, hold_freed_memory
from fastlenet.workloads import synthetic_batch, train_step, training_setup
assert hold_freed_memory() and environment()["freed_memory_held"]
setup, (x, labels) = training_setup("fast"), synthetic_batch(256)
for _ in range(20):
    train_step(*setup, x, labels)
windows = []  # the quietest of three windows: a kernel compiled in this process leaves the heap growing a while
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        train_step(*setup, x, labels)
    windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
print(min(windows))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_held_memory_serves_the_next_step_without_page_faults():
    """With glibc's defaults batch-256 steps fault in ~120-240 fresh pages each
    in most stretches (large arrays unmapped on free); held, once the heap has
    grown to the working set (a few steps), none. Measured in a training process
    of its own: in this one, whatever earlier tests left in the heap decides
    when it grows."""
    run = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert float(run.stdout) < 10
