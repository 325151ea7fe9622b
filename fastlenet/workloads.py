"""The LeNet-5 workloads that benchmarks and profiles time: each layer at its
place in the network, and a whole training step."""

import numpy as np

from .losses import SoftmaxCrossEntropy
from .models import BACKENDS, LeNet5
from .optim import Adam

# name -> (layer factory given a backend module, dtype and rng; input shape without the batch axis)
LAYERS = {
    "conv2d-c1": (lambda L, dtype, rng: L.Conv2D(1, 6, 5, dtype=dtype, rng=rng), (1, 32, 32)),
    "maxpool2d-s2": (lambda L, dtype, rng: L.MaxPool2D(2), (6, 28, 28)),
    "relu-s2": (lambda L, dtype, rng: L.ReLU(), (6, 14, 14)),
    "conv2d-c3": (lambda L, dtype, rng: L.Conv2D(6, 16, 5, dtype=dtype, rng=rng), (6, 14, 14)),
    "maxpool2d-s4": (lambda L, dtype, rng: L.MaxPool2D(2), (16, 10, 10)),
    "linear-f5": (lambda L, dtype, rng: L.Linear(400, 120, dtype=dtype, rng=rng), (400,)),
    "linear-f6": (lambda L, dtype, rng: L.Linear(120, 84, dtype=dtype, rng=rng), (120,)),
    "linear-f7": (lambda L, dtype, rng: L.Linear(84, 10, dtype=dtype, rng=rng), (84,)),
}


def layer_case(name, backend, batch, dtype=np.float32, seed=0):
    """A layer of `backend` and a seeded input batch for it (the same input for every backend)."""
    make, shape = LAYERS[name]
    layer = make(BACKENDS[backend], np.dtype(dtype), seed)
    x = np.random.default_rng(seed).standard_normal((batch, *shape)).astype(dtype)
    return layer, x


def train_step(model, optimizer, loss, x, labels):
    """One step: forward, loss, backward, optimizer update. Returns the loss."""
    value = loss.forward(model.forward(x), labels)
    model.backward(loss.backward())
    optimizer.step()
    return value


def synthetic_batch(batch, dtype=np.float32, seed=0):
    """MNIST-shaped images in [0, 1] and labels, for when timing needs no real data."""
    rng = np.random.default_rng(seed)
    return rng.random((batch, 1, 32, 32)).astype(dtype), rng.integers(0, 10, batch)


def training_setup(backend, dtype=np.float32, seed=0, lr=1e-3):
    """LeNet5, Adam and the loss: what a benchmark step needs."""
    model = LeNet5(backend, dtype, seed)
    return model, Adam(model.params, lr=lr), SoftmaxCrossEntropy()
