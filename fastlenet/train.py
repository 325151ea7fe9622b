"""Training LeNet-5 on MNIST: the loop, its run directory and its checkpoints.

A run directory holds:
    config.json           resolved settings and the environment
    metrics.jsonl         one record per iteration (loss, time) and per evaluation
    checkpoint.safetensors  the state to resume from (every epoch), and checkpoint.json, a readable copy
    model.safetensors     the final weights
    summary.json          accuracies and speed
    loss.png  val_accuracy.png  confusion_matrix.png  misclassified.png
"""

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path

import numpy as np

from . import plots
from .data import check_pair, load_mnist, preprocess, shift_images, validation_split
from .distributed import GradientExchange, SingleProcess, check_replicas, world
from .env import environment, hold_freed_memory, set_threads
from .errors import FastLeNetError, WeightsError
from .evaluation import predict_proba, report
from .losses import SoftmaxCrossEntropy
from .models import LeNet5
from .optim import SGD, Adam
from .storage import WEIGHTS_NAME, load_tensors, save_model, save_tensors, write_json
from .workloads import train_step

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"


class ConfigError(FastLeNetError, ValueError):
    """Settings that cannot make a run."""


class TrainingStopped(FastLeNetError):
    """The run stopped before its end (a signal or a non-finite loss); a checkpoint says where."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class TrainConfig:
    """The spec's settings are the defaults: Adam, lr 1e-3, batch 256, 10 epochs, 1000 validation images."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.0
    seed: int = 0
    backend: str = "fast"
    dtype: str = "float32"
    threads: int | None = None
    blas_threads: int = 1
    data_dir: str | None = None
    out: str | None = None
    eval_every: int = 100
    limit_train: int | None = None
    val_size: int = 1000
    normalize: bool = False
    lr_schedule: str = "constant"
    shift: int = 0
    checkpoint_every: int | None = None
    quiet: bool = False

    def check(self):
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_every": self.eval_every}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"--optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.backend not in ("fast", "reference"):
            raise ConfigError(f"--backend must be fast or reference, got {self.backend!r}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"--dtype must be float32 or float64, got {self.dtype!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 <= self.shift <= 4:
            raise ConfigError(f"--shift must be between 0 and 4 pixels, got {self.shift}")
        if self.limit_train is not None and self.limit_train < 1:
            raise ConfigError(f"--limit-train must be >= 1, got {self.limit_train}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ConfigError(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")


LR_SCHEDULES = ("constant", "cosine")


def learning_rate(config, iteration, total):
    """The rate for step `iteration` (0-based) of `total`: --lr throughout, or cosine
    decay from --lr towards 0 over the run (a function of the step: resumes need no state)."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * iteration / total))
    return config.lr


def make_optimizer(config, params):
    if config.optimizer == "adam":
        return Adam(params, lr=config.lr)
    return SGD(params, lr=config.lr, momentum=config.momentum)


def prepare_run_dir(out, overwrite=False):
    """Creates the run directory; refuses one that already holds a run."""
    path = Path(out) if out else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise ConfigError(f"--out {path} already holds a run: pass --resume {path} to continue it, "
                              f"--overwrite to replace it, or choose another --out")
        for name in ("config.json", "metrics.jsonl", "summary.json", CHECKPOINT, CHECKPOINT_STATE, WEIGHTS_NAME):
            (path / name).unlink(missing_ok=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot write there ({e.strerror})") from None
    return path


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop stops at the end of the current step."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class Trainer:
    def __init__(self, config, run_dir, data=None, progress=None, comm=None):
        config.check()
        self.config, self.run_dir = config, Path(run_dir)
        self.comm = comm or SingleProcess()
        self.threads = set_threads(config.threads, config.blas_threads)
        hold_freed_memory()
        self.dtype = np.dtype(config.dtype)
        self.data = data if data is not None else load_mnist(config.data_dir, progress=progress)
        check_pair(self.data.train_images, self.data.train_labels, "training set")
        check_pair(self.data.test_images, self.data.test_labels, "test set")
        self.train_idx, self.val_idx = validation_split(len(self.data.train_images), config.val_size, config.seed)
        if config.limit_train:
            self.train_idx = self.train_idx[:config.limit_train]
        self.model = LeNet5(config.backend, self.dtype, seed=config.seed)
        self.optimizer = make_optimizer(config, self.model.params)
        self.exchange = GradientExchange(self.comm, self.model.params) if self.comm.size > 1 else None
        self.loss = SoftmaxCrossEntropy()
        self.rng = np.random.default_rng([config.seed, 0x5EED])  # data order only
        self.epoch, self.batch_in_epoch, self.iteration = 0, 0, 0
        self.epoch_rng_state = self.rng.bit_generator.state
        self.epoch_seconds = []
        self.progress = progress if self.comm.rank == 0 else None

    # -- state ------------------------------------------------------------------------------
    def save_checkpoint(self):
        """Weights, optimizer state, data-order RNG and position; atomic, so a kill
        mid-write leaves the previous checkpoint whole. Arrays go to safetensors,
        the rest to JSON; the JSON is written last and names the step it belongs to.
        Rank 0 alone writes (all ranks hold the same state)."""
        if self.comm.rank != 0:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt = self.optimizer.state_dict()
        scalars = {k: v for k, v in opt.items() if not isinstance(v, list) or not v or
                   not isinstance(v[0], np.ndarray)}
        for key, arrays in opt.items():
            if key not in scalars:
                tensors.update({f"optimizer.{key}.{i}": a for i, a in enumerate(arrays)})
        state = {"iteration": self.iteration, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                 "epoch_rng_state": self.epoch_rng_state, "optimizer": scalars,
                 "epoch_seconds": self.epoch_seconds, "config": asdict(self.config)}
        # One file holds everything (the state as JSON in the safetensors header), so one
        # atomic rename switches from the old checkpoint to the new; checkpoint.json is a
        # readable copy written after it, never read back.
        save_tensors(self.run_dir / CHECKPOINT, tensors, {"architecture": LeNet5.architecture,
                                                          "dtype": self.dtype.name, "state": json.dumps(state)})
        write_json(self.run_dir / CHECKPOINT_STATE, state)

    def load_checkpoint(self):
        path = self.run_dir / CHECKPOINT
        tensors, metadata = load_tensors(path)
        try:
            state = json.loads(metadata["state"])
        except (KeyError, ValueError) as e:
            raise WeightsError(f"{path}: not a fastlenet checkpoint (no training state: {e})") from None
        try:
            self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            opt = dict(state["optimizer"])
            for key in {k.split(".")[1] for k in tensors if k.startswith("optimizer.")}:
                count = sum(1 for k in tensors if k.startswith(f"optimizer.{key}."))
                opt[key] = [tensors[f"optimizer.{key}.{i}"] for i in range(count)]
            self.optimizer.load_state_dict(opt)
        except (KeyError, ValueError, TypeError) as e:
            raise WeightsError(f"{path}: checkpoint does not fit this run ({e})") from None
        self.iteration, self.epoch, self.batch_in_epoch = state["iteration"], state["epoch"], state["batch_in_epoch"]
        self.epoch_rng_state, self.epoch_seconds = state["epoch_rng_state"], state["epoch_seconds"]

    # -- the loop ---------------------------------------------------------------------------
    def batch(self, idx):
        return preprocess(self.data.train_images[idx], self.dtype, self.config.normalize), self.data.train_labels[idx]

    def evaluate(self, indices_or_images, labels=None):
        images = self.data.train_images[indices_or_images] if labels is None else indices_or_images
        labels = self.data.train_labels[indices_or_images] if labels is None else labels
        return predict_proba(self.model, images, normalize=self.config.normalize), labels

    def warm_up(self):
        """Compiles (or loads from Numba's on-disk cache) every kernel a step uses, on a
        throwaway model, so that the first timed step is a real one; returns seconds."""
        start = time.perf_counter()
        model, loss = LeNet5(self.config.backend, self.dtype), SoftmaxCrossEntropy()
        x, y = self.batch(self.train_idx[:2])
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        return time.perf_counter() - start

    def time_reference_steps(self, steps=3):
        """Seconds per step of the reference (loop) backend on this run's first batches,
        on a throwaway model and optimizer: the run itself is not touched."""
        order = np.random.default_rng([self.config.seed, 0x5EED]).permutation(self.train_idx)
        model = LeNet5("reference", self.dtype, seed=self.config.seed)
        optimizer, loss, times = make_optimizer(self.config, model.params), SoftmaxCrossEntropy(), []
        for k in range(steps):
            x, y = self.batch(order[k * self.config.batch_size:(k + 1) * self.config.batch_size])
            start = time.perf_counter()
            train_step(model, optimizer, loss, x, y)
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    def run(self, metrics_file, stop):
        cfg = self.config
        batches_per_epoch = math.ceil(len(self.train_idx) / cfg.batch_size)
        while self.epoch < cfg.epochs:
            self.rng.bit_generator.state = self.epoch_rng_state
            order = self.rng.permutation(self.train_idx)
            bar = self.progress(total=batches_per_epoch, initial=self.batch_in_epoch,
                                desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="batch") if self.progress else None
            epoch_start, seen, correct, train_time = time.perf_counter(), 0, 0, 0.0
            while self.batch_in_epoch < batches_per_epoch:
                t0 = time.perf_counter()
                idx = order[self.batch_in_epoch * cfg.batch_size:(self.batch_in_epoch + 1) * cfg.batch_size]
                self.optimizer.lr = learning_rate(cfg, self.iteration, cfg.epochs * batches_per_epoch)
                loss, batch_correct, stopping = self.step(idx, stop)
                if not math.isfinite(loss):
                    raise TrainingStopped(f"loss is {loss} at iteration {self.iteration + 1} (epoch {self.epoch + 1}); "
                                          f"the last good checkpoint is kept in {self.run_dir}. Try a smaller --lr.")
                self.optimizer.step()
                step_s = time.perf_counter() - t0
                train_time += step_s
                self.iteration += 1
                self.batch_in_epoch += 1
                seen += len(idx)
                correct += batch_correct
                record(metrics_file, {"type": "iter", "iteration": self.iteration, "epoch": self.epoch + 1,
                                      "loss": loss, "lr": self.optimizer.lr, "time_s": step_s})
                if bar:
                    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{correct / seen:.2%}", img_s=f"{seen / train_time:,.0f}",
                                    refresh=False)
                    bar.update()
                end_of_epoch = self.batch_in_epoch == batches_per_epoch
                if self.iteration % cfg.eval_every == 0 and not end_of_epoch:
                    self.record_validation(metrics_file)
                if cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0 and not end_of_epoch:
                    self.save_checkpoint()
                # ranks stop together, on the flag they exchanged; a single process as soon as it is asked
                if stopping if self.exchange else stop.signal:
                    self.save_checkpoint()
                    raise TrainingStopped(f"stopped by {stop.signal or 'another rank'} at iteration {self.iteration}; "
                                          f"checkpoint saved. "
                                          f"Resume with: fastlenet train --resume {self.run_dir}", exit_code=130)
            if bar:
                bar.close()
            self.epoch_seconds.append(train_time)
            record(metrics_file, {"type": "epoch", "iteration": self.iteration, "epoch": self.epoch + 1,
                                  "train_seconds": train_time, "wall_seconds": time.perf_counter() - epoch_start})
            self.record_validation(metrics_file)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self.epoch_rng_state = self.rng.bit_generator.state
            self.save_checkpoint()

    def step(self, idx, stop):
        """Forward and backward of one global batch (this rank's slice of it, with
        several ranks). Returns the batch's mean loss, its number of right answers and,
        with several ranks, whether any of them was asked to stop."""
        def my_share(a):
            return a if self.exchange is None else np.array_split(a, self.comm.size)[self.comm.rank]

        mine = my_share(idx)
        if self.config.shift:  # drawn for the global batch from (seed, step): the same on every rank, on resume
            s = self.config.shift
            rng = np.random.default_rng([self.config.seed, 0x5817F, self.iteration])
            shifts = my_share(rng.integers(-s, s + 1, (len(idx), 2)))
        if len(mine):
            x, y = self.batch(mine)
            if self.config.shift:
                x = shift_images(x, shifts)
            logits = self.model.forward(x)
            loss = self.loss.forward(logits, y)
            self.model.backward(self.loss.backward())
            correct = int((logits.argmax(axis=1) == y).sum())
        else:  # a last batch smaller than the number of ranks
            loss, correct = 0.0, 0
            for p in self.model.params:
                p.grad[...] = 0
        if self.exchange is None:
            return loss, correct, False
        # the global mean gradient is the sum of each rank's mean weighted by its share
        loss_sum, correct, stops = self.exchange(len(mine) / len(idx), loss * len(mine), correct, bool(stop.signal))
        return loss_sum / len(idx), int(round(correct)), stops > 0

    def record_validation(self, metrics_file):
        if not len(self.val_idx) or self.comm.rank != 0:
            return
        probs, labels = self.evaluate(self.val_idx)
        accuracy = float((probs.argmax(axis=1) == labels).mean())
        record(metrics_file, {"type": "eval", "iteration": self.iteration, "epoch": self.epoch + 1,
                              "val_accuracy": accuracy})


def smoothed_crossing(losses, threshold=0.1, window=20):
    """First iteration (1-based) at which the mean loss of the last `window` iterations is <= threshold."""
    if len(losses) < window:
        return None
    means = np.convolve(losses, np.ones(window) / window, mode="valid")
    hits = np.flatnonzero(means <= threshold)
    return int(hits[0] + window) if len(hits) else None


def train(config, resume=None, overwrite=False, data=None, progress=None, log=print, compare_reference=False,
          comm=None):
    """Runs (or resumes) a training run and returns its summary (None on ranks other than 0).

    Raises TrainingStopped after a signal or a non-finite loss, with a checkpoint on disk.
    Under MPI (comm, default: detected) the ranks train one model together; rank 0
    alone writes the run directory.
    """
    comm = comm or world()
    if resume:
        run_dir = Path(resume)
        try:
            stored = json.loads((run_dir / "config.json").read_text())["config"]
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"--resume {run_dir}: not a fastlenet run directory ({e})") from None
        if (run_dir / "summary.json").exists():
            raise ConfigError(f"--resume {run_dir}: that run has already finished")
        if not (run_dir / CHECKPOINT).exists():
            raise ConfigError(f"--resume {run_dir}: no checkpoint yet (the run stopped before its first one); "
                              f"start it again with --overwrite")
        names = {f.name for f in fields(TrainConfig)}
        settings = {k: v for k, v in stored.items() if k in names}
        settings.update(quiet=config.quiet, data_dir=config.data_dir or stored.get("data_dir"))
        config = TrainConfig(**settings)
    else:
        config.check()
        run_dir = Path(comm.bcast(str(prepare_run_dir(config.out, overwrite)) if comm.rank == 0 else None))
        config.out = str(run_dir)
    started = time.perf_counter()
    trainer = Trainer(config, run_dir, data=data, progress=None if config.quiet else progress, comm=comm)
    compile_s = trainer.warm_up()
    reference_step_s = trainer.time_reference_steps() if compare_reference else None
    lead = comm.rank == 0
    if resume:
        trainer.load_checkpoint()
        if lead:
            kept = read_metrics(run_dir / "metrics.jsonl", upto_iteration=trainer.iteration)
            with open(run_dir / "metrics.jsonl", "w") as f:
                f.writelines(json.dumps(e) + "\n" for e in kept)
            log(f"resuming {run_dir} at iteration {trainer.iteration} (epoch {trainer.epoch + 1})")
    elif lead:
        write_json(run_dir / "config.json", {
            "config": asdict(config), "threads": trainer.threads, "ranks": comm.size, "environment": environment(),
            "data": {"directory": str(trainer.data.directory), "train_images": len(trainer.train_idx),
                     "validation_indices": trainer.val_idx.tolist()},
        })
    with open(run_dir / "metrics.jsonl" if lead else os.devnull, "a", buffering=1) as metrics_file, \
            StopFlag() as stop:
        trainer.run(metrics_file, stop)
    check_replicas(comm, trainer.model.params)
    if not lead:
        return None

    summary = finish(trainer, compile_s)
    summary["ranks"] = comm.size
    if trainer.exchange and trainer.exchange.calls:
        summary["allreduce_s_per_step"] = trainer.exchange.seconds / trainer.exchange.calls
    if reference_step_s is not None:
        fast_step_s = float(np.median([m["time_s"] for m in read_metrics(run_dir / "metrics.jsonl")
                                       if m["type"] == "iter"]))
        summary.update(reference_step_s=reference_step_s, fast_step_s=fast_step_s,
                       speedup_vs_reference=reference_step_s / fast_step_s)
    summary["total_s"] = time.perf_counter() - started
    write_json(run_dir / "summary.json", summary)
    return summary


def finish(trainer, compile_s):
    """Final evaluation, weights and figures of a finished run."""
    run_dir, data = trainer.run_dir, trainer.data
    save_model(run_dir / WEIGHTS_NAME, trainer.model)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    iters = [m for m in metrics if m["type"] == "iter"]
    evals = [m for m in metrics if m["type"] == "eval"]
    losses = np.array([m["loss"] for m in iters])
    test_probs = predict_proba(trainer.model, data.test_images, normalize=trainer.config.normalize)
    test = report(test_probs, data.test_labels)
    train_probs, train_labels = trainer.evaluate(trainer.train_idx)
    val_accuracy = evals[-1]["val_accuracy"] if evals else None
    plots.loss_curve(np.array([m["iteration"] for m in iters]), losses, run_dir / "loss.png")
    plots.accuracy_curve([m["iteration"] for m in evals], [m["val_accuracy"] for m in evals], run_dir / "val_accuracy.png")
    plots.confusion(test["confusion_matrix"], run_dir / "confusion_matrix.png")
    plots.misclassified(data.test_images, data.test_labels, test_probs, run_dir / "misclassified.png")
    train_seconds = float(sum(trainer.epoch_seconds))
    return {
        "test_accuracy": test["accuracy"],
        "validation_accuracy": val_accuracy,
        "train_accuracy": float((train_probs.argmax(axis=1) == train_labels).mean()),
        "per_class_test_accuracy": test["per_class_accuracy"],
        "final_loss": float(losses[-20:].mean()) if len(losses) else None,
        "iterations_to_loss_0.1": smoothed_crossing(losses),
        "iterations": trainer.iteration,
        "epochs": trainer.epoch,
        "seconds_per_epoch": train_seconds / max(len(trainer.epoch_seconds), 1),
        "epoch_seconds": trainer.epoch_seconds,
        "train_images_per_s": len(trainer.train_idx) * trainer.epoch / train_seconds if train_seconds else None,
        "numba_compile_s": compile_s,
        "backend": trainer.config.backend,
        "threads": trainer.threads,
    }


def record(metrics_file, entry):
    metrics_file.write(json.dumps(entry) + "\n")


def read_metrics(path, upto_iteration=None):
    """Records of metrics.jsonl (up to an iteration, for a resumed run)."""
    entries = []
    with open(path) as f:
        for line in f:
            if line.strip():
                entry = json.loads(line)
                if upto_iteration is None or entry["iteration"] <= upto_iteration:
                    entries.append(entry)
    return entries
