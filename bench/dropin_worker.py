"""A training loop in a process of its own, stepped on command: `bench/test_bench_dropin.py`
times it. Reads lines "BATCH STEPS" from stdin, runs STEPS training steps at that
batch size, answers "ok"; builds each batch size's model on first use (Numba loads
its cache there, untimed).

    python bench/dropin_worker.py readme    # the README's loop, no set-up call at all
    python bench/dropin_worker.py trainer   # the process as `fastlenet train` sets it up
"""

import sys

import numpy as np

from fastlenet.losses import SoftmaxCrossEntropy
from fastlenet.models import LeNet5
from fastlenet.optim import Adam


def trainer_process():
    """What `fastlenet train` does to the process before its first step (cli.cmd_train, train.run_in)."""
    from fastlenet.env import hold_freed_memory, set_threads
    from fastlenet.settings import TrainConfig
    hold_freed_memory()
    defaults = TrainConfig()
    set_threads(defaults.threads, defaults.blas_threads)


def readme_loop(batch):
    """The README's layer example as a loop: LeNet5(backend="fast"), Adam, the loss."""
    model, loss = LeNet5(backend="fast"), SoftmaxCrossEntropy()
    optimizer = Adam(model.params, lr=1e-3)
    rng = np.random.default_rng(0)
    x, labels = rng.random((batch, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, batch)

    def steps(k):
        for _ in range(k):
            loss.forward(model.forward(x), labels)
            model.backward(loss.backward())
            optimizer.step()
    steps(3)
    return steps


def main(mode):
    if mode == "trainer":
        trainer_process()
    elif mode != "readme":
        sys.exit(f"dropin_worker: mode must be readme or trainer, got {mode!r}")
    loops = {}
    for line in sys.stdin:
        batch, k = map(int, line.split())
        if batch not in loops:
            loops[batch] = readme_loop(batch)
        loops[batch](k)
        print("ok", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
