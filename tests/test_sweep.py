"""Sweeps: a grid of tiny runs through a process pool (and MPI's), a rerun that does nothing."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fastlenet.cli import main
from fastlenet.sweep import SweepError, read_grid, run_sweep

GRID = """
[base]
epochs = 1
limit_train = 600
batch_size = 100
val_size = 100
eval_every = 100
[grid]
optimizer = ["adam", "sgd"]
seed = [0, 1]
"""


def test_grid_file(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(GRID)
    base, points = read_grid(path)
    assert base["epochs"] == 1
    assert [name for name, _ in points] == ["optimizer-adam_seed-0", "optimizer-adam_seed-1",
                                            "optimizer-sgd_seed-0", "optimizer-sgd_seed-1"]
    for bad, message in [("[grid]\nlearning_rate = [1]", "unknown settings learning_rate"),
                         ("[base]\nepochs = 1", "an empty \\[grid\\]"),
                         ("[grid]\nseed = 3", "must be a non-empty list"),
                         ("[grid\n", "not a readable TOML grid"),
                         ("[grid]\nseed = [0, 1, 0]", "\\[grid\\] seed lists 0 twice")]:
        path.write_text(bad)
        with pytest.raises(SweepError, match=message):
            read_grid(path)


def test_sweep_runs_each_point_once(tmp_path, real_mnist):
    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    out = tmp_path / "sweep"
    log = []
    rows = run_sweep(grid, out, workers=2, data_dir=str(real_mnist.directory), log=log.append)
    assert log[0] == "4 points, 0 already finished, 4 to run on 2 workers" and len(log) == 5
    assert [r["point"] for r in rows] == [p.name for p in sorted(out.iterdir()) if p.is_dir()]
    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {"optimizer", "seed", "test_accuracy", "seconds_per_epoch"} <= set(table[0])
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    mtimes = {p: p.stat().st_mtime for p in out.glob("*/summary.json")}
    log.clear()
    again = run_sweep(grid, out, workers=2, data_dir=str(real_mnist.directory), log=log.append)
    assert log == ["4 points, 4 already finished, 0 to run on 2 workers"]
    assert {p: p.stat().st_mtime for p in out.glob("*/summary.json")} == mtimes
    assert again == rows


def test_sweep_on_an_mpi_pool(tmp_path, real_mnist):
    pytest.importorskip("mpi4py", reason="mpi4py not installed (pip install -e '.[mpi]')")
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if not mpiexec:
        pytest.skip("no mpiexec (pip install -e '.[mpi]' brings MPICH's)")
    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    proc = subprocess.Popen([mpiexec, "-n", "3", sys.executable, "-m", "mpi4py.futures", "-m", "fastlenet", "sweep",
                             str(grid), "--out", str(tmp_path / "sweep"), "--executor", "mpi", "--workers", "2",
                             "--data-dir", str(real_mnist.directory)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, err
    assert "4 points, 0 already finished, 4 to run on 2 workers" in out
    assert len(list((tmp_path / "sweep").glob("*/summary.json"))) == 4


def grid_file(tmp_path, text, name="g.toml"):
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_every_point_is_checked_before_any_trains(tmp_path, real_mnist):
    grid = grid_file(tmp_path, GRID.replace("seed = [0, 1]", "momentum = [0.0, 1.5]"))
    with pytest.raises(SweepError, match=r"g.toml: point optimizer-adam_momentum-1.5: --momentum must be >= 0.0 "
                                         r"and < 1.0, got 1.5"):
        run_sweep(grid, tmp_path / "sweep", data_dir=str(real_mnist.directory), log=lambda m: None)
    assert not (tmp_path / "sweep").exists()


def test_a_finished_point_is_reused_only_with_the_same_settings(tmp_path, real_mnist):
    one = "[base]\nepochs = 1\nlimit_train = 300\nbatch_size = 100\nval_size = 100\n[grid]\nseed = [0]\n"
    out, log = tmp_path / "sweep", []
    run_sweep(grid_file(tmp_path, one), out, workers=1, data_dir=str(real_mnist.directory), log=log.append)
    edited = grid_file(tmp_path, one.replace("limit_train = 300", "limit_train = 200"), "other/g.toml")
    with pytest.raises(SweepError, match=r"point seed-0: .*seed-0 holds a run of other settings \(limit_train: "
                                         r"recorded 300, now 200\); pass --overwrite"):
        run_sweep(edited, out, workers=1, data_dir=str(real_mnist.directory), log=log.append)
    log.clear()
    rows = run_sweep(edited, out, workers=1, data_dir=str(real_mnist.directory), log=log.append, overwrite=True)
    assert log[0] == "1 points, 0 already finished, 1 to run on 1 workers" and rows[0]["status"] == "done"
    assert json.loads((out / "seed-0" / "config.json").read_text())["config"]["limit_train"] == 200
    log.clear()
    run_sweep(edited, out, workers=1, data_dir=str(real_mnist.directory), threads=2, log=log.append)
    assert log == ["1 points, 1 already finished, 0 to run on 1 workers"]  # threads do not change what a point is


def test_a_failing_point_is_recorded_and_the_others_finish(tmp_path, real_mnist, capsys):
    # a validation set as large as MNIST's training set: only the data, loaded in the worker, can say
    grid = grid_file(tmp_path, GRID.replace("val_size = 100\n", "").replace('optimizer = ["adam", "sgd"]',
                                                                           "val_size = [100, 60000]"))
    code = main(["sweep", str(grid), "--out", str(tmp_path / "sweep"), "--workers", "2", "--data-dir",
                 str(real_mnist.directory)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ["fastlenet: error: 2 of 4 points failed (summary.csv has their errors)"]
    with open(tmp_path / "sweep" / "summary.csv") as f:
        table = {r["point"]: r for r in csv.DictReader(f)}
    assert len(table) == 4 and all(table[f"val_size-100_seed-{k}"]["status"] == "done" for k in (0, 1))
    assert float(table["val_size-100_seed-0"]["test_accuracy"]) > 0.2  # 6 steps: better than chance
    assert all(table[f"val_size-60000_seed-{k}"]["status"] == "failed" for k in (0, 1))
    assert "--val-size must be >= 0 and < 60000" in table["val_size-60000_seed-0"]["error"]


def test_workers_stop_with_a_killed_sweep_and_the_point_resumes(tmp_path, real_mnist):
    """SIGKILL to the sweep's process: its worker gets SIGTERM (PR_SET_PDEATHSIG), checkpoints
    and exits, instead of training on, orphaned."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    grid = grid_file(tmp_path, "[base]\nepochs = 30\nlimit_train = 3000\nbatch_size = 50\nval_size = 100\n"
                               "eval_every = 1000\nlr_schedule = \"constant\"\n[grid]\nseed = [0]\n")
    out = tmp_path / "sweep"
    sweep = subprocess.Popen([sys.executable, "-m", "fastlenet", "sweep", str(grid), "--out", str(out), "--workers",
                              "1", "--data-dir", str(real_mnist.directory)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    point = out / "seed-0"
    try:
        deadline = time.monotonic() + 120
        while not (point / "checkpoint.safetensors").exists():  # the worker is training
            assert time.monotonic() < deadline and sweep.poll() is None
            time.sleep(0.2)
        worker = int((point / ".lock").read_text())
    finally:
        sweep.kill()
        sweep.wait()
    deadline = time.monotonic() + 60
    while alive(worker):
        assert time.monotonic() < deadline, "the worker trained on after its sweep was killed"
        time.sleep(0.2)
    assert not (point / "summary.json").exists() and (point / "checkpoint.safetensors").exists()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"  # a zombie has exited
