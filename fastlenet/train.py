"""Training LeNet-5 on MNIST: the loop (batches, schedule, evaluation cadence,
signals, the data-parallel exchange) and `train`, which sets a run up around it.

Settings live in settings.py, the run directory's files in rundir.py, the final
evaluation and figures in report.py.
"""

import math
import os
import signal
import time

import numpy as np

from .averaging import WeightAverage
from .compile_ahead import compile_ahead
from .contention import CoreSharing
from .augment import distort, distorted_epochs, draws
from .data import check_pair, load_mnist, validation_split
from .distributed import GradientExchange, SingleProcess, check_replicas, world
from .env import environment, set_threads
from .errors import FastLeNetError, WeightsError
from .evaluation import CHUNK, predict_proba
from .losses import SoftmaxCrossEntropy
from .models import LeNet5, forward_backward
from .optim import make_optimizer
from .report import finish, smoothed_crossing  # noqa: F401 (smoothed_crossing: its old import path)
from .rundir import CHECKPOINT, CHECKPOINT_STATE, RunDir, read_metrics  # noqa: F401 (old import paths)
from .schedules import LR_SCHEDULES, learning_rate  # noqa: F401 (old import paths)
from .settings import SettingsError, TrainConfig, cores, resumed
from .storage import model_metadata
from .workloads import gathered, median_step_seconds

ConfigError = SettingsError  # its name before settings.py


class TrainingStopped(FastLeNetError):
    """The run stopped before its end (a signal or a non-finite loss)."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


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
    """The model, its optimizer and the position in the run; `run` is the loop."""

    def __init__(self, config, run, data, train_idx, val_idx, threads, comm, progress=None):
        self.config, self.run_dir, self.data, self.comm, self.threads = config, run, data, comm, threads
        self.train_idx, self.val_idx = train_idx, val_idx
        self.dtype = np.dtype(config.dtype)
        self.model = new_model(config, config.seed)
        self.optimizer = make_optimizer(config.optimizer, self.model.params, config.lr, config.momentum)
        self.exchange = GradientExchange(comm, self.model.params) if comm.size > 1 else None
        self.average = WeightAverage(self.model.params, config.ema) if config.ema else None
        self.averaged = new_model(config, config.seed) if config.ema else None
        self.loss = SoftmaxCrossEntropy()
        self.rng = data_order_rng(config.seed)
        self.epoch, self.batch_in_epoch, self.iteration = 0, 0, 0
        self.epoch_rng_state = self.rng.bit_generator.state
        self.epoch_seconds, self.checkpoint_iteration = [], None
        # per epoch: the steps' compute (forward, backward, optimizer) and everything the epoch took
        self.epoch_compute_seconds, self.epoch_wall_seconds, self.compute_s = [], [], 0.0
        self.progress = progress if comm.rank == 0 else None
        self.sharing = None  # run_in's CoreSharing, when the threads are left to fastlenet
        self.batches_per_epoch = math.ceil(len(train_idx) / config.batch_size)

    # -- state ------------------------------------------------------------------------------
    POSITION = ("iteration", "epoch", "batch_in_epoch", "epoch_rng_state", "epoch_seconds")
    TIMINGS = ("epoch_compute_seconds", "epoch_wall_seconds")  # checkpointed too; absent from older checkpoints

    def stateful(self):
        """The checkpoint's parts besides the weights: prefix -> object with buffers and a state_dict."""
        return {"optimizer": self.optimizer, **({"ema": self.average} if self.average else {})}

    def save_checkpoint(self):
        """Weights, optimizer (and average) state, data-order RNG and position (rank 0
        writes: all ranks hold the same state)."""
        self.checkpoint_iteration = self.iteration
        if self.comm.rank != 0:
            return
        tensors, state = pack_state(self.model, self.stateful())
        state.update({k: getattr(self, k) for k in self.POSITION + self.TIMINGS}, config=self.config.to_dict())
        self.run_dir.save_checkpoint(tensors, state, model_metadata(self.model))

    def checkpoint(self, metrics):
        """A checkpoint, the records up to it on disk first: a resume keeps exactly those."""
        metrics.flush()
        self.save_checkpoint()

    def load_checkpoint(self):
        tensors, state = self.run_dir.load_checkpoint()
        try:
            unpack_state(tensors, state, self.model, self.stateful())
            for k in self.POSITION:
                setattr(self, k, state[k])
            for k in self.TIMINGS:
                setattr(self, k, state.get(k, []))
        except (KeyError, ValueError, TypeError) as e:
            raise WeightsError(f"{self.run_dir.path / CHECKPOINT}: checkpoint does not fit this run ({e})") from None
        self.checkpoint_iteration = self.iteration

    def evaluated_model(self):
        """The model validation, the test and the saved weights see: the weights, or with
        --ema their average (written into a second model, so training is not touched)."""
        if not self.average:
            return self.model
        self.average.copy_to(self.averaged)
        return self.averaged

    # -- the loop ---------------------------------------------------------------------------
    def batch(self, idx, shifts=None):
        """Training images `idx` as the model takes them, and their labels."""
        return gathered(self.data.train_images, idx, self.dtype, self.config.normalize, shifts), \
            self.data.train_labels[idx]

    def inputs(self, idx, iteration, distorted):
        """This rank's share of global batch `idx` of step `iteration`, distorted if asked:
        shifts in the batch's own pass, rotations and scalings resampled after it."""
        mine = self.my_share(idx)
        if not distorted:
            return self.batch(mine)
        shifts, angles, scales = (self.my_share(a) for a in draws(self.config, iteration, len(idx)))
        if not (self.config.rotate or self.config.scale):
            return self.batch(mine, shifts)
        x, y = self.batch(mine)
        return distort(x, shifts, angles, scales, normalize=self.config.normalize), y

    def run(self, metrics, stop):
        cfg = self.config
        while self.epoch < cfg.epochs:
            self.rng.bit_generator.state = self.epoch_rng_state
            order = self.rng.permutation(self.train_idx)
            bar = self.progress(total=self.batches_per_epoch, initial=self.batch_in_epoch,
                                desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="batch") if self.progress else None
            epoch_start, seen, correct, train_time, self.compute_s = time.perf_counter(), 0, 0, 0.0, 0.0
            while self.batch_in_epoch < self.batches_per_epoch:
                t0 = time.perf_counter()
                idx = order[self.batch_in_epoch * cfg.batch_size:(self.batch_in_epoch + 1) * cfg.batch_size]
                self.optimizer.lr = learning_rate(cfg, self.iteration, cfg.epochs * self.batches_per_epoch,
                                                  self.batches_per_epoch)
                loss, batch_correct, stopping = self.step(idx, stop)
                if not math.isfinite(loss):
                    raise TrainingStopped(self.non_finite_message(loss))
                t1 = time.perf_counter()
                self.optimizer.step()
                if self.average:
                    self.average.update()
                self.compute_s += time.perf_counter() - t1
                step_s = time.perf_counter() - t0
                train_time, seen, correct = train_time + step_s, seen + len(idx), correct + batch_correct
                self.iteration, self.batch_in_epoch = self.iteration + 1, self.batch_in_epoch + 1
                metrics({"type": "iter", "iteration": self.iteration, "epoch": self.epoch + 1,
                         "loss": loss, "lr": self.optimizer.lr, "time_s": step_s})
                if bar and bar.update():  # tqdm redrew the line (~10 times a second): the figures go there
                    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{correct / seen:.2%}", img_s=f"{seen / train_time:,.0f}")
                self.between_steps(metrics, stop, stopping)
                if self.sharing and self.sharing.due():
                    self.sharing.look(metrics, self.iteration)
            if bar:
                bar.close()
            self.record_validation(metrics)
            wall = time.perf_counter() - epoch_start
            self.epoch_seconds.append(train_time)
            self.epoch_compute_seconds.append(self.compute_s)
            self.epoch_wall_seconds.append(wall)
            metrics({"type": "epoch", "iteration": self.iteration, "epoch": self.epoch + 1, "train_seconds": train_time,
                     "compute_seconds": self.compute_s, "wall_seconds": wall})
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self.epoch_rng_state = self.rng.bit_generator.state
            self.checkpoint(metrics)

    def between_steps(self, metrics, stop, stopping):
        """Validation and checkpoints within an epoch, and a stop when asked."""
        cfg, end_of_epoch = self.config, self.batch_in_epoch == self.batches_per_epoch
        if self.iteration % cfg.eval_every == 0 and not end_of_epoch:
            self.record_validation(metrics)
        if cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0 and not end_of_epoch:
            self.checkpoint(metrics)
        # ranks stop together, on the flag they exchanged; a single process as soon as it is asked
        if stopping if self.exchange else stop.signal:
            self.checkpoint(metrics)
            raise TrainingStopped(f"stopped by {stop.signal or 'another rank'} at iteration {self.iteration}; "
                                  f"checkpoint saved. Resume with: fastlenet train --resume {self.run_dir.path}",
                                  exit_code=130)

    def non_finite_message(self, loss):
        where = f"loss is {loss} at iteration {self.iteration + 1} (epoch {self.epoch + 1}); "
        if self.checkpoint_iteration is None:
            return where + f"no checkpoint was written yet, so there is nothing to resume. Try a smaller --lr."
        return where + (f"the checkpoint of iteration {self.checkpoint_iteration} is kept in {self.run_dir.path}. "
                        f"Try a smaller --lr.")

    def step(self, idx, stop):
        """Forward and backward of one global batch (this rank's slice of it, with
        several ranks). Returns the batch's mean loss, its number of right answers and,
        with several ranks, whether any of them was asked to stop."""
        mine = self.my_share(idx)
        if len(mine):
            x, y = self.inputs(idx, self.iteration, self.epoch < distorted_epochs(self.config))
            start = time.perf_counter()
            loss, _ = forward_backward(self.model, self.loss, x, y)
            self.compute_s += time.perf_counter() - start
            correct = int(np.count_nonzero(self.loss.predicted == y))
        else:  # a last batch smaller than the number of ranks
            loss, correct = 0.0, 0
            for p in self.model.params:
                p.grad[...] = 0
        if self.exchange is None:
            return loss, correct, False
        # the global mean gradient is the sum of each rank's mean weighted by its share
        loss_sum, correct, stops = self.exchange(len(mine) / len(idx), loss * len(mine), correct, bool(stop.signal))
        return loss_sum / len(idx), int(round(correct)), stops > 0

    def my_share(self, a):
        return a if self.exchange is None else np.array_split(a, self.comm.size)[self.comm.rank]

    def record_validation(self, metrics):
        if not len(self.val_idx) or self.comm.rank != 0:
            return
        probs = predict_proba(self.evaluated_model(), self.data.train_images, indices=self.val_idx)
        accuracy = float((probs.argmax(axis=1) == self.data.train_labels[self.val_idx]).mean())
        metrics({"type": "eval", "iteration": self.iteration, "epoch": self.epoch + 1, "val_accuracy": accuracy})


def pack_state(model, parts):
    """(tensors, JSON state) of a model and its stateful parts (prefix -> object with
    `buffers` and a state_dict): weights are "model.NAME", buffers "PREFIX.NAME.I",
    a part's scalars go to state[PREFIX]."""
    tensors, state = {f"model.{k}": v for k, v in model.state_dict().items()}, {}
    for prefix, part in parts.items():
        values = part.state_dict()
        for name in part.buffers:
            tensors.update({f"{prefix}.{name}.{i}": a for i, a in enumerate(values[name])})
        state[prefix] = {k: v for k, v in values.items() if k not in part.buffers}
    return tensors, state


def unpack_state(tensors, state, model, parts):
    """pack_state's inverse, into the model and parts given (KeyError/ValueError if they do not fit)."""
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for prefix, part in parts.items():
        values = dict(state[prefix])
        for name in part.buffers:
            values[name] = [tensors[f"{prefix}.{name}.{i}"] for i in range(len(model.params))]
        part.load_state_dict(values)


def data_order_rng(seed):
    """The generator of the run's batch order (and of nothing else)."""
    return np.random.default_rng([seed, 0x5EED])


def new_model(config, seed):
    model = LeNet5(config.backend, np.dtype(config.dtype), seed=seed, conv=config.conv)
    model.normalize, model.dataset = config.normalize, config.dataset
    return model


def warm_up(trainer, eval_sizes):
    """Compiles (or loads from Numba's on-disk cache) every kernel the run calls, on
    throwaway copies, so the first timed step is a real one: a whole step, optimizer
    included, at each batch size the run trains on, and a forward at each size it
    evaluates on (the fast layers' memory layouts, hence their kernels, depend on the
    batch size). The reference layers are loops: their step is warmed at 2 images.
    A cold cache compiles on as many processes as the run has threads (compile_ahead;
    not under MPI, whose ranks share the cores already). Returns seconds."""
    start, cfg = time.perf_counter(), trainer.config
    # global batch sizes whose share on this rank is not empty: the full one and the last, shorter one
    sizes = {b for b in (cfg.batch_size, len(trainer.train_idx) % cfg.batch_size) if len(trainer.my_share(np.arange(b)))}
    if cfg.backend == "reference":
        sizes, eval_sizes = {min(2, len(trainer.train_idx))}, []

    def workload():
        model, loss = new_model(cfg, cfg.seed), SoftmaxCrossEntropy()
        optimizer = make_optimizer(cfg.optimizer, model.params, cfg.lr, cfg.momentum)
        for b in sorted(sizes):
            for distorted in {False, cfg.distorts()}:  # a distorted run's last epochs are clean
                forward_backward(model, loss, *trainer.inputs(trainer.train_idx[:b], 0, distorted))
            optimizer.step()
        for n in sorted(set(eval_sizes) - {0}):
            predict_proba(model, trainer.data.train_images, indices=trainer.train_idx[:n])

    if trainer.comm.size == 1 and cfg.backend == "fast":
        compile_ahead(workload, processes=min(trainer.threads.get("numba", 1), os.cpu_count() or 1))
    workload()
    return time.perf_counter() - start


def evaluation_sizes(trainer, chunk=CHUNK):
    """The batch sizes predict_proba meets in a run: whole chunks and each set's remainder."""
    sets = (len(trainer.val_idx), len(trainer.data.test_images), len(trainer.train_idx))
    return [min(chunk, n) for n in sets] + [n % chunk for n in sets]


def reference_step_seconds(trainer, steps=3):
    """Seconds per step of the reference (loop) backend on this run's first batches,
    on a throwaway model and optimizer: the run itself is not touched."""
    cfg = trainer.config
    order = data_order_rng(cfg.seed).permutation(trainer.train_idx)  # the run's first epoch
    model = LeNet5("reference", trainer.dtype, seed=cfg.seed)
    optimizer = make_optimizer(cfg.optimizer, model.params, cfg.lr, cfg.momentum)
    batches = [trainer.batch(order[k * cfg.batch_size:(k + 1) * cfg.batch_size]) for k in range(steps)]
    return median_step_seconds(model, optimizer, SoftmaxCrossEntropy(), batches)


def settings_of(config, resume, changes):
    """The run's settings, checked: `config` for a new run; for a resume, the run's
    recorded ones with `changes` (default: config's quiet and data_dir) applied."""
    if not resume:
        return config.check()
    changes = changes if changes is not None else {
        k: v for k, v in (("quiet", config.quiet), ("data_dir", config.data_dir)) if v is not None}
    stored = RunDir(resume).read_config().get("config")
    if not isinstance(stored, dict):
        raise SettingsError(f"--resume {resume}: its config.json has no settings")
    return resumed(stored, changes, f"--resume {resume}")


def load_data(config, data, progress):
    """The data set and the (train, validation) split, checked before a run directory is touched."""
    data = data if data is not None else load_mnist(config.data_dir, progress=progress, dataset=config.dataset)
    if data.dataset != config.dataset:
        raise SettingsError(f"--dataset {config.dataset}, but the data given is {data.dataset}")
    check_pair(data.train_images, data.train_labels, "training set")
    check_pair(data.test_images, data.test_labels, "test set")
    if config.val_size >= len(data.train_images):
        raise SettingsError(f"--val-size must be >= 0 and < {len(data.train_images)} (the training set), "
                            f"got {config.val_size}")
    train_idx, val_idx = validation_split(len(data.train_images), config.val_size, config.seed)
    return data, train_idx[:config.limit_train] if config.limit_train else train_idx, val_idx


def open_run(config, resume, overwrite, comm):
    """Rank 0 holds the run directory (created, replaced or reopened); the others get its path."""
    if comm.rank == 0:
        run = RunDir.open(resume) if resume else RunDir.create(config.out, overwrite)
    path = comm.bcast(str(run.path) if comm.rank == 0 else None)
    return run if comm.rank == 0 else RunDir(path)


def train(config=None, resume=None, overwrite=False, data=None, progress=None, log=print, compare_reference=False,
          comm=None, changes=None):
    """Runs (or resumes) a training run and returns its summary (None on ranks other than 0).

    Every setting and the data are checked before the run directory is touched: an
    --overwrite replaces the old run only once the new one can start. Raises
    TrainingStopped after a signal or a non-finite loss. Under MPI (comm, default:
    detected) the ranks train one model together; rank 0 alone writes the run directory.
    """
    started, comm = time.perf_counter(), comm or world()
    config = settings_of(config or TrainConfig(), resume, changes)
    data, train_idx, val_idx = load_data(config, data, None if config.quiet else progress)
    run = open_run(config, resume, overwrite, comm)
    try:
        return run_in(run, config, data, train_idx, val_idx, resume, progress, log, compare_reference, comm, started)
    finally:
        run.release()


def run_in(run, config, data, train_idx, val_idx, resume, progress, log, compare_reference, comm, started):
    """train() once its run directory is held."""
    config.out = str(run.path)
    # ranks on one machine share its cores; a count given is the user's
    threads = set_threads(config.threads or max(1, cores() // comm.local_size), config.blas_threads)
    trainer = Trainer(config, run, data, train_idx, val_idx, threads, comm, None if config.quiet else progress)
    if config.threads is None:  # left to fastlenet: the cores other processes leave
        trainer.sharing = CoreSharing(trainer.threads, log if comm.rank == 0 and not config.quiet else None)
    compile_s = warm_up(trainer, evaluation_sizes(trainer))
    reference_step_s = reference_step_seconds(trainer) if compare_reference else None
    lead = comm.rank == 0
    if resume:
        trainer.load_checkpoint()
        if lead:
            log(f"resuming {run.path} at iteration {trainer.iteration} (epoch {trainer.epoch + 1})")
    elif lead:
        run.write_config({"config": config.to_dict(), "threads": threads, "ranks": comm.size,
                          "environment": environment(),
                          "data": {"dataset": config.dataset, "directory": str(data.directory),
                                   "train_images": len(train_idx),
                                   "validation_indices": val_idx.tolist()}})
    with run.open_metrics(lead, trainer.iteration if resume else None) as metrics, StopFlag() as stop:
        trainer.run(metrics, stop)
    check_replicas(comm, trainer.model.params)
    if not lead:
        return None
    summary = finish(trainer, run, compile_s)
    summary.update(ranks=comm.size, run_dir=str(run.path))
    if trainer.exchange and trainer.exchange.calls:
        summary["allreduce_s_per_step"] = trainer.exchange.seconds / trainer.exchange.calls
    if reference_step_s is not None:
        fast_step_s = float(np.median([m["time_s"] for m in run.metrics() if m["type"] == "iter"]))
        summary.update(reference_step_s=reference_step_s, fast_step_s=fast_step_s,
                       speedup_vs_reference=reference_step_s / fast_step_s)
    summary["total_s"] = time.perf_counter() - started
    run.write_summary(summary)
    return summary
