"""`fastlenet sweep GRID.toml`: many training runs through concurrent.futures.

ProcessPoolExecutor on one machine; mpi4py's MPIPoolExecutor on a cluster
(`mpiexec -n K python -m mpi4py.futures -m fastlenet sweep GRID.toml --executor mpi`).
Each point trains into its own run directory as soon as a worker is free;
a point whose summary.json exists is finished and skipped on a rerun, and a
point with a checkpoint resumes, so a killed sweep loses only the points in
flight. The grid file:

    [base]                   # TrainConfig settings shared by every point
    epochs = 10
    [grid]                   # one list per setting; the sweep is their product
    optimizer = ["adam", "sgd"]
    seed = [0, 1, 2]
"""

import csv
import itertools
import json
import multiprocessing
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import fields
from pathlib import Path

from .distributed import SingleProcess
from .env import hold_freed_memory
from .errors import FastLeNetError
from .train import CHECKPOINT, TrainConfig, train

SUMMARY_COLUMNS = ["test_accuracy", "test_accuracy_without_ema", "validation_accuracy", "train_accuracy",
                   "seconds_per_epoch", "train_images_per_s", "iterations_to_loss_0.1", "final_loss"]


class SweepError(FastLeNetError, ValueError):
    """A grid file that cannot make a sweep."""


def read_grid(path):
    """GRID.toml -> (base settings, [(point name, settings)])."""
    try:
        spec = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise SweepError(f"{path}: not a readable TOML grid ({e})") from None
    base, grid = spec.get("base", {}), spec.get("grid", {})
    known = {f.name for f in fields(TrainConfig)} - {"out", "quiet"}
    unknown = sorted((set(base) | set(grid)) - known)
    if unknown or not grid:
        raise SweepError(f"{path}: {'unknown settings ' + ', '.join(unknown) if unknown else 'an empty [grid]'}; "
                         f"settings are: {', '.join(sorted(known))}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: [grid] {key} must be a non-empty list, got {values!r}")
    points = []
    for combo in itertools.product(*grid.values()):
        settings = dict(zip(grid, combo))
        name = "_".join(f"{k}-{v}" for k, v in settings.items())
        points.append((name, settings))
    return base, points


def run_point(settings, out, data_dir):
    """Trains one point (resuming it when a checkpoint is there) and returns its summary.
    The entry point of a pool worker, so it sets the worker's allocator as the CLI does."""
    hold_freed_memory()
    config = TrainConfig(**{**settings, "out": str(out), "quiet": True, "data_dir": data_dir})
    resume = out if (Path(out) / CHECKPOINT).exists() else None
    # one process per point, even inside an MPI job (where train() would otherwise join COMM_WORLD)
    return train(config, resume=resume, overwrite=resume is None, log=lambda *a: None, comm=SingleProcess())


def make_executor(kind, workers):
    if kind == "mpi":
        try:
            from mpi4py.futures import MPIPoolExecutor
        except ImportError:
            raise SweepError("--executor mpi needs mpi4py (pip install -e '.[mpi]')") from None
        return MPIPoolExecutor(max_workers=workers)
    # spawn, not fork: a forked child of a process whose Numba (OpenMP) pool has run can hang or crash
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def run_sweep(grid_path, out=None, workers=2, executor="process", data_dir=None, threads=1, log=print):
    """Runs every unfinished point of the grid; writes summary.csv and sweep.png. Returns the rows."""
    base, points = read_grid(grid_path)
    out = Path(out or Path("sweeps") / Path(grid_path).stem)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(name, s) for name, s in points if not (out / name / "summary.json").exists()]
    log(f"{len(points)} points, {len(points) - len(todo)} already finished, {len(todo)} to run on {workers} workers")
    if todo:
        with make_executor(executor, workers) as pool:
            futures = {pool.submit(run_point, {"threads": threads, **base, **s}, out / name, data_dir): name
                       for name, s in todo}
            for future in as_completed(futures):
                summary = future.result()
                log(f"done {futures[future]}: test accuracy {summary['test_accuracy']:.2%}, "
                    f"{summary['seconds_per_epoch']:.2f} s/epoch")
    rows = []
    for name, settings in points:
        summary = json.loads((out / name / "summary.json").read_text())
        rows.append({"point": name, **settings, **{k: summary.get(k) for k in SUMMARY_COLUMNS}})
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    from . import plots
    plots.sweep(rows, out / "sweep.png")
    return rows
