"""Settings: every bad one is a one-line error before data or files; resume's rules;
the model's preprocessing travelling with its weights; the warm-up's coverage."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import pytest

from fastlenet.cli import main
from fastlenet.evaluation import predict_proba, report
from fastlenet.settings import RECIPES, SettingsError, TrainConfig, from_file, from_recipe
from fastlenet.storage import load_model, load_tensors
from fastlenet.train import StopFlag, Trainer, TrainingStopped, evaluation_sizes, load_data, train, warm_up
from fastlenet.distributed import SingleProcess
from fastlenet.rundir import MetricsFile, RunDir
from conftest import synthetic_mnist

DATA = synthetic_mnist()

BAD = [
    (["--optimizer", "sgd", "--momentum", "1.5"], "--momentum must be >= 0.0 and < 1.0, got 1.5"),
    (["--momentum", "5"], "--momentum must be >= 0.0 and < 1.0, got 5"),
    (["--momentum", "0.5"], "--momentum applies to --optimizer sgd only"),
    (["--threads", "0"], "--threads must be >= 1 and <= "),
    (["--threads", "64"], "--threads must be >= 1 and <= "),
    (["--blas-threads", "0"], "--blas-threads must be >= 1 and <= "),
    (["--blas-threads", "-1"], "--blas-threads must be >= 1 and <= "),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--lr", "0"], "--lr must be > 0.0, got 0.0"),
    (["--lr=-1e-3"], "--lr must be > 0.0, got -0.001"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--eval-every", "0"], "--eval-every must be >= 1, got 0"),
    (["--limit-train", "0"], "--limit-train must be >= 1, got 0"),
    (["--val-size", "-1"], "--val-size must be >= 0, got -1"),
    (["--shift", "5"], "--shift must be >= 0 and <= 4, got 5"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1, got 0"),
    (["--ema", "1"], "--ema must be >= 0.0 and < 1.0, got 1.0"),
    (["--rotate", "45"], "--rotate must be >= 0.0 and <= 30.0, got 45.0"),
    (["--clean-fraction", "1.5"], "--clean-fraction must be >= 0.0 and <= 1.0, got 1.5"),
    (["--recipe", "spec", "--lr", "0"], "--lr must be > 0.0, got 0.0"),
    (["--recipe", "augmented", "--resume", "somewhere"], "--recipe starts a new run; --resume somewhere continues"),
    (["--deterministic", "--blas-threads", "2"], "--deterministic needs --blas-threads 1, got 2"),
    (["--config", "missing.json"], "--config missing.json: cannot read it (No such file or directory)"),
    (["--config", "x.json", "--recipe", "spec"], "--recipe and --config are two starting points for a run"),
    (["--config", "x.json", "--resume", "somewhere"], "--config starts a new run; --resume somewhere continues"),
]


@pytest.mark.parametrize("flags, message", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_every_bad_setting_is_one_line_before_data_or_files(tmp_path, capsys, flags, message):
    # a --data-dir with nothing in it and no mirror: loading data first would fail differently
    code = main(["train", *flags, "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("fastlenet: error: "), err
    assert message in err[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "none").exists()


def test_val_size_larger_than_the_training_set_is_a_setting_error(tmp_path):
    with pytest.raises(SettingsError, match="--val-size must be >= 0 and < 600 \\(the training set\\), got 600"):
        train(TrainConfig(val_size=600, out=str(tmp_path / "run"), quiet=True), data=DATA)
    assert not (tmp_path / "run").exists()


def test_config_values_of_the_wrong_type_name_the_key():
    with pytest.raises(SettingsError, match="x.json: epochs must be an integer, got '3'"):
        TrainConfig.from_dict({"epochs": "3"}, "x.json")
    with pytest.raises(SettingsError, match="x.json: unknown setting lr_max"):
        TrainConfig.from_dict({"lr_max": 1.0}, "x.json")
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0 and isinstance(TrainConfig.from_dict({"lr": 1}).lr, float)


def small(tmp_path, name="run", **overrides):
    settings = dict(epochs=1, batch_size=64, eval_every=4, val_size=100, out=str(tmp_path / name), quiet=True)
    return TrainConfig(**{**settings, **overrides})


def test_no_validation_set_runs_to_the_end(tmp_path, capsys):
    summary = train(small(tmp_path, val_size=0), data=DATA)
    assert summary["validation_accuracy"] is None and summary["test_accuracy"] > 0.5


def test_normalize_travels_with_the_weights(tmp_path):
    summary = train(small(tmp_path, normalize=True), data=DATA)
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert model.normalize is True
    assert report(predict_proba(model, DATA.test_images), DATA.test_labels)["accuracy"] == summary["test_accuracy"]
    raw = predict_proba(model, DATA.test_images)
    model.normalize = False  # the same weights fed unnormalised inputs see other numbers
    assert not np.allclose(predict_proba(model, DATA.test_images), raw)
    assert load_tensors(tmp_path / "run" / "checkpoint.safetensors")[1]["normalize"] == "true"


def test_a_recipe_is_a_starting_point_that_flags_override(tmp_path):
    assert from_recipe("spec") == TrainConfig(lr_schedule="constant", lr=1e-3, shift=0)
    assert from_recipe("default") == TrainConfig()
    augmented = from_recipe("augmented", {"seed": 4, "shift": 1})
    assert augmented.seed == 4 and augmented.shift == 1 and augmented.rotate == RECIPES["augmented"]["rotate"]
    with pytest.raises(SettingsError, match="--recipe must be one of spec, default, augmented, got 'best'"):
        from_recipe("best")


def test_resume_applies_what_it_may_and_refuses_the_rest(tmp_path):
    train(small(tmp_path, checkpoint_every=2, lr_schedule="constant", shift=0), data=DATA)
    run = tmp_path / "run"
    (run / "summary.json").unlink()  # pretend it stopped after its first epoch
    with pytest.raises(SettingsError, match=r"cannot change --batch-size, --lr, --optimizer \(a resume may change "
                                            r"only --epochs"):
        train(resume=run, data=DATA, changes={"lr": 0.5, "batch_size": 32, "optimizer": "sgd", "epochs": 2})
    summary = train(resume=run, data=DATA, changes={"epochs": 2, "threads": 1, "quiet": True})
    assert summary["epochs"] == 2 and summary["iterations"] == 16
    assert summary["threads"]["numba"] == 1
    whole = train(small(tmp_path, "whole", epochs=2, checkpoint_every=2, lr_schedule="constant", shift=0), data=DATA)
    assert summary["final_loss"] == whole["final_loss"]  # extending a constant-rate run is the longer run


def test_resume_cannot_stretch_a_schedule_that_depends_on_the_length(tmp_path):
    train(small(tmp_path, lr_schedule="cosine"), data=DATA)
    (tmp_path / "run" / "summary.json").unlink()
    with pytest.raises(SettingsError, match="--epochs cannot change on resume with --lr-schedule cosine"):
        train(resume=tmp_path / "run", data=DATA, changes={"epochs": 3})


def test_resume_cannot_stretch_the_distorted_epochs(tmp_path):
    train(small(tmp_path, lr_schedule="constant", shift=1, clean_fraction=0.5), data=DATA)
    (tmp_path / "run" / "summary.json").unlink()
    with pytest.raises(SettingsError, match="--epochs cannot change on resume with --clean-fraction 0.5"):
        train(resume=tmp_path / "run", data=DATA, changes={"epochs": 3})


def test_resume_from_the_cli_names_the_refused_flags(tmp_path, capsys):
    train(small(tmp_path), data=DATA)
    (tmp_path / "run" / "summary.json").unlink()
    assert main(["train", "--resume", str(tmp_path / "run"), "--lr", "0.5", "--epochs", "5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot change --lr" in err[0]


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_non_finite_loss_says_whether_a_checkpoint_exists(tmp_path, capsys):
    with pytest.raises(TrainingStopped, match="no checkpoint was written yet, so there is nothing to resume"):
        train(small(tmp_path, optimizer="sgd", lr=1e12), data=DATA)
    with pytest.raises(TrainingStopped, match=r"the checkpoint of iteration 8 is kept in .*run2"):
        _diverge_after_first_epoch(tmp_path / "run2")


def _diverge_after_first_epoch(out):
    """One sane epoch (its checkpoint at iteration 8), then a rate that overflows."""
    train(TrainConfig(epochs=1, batch_size=64, val_size=100, optimizer="sgd", lr=1e-3, out=str(out), quiet=True),
          data=DATA)
    (out / "summary.json").unlink()
    config = json.loads((out / "config.json").read_text())
    config["config"].update(lr=1e12, epochs=2)
    (out / "config.json").write_text(json.dumps(config))
    train(resume=out, data=DATA, changes={})


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_non_finite_loss_exits_non_zero_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("fastlenet.train.load_mnist", lambda *a, **k: DATA)
    code = main(["train", "--optimizer", "sgd", "--lr", "1e12", "--batch-size", "64", "--val-size", "100",
                 "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and re.search(r"^fastlenet: error: loss is (nan|inf) at iteration \d+ ", err[0])


def test_deterministic_is_recorded_and_checked(tmp_path):
    train(small(tmp_path, deterministic=True), data=DATA)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["deterministic"] is True
    with pytest.raises(SettingsError, match="--deterministic needs --blas-threads 1"):
        train(small(tmp_path, "b", deterministic=True, blas_threads=2), data=DATA)


def compiled_signatures():
    """How many (kernel, argument types) Numba holds compiled in this process."""
    return sum(len(obj.signatures) for name, module in list(sys.modules.items()) if name.startswith("fastlenet")
               for obj in vars(module).values() if isinstance(obj, numba.core.registry.CPUDispatcher))


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="counts compiled kernels")
@pytest.mark.parametrize("batch_size, augment", [(64, {}), (50, {"shift": 2}), (20, {}),
                                                (30, {"rotate": 10.0, "scale": 0.1})])
def test_after_the_warm_up_training_compiles_nothing(tmp_path, batch_size, augment):
    """The warm-up covers every kernel a run calls: its steps (the optimizer included, at
    the batch size and at the last, smaller one) and its evaluations."""
    config = small(tmp_path, batch_size=batch_size, **augment, optimizer="sgd", momentum=0.5, lr=0.01)
    data, train_idx, val_idx = load_data(config, DATA, None)
    run = RunDir.create(config.out)
    trainer = Trainer(config, run, data, train_idx, val_idx, {}, SingleProcess())
    warm_up(trainer, evaluation_sizes(trainer))
    before = compiled_signatures()
    with run.open_metrics() as metrics, StopFlag() as stop:
        trainer.run(metrics, stop)
    predict_proba(trainer.model, data.test_images)
    assert compiled_signatures() == before
    run.release()


def test_a_run_directory_is_held_by_one_process(tmp_path):
    holder = RunDir.create(str(tmp_path / "run"))
    with pytest.raises(SettingsError, match=rf"in use by another fastlenet process \(PID {os.getpid()}\)"):
        train(small(tmp_path), data=DATA)
    with pytest.raises(SettingsError, match="in use by another fastlenet process"):
        train(small(tmp_path), data=DATA, overwrite=True)
    holder.release()
    train(small(tmp_path), data=DATA, overwrite=True)  # released: free again


def test_default_run_names_do_not_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = RunDir.create(None), RunDir.create(None)
    assert a.path != b.path and a.path.parent == b.path.parent == tmp_path.joinpath("runs").relative_to(tmp_path)
    a.release(), b.release()


def test_overwrite_keeps_the_old_run_until_the_new_one_can_start(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTLENET_DATA", raising=False)  # no data anywhere, and no mirror to get it from
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FASTLENET_MIRRORS", "http://127.0.0.1:9/")
    train(small(tmp_path), data=DATA)
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for config in (small(tmp_path, epochs=0), small(tmp_path, val_size=10**6)):
        with pytest.raises(SettingsError):
            train(config, data=DATA, overwrite=True)
    with pytest.raises(Exception, match="MNIST"):
        train(small(tmp_path, data_dir=str(tmp_path / "nothing")), overwrite=True)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    (run / "loss.png").write_bytes(b"an old figure")
    train(small(tmp_path, epochs=1, seed=3), data=DATA, overwrite=True)
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "config.json").read_text())["config"]["seed"] == 3


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "thesis.tex").write_text("mine")
    with pytest.raises(SettingsError, match="--overwrite replaces only a run, and this folder also holds thesis.tex"):
        train(small(tmp_path), data=DATA, overwrite=True)
    assert (tmp_path / "run" / "thesis.tex").read_text() == "mine"


def test_records_past_the_checkpoint_and_a_torn_line_are_dropped_on_resume(tmp_path):
    whole = train(small(tmp_path, "whole", epochs=2, lr_schedule="constant", shift=0), data=DATA)
    train(small(tmp_path, lr_schedule="constant", shift=0), data=DATA)  # one epoch: its checkpoint is at iteration 8
    run = tmp_path / "run"
    (run / "summary.json").unlink()
    with open(run / "metrics.jsonl", "a") as f:  # a crash (or a full disk) after the checkpoint, mid-line
        f.write(json.dumps({"type": "iter", "iteration": 9, "epoch": 2, "loss": 1.0}) + '\n{"type": "iter", "itera')
    resumed = train(resume=run, data=DATA, changes={"epochs": 2})
    assert resumed["final_loss"] == whole["final_loss"]

    def records(name):
        return [{k: v for k, v in json.loads(line).items() if "seconds" not in k and k != "time_s"}
                for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    assert records("run") == records("whole")


def test_what_killed_writes_left_is_removed_when_the_run_is_next_held(tmp_path):
    train(small(tmp_path, lr_schedule="constant", shift=0), data=DATA)
    run = tmp_path / "run"
    (run / "summary.json").unlink()
    stale = [run / ".checkpoint.safetensors.k3j2l1.tmp", run / ".metrics.jsonl.abc.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (run / ".notes.tmp").write_text("not ours")
    train(resume=run, data=DATA, changes={"epochs": 2})
    assert not any(p.exists() for p in stale) and (run / ".notes.tmp").exists()


def test_a_torn_line_inside_metrics_is_an_error(tmp_path):
    from fastlenet.rundir import read_metrics
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1}\n{"itera\n{"iteration": 2}\n')
    with pytest.raises(SettingsError, match="line 2 is not a JSON record"):
        read_metrics(path)


def test_a_full_disk_names_the_file():
    metrics = MetricsFile(Path("/dev/full"))
    metrics({"type": "iter"})  # waits in memory
    with pytest.raises(OSError) as caught:
        metrics({"type": "eval"})
    assert caught.value.filename == "/dev/full" and "No space left" in str(caught.value)


def test_step_records_wait_until_another_record_a_flush_or_flush_s(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    lines = lambda: [json.loads(line)["iteration"] for line in path.read_text().splitlines()]  # noqa: E731
    with MetricsFile(path) as metrics:
        metrics({"type": "iter", "iteration": 1})
        metrics({"type": "iter", "iteration": 2})
        assert lines() == []
        metrics({"type": "eval", "iteration": 2})
        assert lines() == [1, 2, 2]
        metrics({"type": "iter", "iteration": 3})
        metrics.flush()
        assert lines() == [1, 2, 2, 3]
        monkeypatch.setattr(MetricsFile, "FLUSH_S", 0.0)
        metrics({"type": "iter", "iteration": 4})
        assert lines() == [1, 2, 2, 3, 4]
        monkeypatch.setattr(MetricsFile, "FLUSH_S", 60.0)
        metrics({"type": "iter", "iteration": 5})
    assert lines() == [1, 2, 2, 3, 4, 5]  # closing writes what waits


def test_ctrl_c_while_starting_is_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "fastlenet", "train", "--epochs", "1"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and proc.returncode == 130, err
    assert err.strip().splitlines() == ["fastlenet: interrupted"]


@pytest.mark.skipif(not __import__("platform").libc_ver()[0] == "glibc", reason="glibc's allocator")
def test_the_train_command_holds_freed_memory(tmp_path, monkeypatch):
    monkeypatch.setattr("fastlenet.train.load_mnist", lambda *a, **k: DATA)
    monkeypatch.setattr("fastlenet.policy._heap_held", False)  # as in a fresh process: the command must set it
    assert main(["train", "--epochs", "1", "--batch-size", "64", "--val-size", "100", "--out",
                 str(tmp_path / "run"), "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["environment"]["freed_memory_held"] is True


def write_settings(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, text, message", [
    ("typo.json", '{"epochs": 1, "lr_shedule": "constant"}', "unknown setting lr_shedule; settings are: epochs"),
    ("type.json", '{"epochs": "ten"}', "epochs must be an integer, got 'ten'"),
    ("type.toml", 'batch_size = 32.5', "batch_size must be an integer, got 32.5"),
    ("bound.toml", 'momentum = 1.5\noptimizer = "sgd"', "--momentum must be >= 0.0 and < 1.0, got 1.5"),
    ("list.json", '[1, 2]', "expected a table of settings, got list"),
    ("broken.json", '{"epochs": 1', "not valid JSON"),
    ("broken.toml", 'epochs = ', "not valid TOML"),
    ("run.json", '{"config": {"epochs": 2, "seed": -3}}', "--seed must be >= 0, got -3"),
])
def test_a_bad_config_file_is_one_line_naming_the_setting(tmp_path, capsys, name, text, message):
    path = write_settings(tmp_path / name, text)
    code = main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith(f"fastlenet: error: --config {path}: "), err
    assert message in err[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "none").exists()


def test_a_config_file_that_never_ends_is_refused(tmp_path, capsys):
    fifo = tmp_path / "settings.json"
    os.mkfifo(fifo)  # reading it would wait forever
    assert main(["train", "--config", str(fifo), "--out", str(tmp_path / "run")]) == 1
    assert "not a regular file" in capsys.readouterr().err
    big = write_settings(tmp_path / "big.json", '{"epochs": 1' + " " * (2 << 20) + "}")
    assert main(["train", "--config", str(big), "--out", str(tmp_path / "run")]) == 1
    assert "larger than a settings file can be" in capsys.readouterr().err


def test_a_recorded_run_runs_again_bit_for_bit(tmp_path):
    """--config RUN/config.json: the recorded settings (not its folder), flags on top; the same
    machine and threads give the same weights, and the new config.json records what ran."""
    first = train(small(tmp_path, "first", epochs=2, shift=1, clean_fraction=0.5, lr=3e-3), data=DATA)
    recorded = tmp_path / "first" / "config.json"
    again = from_file(recorded, {"out": str(tmp_path / "again")})
    assert again.out == str(tmp_path / "again") and again.lr == 3e-3 and again.shift == 1
    train(again, data=DATA)
    weights = [(tmp_path / run / "model.safetensors").read_bytes() for run in ("first", "again")]
    assert weights[0] == weights[1]
    assert json.loads((tmp_path / "again" / "config.json").read_text())["config"]["out"] == str(tmp_path / "again")
    assert from_file(recorded).out is None  # without --out, a new default folder, never the recorded run's
    longer = from_file(recorded, {"epochs": 3, "out": str(tmp_path / "longer")})
    assert longer.epochs == 3 and json.loads(recorded.read_text())["config"]["epochs"] == 2
    assert first["epochs"] == 2


def test_settings_written_by_hand_in_toml_or_json(tmp_path):
    toml = from_file(write_settings(tmp_path / "mine.toml", 'epochs = 3\nlr = 0.002\noptimizer = "sgd"\n'
                                                           'momentum = 0.9\nnormalize = true\n'))
    assert (toml.epochs, toml.lr, toml.optimizer, toml.momentum, toml.normalize) == (3, 0.002, "sgd", 0.9, True)
    assert toml.batch_size == TrainConfig().batch_size  # what the file leaves out keeps its default
    plain = from_file(write_settings(tmp_path / "mine.json", '{"epochs": 4, "out": "runs/mine"}'), {"seed": 7})
    assert (plain.epochs, plain.out, plain.seed) == (4, "runs/mine", 7)  # a file written by hand may name its folder


def test_the_cli_runs_a_recorded_run_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("fastlenet.train.load_mnist", lambda *a, **k: DATA)
    first = ["train", "--epochs", "1", "--batch-size", "64", "--val-size", "100", "--quiet"]
    assert main([*first, "--out", str(tmp_path / "first")]) == 0
    assert main(["train", "--config", str(tmp_path / "first" / "config.json"), "--out", str(tmp_path / "again")]) == 0
    assert main(["train", "--config", str(tmp_path / "first" / "config.json"), "--seed", "1",
                 "--out", str(tmp_path / "other")]) == 0
    weights = {run: (tmp_path / run / "model.safetensors").read_bytes() for run in ("first", "again", "other")}
    assert weights["first"] == weights["again"] != weights["other"]
    recorded = json.loads((tmp_path / "other" / "config.json").read_text())["config"]
    assert recorded["seed"] == 1 and recorded["batch_size"] == 64  # the flag over the file, the rest from it
