"""Run under mpiexec by test_mpi.py: trains on synthetic data, as the CLI would on MNIST."""

import sys

from conftest import synthetic_mnist
from fastlenet.train import TrainConfig, train


def run(out, steps):
    """`steps` steps of batch 64 (split across the ranks under MPI). SGD with momentum, not
    Adam: Adam divides each gradient by its own running size, so a weight whose gradient sits
    near 0 moves by about lr whichever way rounding tips it. One process of 64 images and two
    of 32 lay batches out differently and so sum in different orders: after 20 Adam steps their
    weights differed by up to 5e-3, after 20 SGD steps by 1.5e-7 (measured in one process, the
    two layouts forced). SGD's steps are proportional to the gradients: they agree to rounding,
    and a rank that failed to average would show."""
    return train(TrainConfig(epochs=1, batch_size=64, limit_train=steps * 64, eval_every=10, val_size=100, threads=1,
                             optimizer="sgd", lr=0.05, momentum=0.9, out=out, quiet=True),
                 data=synthetic_mnist(n_train=2000, n_test=200))


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]))
