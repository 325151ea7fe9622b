"""`fastlenet sweep GRID.toml`: many training runs through concurrent.futures.

ProcessPoolExecutor on one machine; mpi4py's MPIPoolExecutor on a cluster
(`mpiexec -n K python -m mpi4py.futures -m fastlenet sweep GRID.toml --executor mpi`).
Each point trains into its own run directory as soon as a worker is free. A point
is its settings: one whose folder holds a finished run of the same settings is
reused, a checkpointed one resumes, and a folder holding a run of other settings
is refused (or, with --overwrite, run again). Every point's settings are checked
before the first one trains; a failing point is recorded in summary.csv and the
others go on; the workers of a killed sweep checkpoint and stop. The grid file:

    [base]                   # TrainConfig settings shared by every point
    epochs = 10
    [grid]                   # one list per setting; the sweep is their product
    optimizer = ["adam", "sgd"]
    seed = [0, 1, 2]
"""

import csv
import ctypes
import ctypes.util
import itertools
import json
import multiprocessing
import os
import signal
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import fields
from pathlib import Path

from .contention import usable_cpus
from .distributed import SingleProcess
from .env import hold_freed_memory
from .errors import FastLeNetError
from .settings import SettingsError
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
        twice = [v for i, v in enumerate(values) if v in values[:i]]
        if twice:
            raise SweepError(f"{path}: [grid] {key} lists {twice[0]!r} twice: each point must be run once")
    points = []
    for combo in itertools.product(*grid.values()):
        settings = dict(zip(grid, combo))
        name = "_".join(f"{k}-{v}" for k, v in settings.items())
        points.append((name, settings))
    return base, points


# settings that say where and how fast a point runs, not what it computes
NOT_IDENTITY = ("out", "quiet", "data_dir", "threads", "checkpoint_every")


def plan(grid_path, base, points, out, data_dir, threads, overwrite):
    """Every point's checked settings and what to do with it: "reuse" (finished with the
    same settings), "resume", "run", or "rerun" (--overwrite over other settings), all
    decided before anything trains. Raises SweepError naming the first point that cannot."""
    todo = []
    for name, settings in points:
        where = f"{grid_path}: point {name}"
        try:
            config = TrainConfig.from_dict({"threads": threads, **base, **settings}, where)
            config.out, config.quiet, config.data_dir = str(out / name), True, data_dir
            config.check()
        except SettingsError as e:
            raise SweepError(e if str(e).startswith(where) else f"{where}: {e}") from None
        todo.append((name, config, action(where, out / name, config, overwrite)))
    return todo


def action(where, folder, config, overwrite):
    recorded = folder / "config.json"
    if not recorded.exists():
        return "run"
    try:
        old = json.loads(recorded.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        old = None
    new = config.to_dict()
    differ = None if old is None else sorted(k for k in set(new) | set(old)
                                             if k not in NOT_IDENTITY and old.get(k) != new.get(k))
    if differ == []:
        return "reuse" if (folder / "summary.json").exists() else "resume" if (folder / CHECKPOINT).exists() else "run"
    if overwrite:
        return "rerun"
    said = "its config.json is unreadable" if differ is None else (
        f"{differ[0]}: recorded {old.get(differ[0])!r}, now {new.get(differ[0])!r}"
        f"{f' and {len(differ) - 1} more' if len(differ) > 1 else ''}")
    raise SweepError(f"{where}: {folder} holds a run of other settings ({said}); pass --overwrite to run it "
                     f"again, or choose another --out")


def run_point(settings, resume):
    """Trains one point (resuming it from its checkpoint when asked) and returns its summary.
    The entry point of a pool worker, so it sets the worker's allocator as the CLI does."""
    hold_freed_memory()
    config = TrainConfig.from_dict(settings, "sweep point")
    try:
        # one process per point, even inside an MPI job (where train() would otherwise join COMM_WORLD)
        return train(config, resume=config.out if resume else None, overwrite=not resume, log=lambda *a: None,
                     comm=SingleProcess())
    finally:
        if PARENT is not None and os.getppid() != PARENT:  # orphaned: nobody will send another point
            os._exit(1)


def make_executor(kind, workers):
    if kind == "mpi":
        try:
            from mpi4py.futures import MPIPoolExecutor
        except ImportError:
            raise SweepError("--executor mpi needs mpi4py (pip install -e '.[mpi]')") from None
        return MPIPoolExecutor(max_workers=workers)
    # spawn, not fork: a forked child of a process whose Numba (OpenMP) pool has run can hang or crash
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=stop_with_parent, initargs=(os.getpid(),))


def stop_with_parent(parent):
    """A pool worker gets SIGTERM when the sweep's process dies, however it dies (Linux's
    PR_SET_PDEATHSIG): its run then checkpoints and stops, instead of training on, orphaned,
    into a folder the next sweep will want, and the worker exits (run_point) rather than wait
    for work on a queue it holds open itself. Elsewhere a no-op."""
    global PARENT
    PARENT = parent
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


PR_SET_PDEATHSIG = 1
PARENT = None  # in a pool worker: the sweep's process


def shared_threads(threads, workers, log):
    """Points' threads such that the workers' points fit on this machine's cores together
    (workers spinning on a core that another worker needs slow both: README, Contention)."""
    cpus = len(usable_cpus())
    fair = max(1, cpus // workers)
    if threads > fair:
        log(f"{workers} workers x {threads} threads would ask for more than the {cpus} cores here: "
            f"{fair} thread{'s' * (fair > 1)} per point")
    return min(threads, fair)


def run_sweep(grid_path, out=None, workers=2, executor="process", data_dir=None, threads=1, log=print,
              overwrite=False):
    """Runs every unfinished point of the grid; writes summary.csv (every point, with its
    status and error) and sweep.png. Returns the rows; a failed point does not stop the others."""
    base, points = read_grid(grid_path)
    out = Path(out or Path("sweeps") / Path(grid_path).stem)
    threads = shared_threads(threads, workers, log) if executor == "process" else threads
    todo = plan(grid_path, base, points, out, data_dir, threads, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    pending = [(name, config, what) for name, config, what in todo if what != "reuse"]
    log(f"{len(points)} points, {len(points) - len(pending)} already finished, {len(pending)} to run on "
        f"{workers} workers")
    errors = {}
    if pending:
        with make_executor(executor, workers) as pool:
            futures = {pool.submit(run_point, config.to_dict(), what == "resume"): name
                       for name, config, what in pending}
            for future in as_completed(futures):
                name = futures[future]
                try:
                    summary = future.result()
                except Exception as e:  # noqa: BLE001 - a point's failure is recorded, the others go on
                    errors[name] = " ".join(str(e).split()) or type(e).__name__
                    log(f"failed {name}: {errors[name]}")
                    continue
                log(f"done {name}: test accuracy {summary['test_accuracy']:.2%}, "
                    f"{summary['seconds_per_epoch']:.2f} s/epoch")
    rows = [row(out, name, settings, errors.get(name)) for name, settings in points]
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    done = [r for r in rows if r["status"] == "done"]
    if done:
        from . import plots
        plots.sweep(done, out / "sweep.png")
    return rows


def row(out, name, settings, error):
    if error is not None:
        return {"point": name, **settings, "status": "failed", "error": error, **dict.fromkeys(SUMMARY_COLUMNS)}
    summary = json.loads((out / name / "summary.json").read_text())
    return {"point": name, **settings, "status": "done", "error": "", **{k: summary.get(k) for k in SUMMARY_COLUMNS}}
