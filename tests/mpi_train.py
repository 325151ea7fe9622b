"""Run under mpiexec by test_mpi.py: trains on synthetic data, as the CLI would on MNIST."""

import sys

from conftest import synthetic_mnist
from fastlenet.train import TrainConfig, train

out, steps_limit = sys.argv[1], int(sys.argv[2])
train(TrainConfig(epochs=1, batch_size=64, limit_train=steps_limit * 64, eval_every=10, val_size=100, threads=1,
                  out=out, quiet=True), data=synthetic_mnist(n_train=2000, n_test=200))
