"""A run directory: held by one process, created or replaced whole, and its files.

    config.json             resolved settings and the environment
    metrics.jsonl           one record per iteration (loss, time) and per evaluation
    checkpoint.safetensors  the state to resume from (every epoch); checkpoint.json, a readable copy
    model.safetensors       the final weights, with the preprocessing they expect
    summary.json            accuracies and speed
    *.png                   the figures (see report.py)

The trainer asks this module for every file it reads or writes; this module never
imports the trainer.
"""

import fcntl
import json
import os
import time
from datetime import datetime
from pathlib import Path

from .errors import WeightsError
from .settings import SettingsError
from .storage import (WEIGHTS_NAME, atomic_write, json_text, load_tensors, remove_stale_temporaries, save_tensors,
                      write_error, write_json)

CONFIG, METRICS, SUMMARY = "config.json", "metrics.jsonl", "summary.json"
CHECKPOINT, CHECKPOINT_STATE = "checkpoint.safetensors", "checkpoint.json"
FIGURES = ("loss.png", "val_accuracy.png", "confusion_matrix.png", "misclassified.png")
RUN_FILES = (CONFIG, METRICS, SUMMARY, CHECKPOINT, CHECKPOINT_STATE, WEIGHTS_NAME) + FIGURES
LOCK = ".lock"


class RunDirError(SettingsError):
    """A run directory (--out, --resume) that cannot be used as asked."""


class RunDir:
    """An open run directory, locked (flock on .lock) for as long as this object lives:
    the OS releases the lock when the process ends, however it ends."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = None

    # -- holding it ---------------------------------------------------------------------------
    @classmethod
    def create(cls, out, overwrite=False):
        """A new run directory: `out`, or a fresh runs/<timestamp>[-K]. An existing run in
        `out` is refused, or with overwrite replaced whole: its files go only once this
        process holds the directory (call it when the settings and the data are known good)."""
        if out is None:
            return cls._fresh(Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
        run = cls(out)
        if run.path.exists() and not run.path.is_dir():
            raise RunDirError(f"--out {run.path} exists and is not a directory")
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"--out {run.path}: cannot write there ({e.strerror})") from None
        run.hold()
        present = sorted(p.name for p in run.path.iterdir() if p.name != LOCK)
        if present and not overwrite:
            raise run.refusal(f"--out {run.path} already holds a run: pass --resume {run.path} to continue it, "
                              f"--overwrite to replace it, or choose another --out")
        foreign = [name for name in present if name not in RUN_FILES and not name.startswith(".")]
        if foreign:
            raise run.refusal(f"--out {run.path}: --overwrite replaces only a run, and this folder also holds "
                              f"{', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}")
        for name in present:
            if name in RUN_FILES:
                (run.path / name).unlink()
        return run

    @classmethod
    def _fresh(cls, base):
        """base, or base-2, base-3 ...: mkdir is atomic, so two runs started in the same
        second get different folders."""
        base.parent.mkdir(parents=True, exist_ok=True)
        for k in range(1, 1000):
            path = base if k == 1 else base.with_name(f"{base.name}-{k}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            run = cls(path)
            run.hold()
            return run
        raise RunDirError(f"{base}: 999 runs already started in this second")

    @classmethod
    def open(cls, path):
        """An existing, unfinished run to resume."""
        run = cls(path)
        if not (run.path / CONFIG).is_file():
            raise RunDirError(f"--resume {run.path}: not a fastlenet run directory (no {CONFIG})")
        run.hold()
        if (run.path / SUMMARY).exists():
            raise run.refusal(f"--resume {run.path}: that run has already finished")
        if not (run.path / CHECKPOINT).exists():
            raise run.refusal(f"--resume {run.path}: no checkpoint yet (the run stopped before its first one); "
                              f"start it again with --overwrite")
        return run

    def hold(self):
        """Takes the directory's lock, or says which process has it."""
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot write there ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(f"{self.path} is in use by another fastlenet process (PID {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock = fd
        remove_stale_temporaries(self.path, RUN_FILES)

    def refusal(self, message):
        """Lets the directory go and returns the error to raise."""
        self.release()
        return RunDirError(message)

    def release(self):
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # -- its files -------------------------------------------------------------------------------
    def write_config(self, record):
        write_json(self.path / CONFIG, record)

    def read_config(self):
        try:
            return json.loads((self.path / CONFIG).read_text())
        except (OSError, ValueError) as e:
            raise RunDirError(f"{self.path / CONFIG}: not readable ({e})") from None

    def write_summary(self, summary):
        write_json(self.path / SUMMARY, summary)

    def metrics(self, upto_iteration=None):
        """The records of metrics.jsonl, up to an iteration; a torn last line (a crash or a
        full disk mid-write) is dropped, a torn line elsewhere is an error."""
        return read_metrics(self.path / METRICS, upto_iteration)

    def open_metrics(self, rank0=True, upto_iteration=None):
        """The metrics file to append to. On resume (upto_iteration) it is first rewritten
        with the records up to the checkpoint's step, so a resumed run's records equal an
        uninterrupted run's."""
        if not rank0:
            return MetricsFile(None)
        if upto_iteration is not None:
            kept = self.metrics(upto_iteration)
            atomic_write(self.path / METRICS, "".join(json_text(e) + "\n" for e in kept))
        return MetricsFile(self.path / METRICS)

    def save_checkpoint(self, tensors, state, metadata):
        """One file holds everything (the state as JSON in the safetensors header), so one
        atomic rename switches from the old checkpoint to the new; checkpoint.json is a
        readable copy written after it, never read back."""
        save_tensors(self.path / CHECKPOINT, tensors, {**metadata, "state": json_text(state)})
        write_json(self.path / CHECKPOINT_STATE, state)

    def load_checkpoint(self):
        """-> (tensors, state)."""
        path = self.path / CHECKPOINT
        tensors, metadata = load_tensors(path)
        try:
            return tensors, json.loads(metadata["state"])
        except (KeyError, ValueError) as e:
            raise WeightsError(f"{path}: not a fastlenet checkpoint (no training state: {e})") from None


class MetricsFile:
    """Appends JSON records, one a line; an OSError (a full disk) names the file.

    A step's record waits in memory and goes out with the others of up to FLUSH_S:
    encoded and written right after a step, whose kernels have just emptied the
    caches, each cost ~80 us, ten times what it costs in a batch. Any other record
    (validation, epoch, threads) writes what waits, as does `flush`, which the
    trainer calls before each checkpoint: a resume keeps the records up to its
    checkpoint, and those are always on disk by then."""

    FLUSH_S = 1.0

    def __init__(self, path):
        self.path = path
        self._file = None if path is None else open(path, "a")
        self._waiting, self._written_at = [], time.monotonic()

    def __call__(self, entry):
        if self._file is None:
            return
        self._waiting.append(entry)
        if entry["type"] != "iter" or time.monotonic() - self._written_at >= self.FLUSH_S:
            self.flush()

    def flush(self):
        if self._file is None:
            return
        waiting, self._waiting, self._written_at = self._waiting, [], time.monotonic()
        try:
            self._file.write("".join(json_text(e) + "\n" for e in waiting))
            self._file.flush()
        except OSError as e:
            raise write_error(e, self.path) from None

    def close(self):
        if self._file is not None:
            self.flush()
            try:
                self._file.close()
            except OSError as e:
                raise write_error(e, self.path) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(path, upto_iteration=None):
    """Records of a metrics.jsonl (up to an iteration, for a resumed run)."""
    entries = []
    with open(path) as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            if number == len(lines):  # the last line, with no newline: torn mid-write
                break
            raise RunDirError(f"{path}: line {number} is not a JSON record") from None
        if upto_iteration is None or entry["iteration"] <= upto_iteration:
            entries.append(entry)
    return entries
