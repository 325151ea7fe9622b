"""Sweeps: a grid of tiny runs through a process pool (and MPI's), a rerun that does nothing."""

import csv
import os
import shutil
import signal
import subprocess
import sys

import pytest

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
                         ("[grid\n", "not a readable TOML grid")]:
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
