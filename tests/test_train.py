"""The trainer: run directory, determinism, resume, stops, bad settings."""

import json
import signal
from types import SimpleNamespace

import numpy as np
import pytest

from fastlenet.augment import distorted_epochs
from fastlenet.averaging import WeightAverage
from fastlenet.core import Parameter
from fastlenet.errors import WeightsError
from fastlenet.evaluation import predict_proba
from fastlenet.models import LeNet5
from fastlenet.storage import load_model, load_tensors
from fastlenet.train import ConfigError, TrainConfig, TrainingStopped, learning_rate, train
from conftest import synthetic_mnist

DATA = synthetic_mnist()


def config(tmp_path, name="run", **overrides):
    settings = dict(epochs=2, batch_size=64, eval_every=4, val_size=100, out=str(tmp_path / name), quiet=True)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_run_directory_holds_everything(tmp_path):
    summary = train(config(tmp_path), data=DATA)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "summary.json", "model.safetensors", "checkpoint.safetensors",
                 "loss.png", "val_accuracy.png", "confusion_matrix.png", "misclassified.png"):
        assert (run / name).is_file(), name
    for png in run.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    iters = [r for r in records if r["type"] == "iter"]
    assert [r["iteration"] for r in iters] == list(range(1, 17))  # 500 images / 64 -> 8 batches x 2 epochs
    assert sum(r["type"] == "eval" for r in records) == 2 + 2  # every 4 iterations within an epoch + each epoch end
    stored = json.loads((run / "config.json").read_text())
    assert stored["config"]["lr"] == 6e-3 and stored["config"]["lr_schedule"] == "onecycle"
    assert len(stored["data"]["validation_indices"]) == 100
    assert stored["environment"]["numba"] and stored["threads"]["blas"] == 1
    assert summary == json.loads((run / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.9 and summary["train_accuracy"] > 0.9  # the synthetic classes are easy
    assert summary["epochs"] == 2 and summary["iterations"] == 16 and summary["train_images_per_s"] > 0
    epochs = [r for r in records if r["type"] == "epoch"]
    assert all(0 < r["compute_seconds"] < r["train_seconds"] < r["wall_seconds"] for r in epochs)
    compute, wall = (sum(r[key] for r in epochs) for key in ("compute_seconds", "wall_seconds"))
    assert summary["compute_seconds_per_epoch"] == pytest.approx(compute / 2)
    assert summary["wall_seconds_per_epoch"] == pytest.approx(wall / 2)
    assert summary["epoch_over_compute"] == pytest.approx(wall / compute) and summary["epoch_over_compute"] > 1
    assert load_model(run / "model.safetensors").dtype == np.float32


def test_compare_reference_records_the_speedup(tmp_path):
    summary = train(config(tmp_path, epochs=1), data=DATA, compare_reference=True)
    assert summary["reference_step_s"] > summary["fast_step_s"] > 0
    assert summary["speedup_vs_reference"] == pytest.approx(summary["reference_step_s"] / summary["fast_step_s"])
    plain = train(config(tmp_path, "plain", epochs=1), data=DATA)
    assert plain["test_accuracy"] == summary["test_accuracy"]  # the timing steps do not touch the run


def test_same_seed_same_run_bit_for_bit(tmp_path):
    a = train(config(tmp_path, "a", epochs=1), data=DATA)
    b = train(config(tmp_path, "b", epochs=1), data=DATA)
    c = train(config(tmp_path, "c", epochs=1, seed=1), data=DATA)
    wa, wb, wc = (load_tensors(tmp_path / r / "model.safetensors")[0] for r in "abc")
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name])
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert any(not np.array_equal(wa[k], wc[k]) for k in wa)
    for key in ("test_accuracy", "validation_accuracy", "train_accuracy", "final_loss"):
        assert a[key] == b[key]


class SignalAfter:
    """A progress bar that sends this process a signal after `steps` updates."""

    count = 0

    def __init__(self, steps, signum):
        self.steps, self.signum = steps, signum

    def __call__(self, **kwargs):
        return self

    def update(self, n=1):
        SignalAfter.count += 1
        if SignalAfter.count == self.steps:
            signal.raise_signal(self.signum)

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_then_resume_is_bit_exact(tmp_path, signum):
    whole = train(config(tmp_path, "whole", epochs=3, quiet=False), data=DATA, progress=SignalAfter(0, signum))
    SignalAfter.count = 0
    with pytest.raises(TrainingStopped, match=f"stopped by {signal.Signals(signum).name} at iteration 11.*--resume"):
        train(config(tmp_path, "cut", epochs=3, quiet=False), data=DATA, progress=SignalAfter(11, signum))
    assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["iteration"] == 11
    (tmp_path / "cut" / "checkpoint.json").unlink()  # a readable copy only: the state is in the safetensors file
    resumed = train(TrainConfig(quiet=True), resume=tmp_path / "cut", data=DATA)
    w1, w2 = (load_tensors(tmp_path / r / "model.safetensors")[0] for r in ("whole", "cut"))
    for name in w1:
        np.testing.assert_array_equal(w1[name], w2[name])
    assert resumed["test_accuracy"] == whole["test_accuracy"] and resumed["final_loss"] == whole["final_loss"]

    def without_timings(run):
        records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if "seconds" not in k and k != "time_s"} for r in records]

    assert without_timings("cut") == without_timings("whole")  # every loss and validation accuracy


def test_resume_refuses_a_checkpoint_that_is_not_one(tmp_path):
    train(config(tmp_path, epochs=1, checkpoint_every=3), data=DATA)
    (tmp_path / "run" / "summary.json").unlink()  # pretend it stopped
    weights_only = tmp_path / "run" / "model.safetensors"
    (tmp_path / "run" / "checkpoint.safetensors").write_bytes(weights_only.read_bytes())
    with pytest.raises(WeightsError, match="not a fastlenet checkpoint"):
        train(TrainConfig(quiet=True), resume=tmp_path / "run", data=DATA)
    (tmp_path / "run" / "checkpoint.safetensors").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        train(TrainConfig(quiet=True), resume=tmp_path / "run", data=DATA)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_resume_refuses_a_checkpoint_whose_tensors_were_corrupted(tmp_path):
    train(config(tmp_path, epochs=1), data=DATA)
    run = tmp_path / "run"
    (run / "summary.json").unlink()  # pretend it stopped
    raw = bytearray((run / "checkpoint.safetensors").read_bytes())
    middle = (8 + int.from_bytes(raw[:8], "little") + len(raw)) // 2
    raw[middle:middle + 64] = bytes(64)
    (run / "checkpoint.safetensors").write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="checkpoint.safetensors: corrupt: its tensors do not match the digest"):
        train(TrainConfig(quiet=True), resume=run, data=DATA)


def test_non_finite_loss_stops_with_the_iteration(tmp_path):
    with pytest.raises(TrainingStopped, match=r"loss is (nan|inf) at iteration \d+ \(epoch 1\)"):
        train(config(tmp_path, optimizer="sgd", lr=1e12), data=DATA)


def test_refuses_to_mix_runs(tmp_path):
    train(config(tmp_path, epochs=1), data=DATA)
    with pytest.raises(ConfigError, match="already holds a run: pass --resume"):
        train(config(tmp_path, epochs=1), data=DATA)
    train(config(tmp_path, epochs=1), overwrite=True, data=DATA)
    with pytest.raises(ConfigError, match="already finished"):
        train(TrainConfig(), resume=tmp_path / "run", data=DATA)


def test_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="--batch-size must be >= 1, got 0"):
        train(config(tmp_path, batch_size=0), data=DATA)
    with pytest.raises(ConfigError, match="--optimizer must be one of adam, sgd, got 'rmsprop'"):
        train(config(tmp_path, optimizer="rmsprop"), data=DATA)
    with pytest.raises(ConfigError, match="--shift must be >= 0 and <= 4, got 5"):
        train(config(tmp_path, shift=5), data=DATA)
    with pytest.raises(ConfigError, match="--lr-schedule must be one of constant, cosine, onecycle, got 'step'"):
        train(config(tmp_path, lr_schedule="step"), data=DATA)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        train(config(tmp_path, out=str(blocker)), data=DATA)


@pytest.mark.slow
def test_real_mnist_short_run_learns(tmp_path, real_mnist):
    """A few hundred iterations on real MNIST already give > 95 % on the full test set."""
    summary = train(config(tmp_path, epochs=2, batch_size=128, limit_train=20000, eval_every=100, val_size=1000),
                    data=real_mnist)
    assert summary["iterations"] == 2 * 157
    assert summary["test_accuracy"] >= 0.95


def test_cosine_schedule_runs_from_lr_towards_zero():
    cfg = TrainConfig(lr=1e-3, lr_schedule="cosine")
    assert learning_rate(cfg, 0, 100) == 1e-3
    assert learning_rate(cfg, 50, 100) == pytest.approx(5e-4)
    assert 0 < learning_rate(cfg, 99, 100) < 1e-6
    assert learning_rate(TrainConfig(lr=1e-3, lr_schedule="constant"), 99, 100) == 1e-3


def test_onecycle_warms_up_linearly_then_decays_to_min_lr():
    cfg = TrainConfig(lr=4e-3, lr_schedule="onecycle", warmup_epochs=1.5, min_lr=1e-5)
    rates = [learning_rate(cfg, i, 100, 10) for i in range(100)]  # 10 epochs of 10 steps: 15 warm-up steps
    assert rates[:15] == pytest.approx([4e-3 * (i + 1) / 15 for i in range(15)])
    assert rates[14] == pytest.approx(4e-3) and rates[14] > rates[15] > 0.99 * 4e-3
    assert all(a > b for a, b in zip(rates[14:], rates[15:])) and rates[-1] == pytest.approx(1e-5)
    assert learning_rate(TrainConfig(lr=4e-3, lr_schedule="onecycle", warmup_epochs=0), 0, 100, 10) == 4e-3


def test_onecycle_needs_min_lr_below_lr():
    with pytest.raises(ConfigError, match="--min-lr must be below --lr with --lr-schedule onecycle"):
        TrainConfig(lr=1e-5, lr_schedule="onecycle").check()


@pytest.mark.parametrize("schedule, ema", [("cosine", 0.0), ("onecycle", 0.0), ("onecycle", 0.9)])
def test_schedule_and_shifts_train_and_resume_bit_exactly(tmp_path, schedule, ema):
    """The recipe options are functions of (seed, step), or checkpointed (the average):
    a stopped run resumes to the same bits."""
    extra = dict(epochs=2, lr=1e-3, lr_schedule=schedule, shift=2, ema=ema, quiet=False)  # stopped inside the warm-up
    whole = train(config(tmp_path, "whole", **extra), data=DATA, progress=SignalAfter(0, signal.SIGINT))
    SignalAfter.count = 0
    with pytest.raises(TrainingStopped):
        train(config(tmp_path, "cut", **extra), data=DATA, progress=SignalAfter(5, signal.SIGINT))
    resumed = train(TrainConfig(quiet=True), resume=tmp_path / "cut", data=DATA)
    w1, w2 = (load_tensors(tmp_path / r / "model.safetensors")[0] for r in ("whole", "cut"))
    for name in w1:
        np.testing.assert_array_equal(w1[name], w2[name])
    assert resumed["final_loss"] == whole["final_loss"]
    lrs = [json.loads(line).get("lr") for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    lrs = [lr for lr in lrs if lr is not None]
    if schedule == "cosine":
        assert lrs[0] == 1e-3 and all(a > b for a, b in zip(lrs, lrs[1:]))  # decays every step
    else:  # 8 steps an epoch: up to 1e-3 over the first, then down to --min-lr
        assert all(a < b for a, b in zip(lrs[:8], lrs[1:8])) and lrs[7] == pytest.approx(1e-3)
        assert all(a > b for a, b in zip(lrs[7:], lrs[8:])) and lrs[-1] == pytest.approx(1e-5)
    plain = train(config(tmp_path, "plain", epochs=2), data=DATA)
    assert plain["final_loss"] != whole["final_loss"]  # the options change the run


def test_ema_is_the_bias_corrected_average_of_the_steps():
    decay, values = 0.9, [np.full(3, v, np.float32) for v in (1.0, 5.0, -2.0)]
    p = Parameter(np.zeros(3, np.float32))
    average, model = WeightAverage([p], decay), SimpleNamespace(params=[Parameter(np.full(3, np.nan, np.float32))])
    for k, v in enumerate(values, 1):
        p.value[...] = v
        average.update()
        average.copy_to(model)
        weights = [(1 - decay) * decay ** (k - i) for i in range(1, k + 1)]
        expected = sum(w * float(v[0]) for w, v in zip(weights, values)) / (1 - decay ** k)
        assert model.params[0].value.dtype == np.float32
        np.testing.assert_allclose(model.params[0].value, expected, rtol=1e-6)
    assert np.isclose(expected, (0.081 * 1 + 0.09 * 5 + 0.1 * -2) / (1 - 0.729))  # by hand: 1.2214
    assert average.shadow[0].dtype == np.float32 and p.value[0] == -2.0  # training weights untouched


def test_ema_run_saves_and_tests_the_average(tmp_path):
    summary = train(config(tmp_path, ema=0.99, epochs=1), data=DATA)
    saved = load_tensors(tmp_path / "run" / "model.safetensors")[0]
    tensors, _ = load_tensors(tmp_path / "run" / "checkpoint.safetensors")
    steps = 8  # 540 images at batch 64
    for i, name in enumerate(LeNet5().named_params):  # the checkpoint's buffers are in parameter order
        live, shadow = tensors[f"model.{name}"], tensors[f"ema.shadow.{i}"]
        assert not np.array_equal(saved[name], live)
        np.testing.assert_array_equal(saved[name], shadow / np.float32(1 - 0.99 ** steps))
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert summary["test_accuracy"] == (predict_proba(model, DATA.test_images).argmax(1) == DATA.test_labels).mean()


@pytest.mark.parametrize("dtype, normalize", [(np.float32, False), (np.float64, True)])
def test_predicting_a_subset_by_indices_is_predicting_its_copy(dtype, normalize):
    model = LeNet5("fast", dtype, seed=3)
    model.normalize = normalize
    indices = np.random.default_rng(0).permutation(len(DATA.train_images))[:300]  # a whole chunk and a ragged one
    np.testing.assert_array_equal(predict_proba(model, DATA.train_images, indices=indices),
                                  predict_proba(model, DATA.train_images[indices]))


def test_ema_decay_must_be_below_one():
    with pytest.raises(ConfigError, match=r"--ema must be >= 0.0 and < 1.0, got 1.0"):
        TrainConfig(ema=1.0).check()


def test_the_last_clean_fraction_of_the_epochs_sees_undistorted_images(tmp_path):
    def weights(name, **settings):
        train(config(tmp_path, name, **settings), data=DATA)
        return load_tensors(tmp_path / name / "model.safetensors")[0]

    plain, all_clean = weights("plain", shift=0), weights("all-clean", rotate=10.0, clean_fraction=0.8)  # 1.6 -> 2
    last_clean, distorted = (weights(name, rotate=10.0, clean_fraction=f) for name, f in (("last", 0.5), ("all", 0.0)))
    assert all(np.array_equal(plain[k], all_clean[k]) for k in plain)
    assert not any(np.array_equal(last_clean[k], w[k]) for k in plain for w in (plain, distorted))
    assert [distorted_epochs(TrainConfig(epochs=e)) for e in (1, 2, 3, 10)] == [0, 1, 1, 4]  # the default 0.6
    assert distorted_epochs(TrainConfig(shift=0)) == 0


WARM_UP_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from conftest import synthetic_mnist
from fastlenet import kernels, train as training
from fastlenet.train import TrainConfig, train

def signatures():
    return {{(name, str(sig)) for name in kernels.__all__[1:] for sig in getattr(kernels, name).kernel.signatures}}

after_warm_up = []
real = training.warm_up
def warm_up(*args):
    seconds = real(*args)
    after_warm_up.append(signatures())
    return seconds
training.warm_up = warm_up
train(TrainConfig(epochs=2, batch_size=48, eval_every=3, val_size=70, out={out!r}, quiet=True, rotate=10, scale=0.1,
                  ema=0.9, clean_fraction=0.5), data=synthetic_mnist())
print(sorted(signatures() - after_warm_up[0]))
"""


def test_the_warm_up_compiles_every_kernel_the_run_calls(tmp_path):
    """In a fresh process, so that no earlier test has loaded a kernel: nothing a step,
    a distortion, the average or an evaluation calls is compiled (or loaded) after the warm-up."""
    import subprocess
    import sys
    from pathlib import Path
    child = WARM_UP_CHILD.format(tests=str(Path(__file__).parent), out=str(tmp_path / "run"))
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_im2col_rung_trains_the_same_model(tmp_path):
    """--conv im2col runs the window view + GEMM engine: recorded in the run, the same
    model as the direct rung up to float32 rounding (the sums run in other orders), and
    a resume cannot switch rungs."""
    direct = train(config(tmp_path, "direct", epochs=1), data=DATA)
    im2col = train(config(tmp_path, "im2col", epochs=1, conv="im2col", checkpoint_every=2), data=DATA)
    recorded = json.loads((tmp_path / "im2col" / "config.json").read_text())["config"]
    assert recorded["conv"] == "im2col" and json.loads((tmp_path / "direct" / "config.json").read_text())[
        "config"]["conv"] == "auto"
    assert abs(im2col["final_loss"] - direct["final_loss"]) < 1e-4
    a, b = (load_tensors(tmp_path / run / "model.safetensors")[0] for run in ("direct", "im2col"))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-4)
    (tmp_path / "im2col" / "summary.json").unlink()
    with pytest.raises(ConfigError, match="cannot change --conv"):
        train(resume=tmp_path / "im2col", data=DATA, changes={"conv": "direct"})
