"""The LeNet-5 workloads that benchmarks and profiles time: each layer at its
place in the network, and a whole training step, on each rung of the ladder."""

import time

import numpy as np

from .data import PAD, standardisation
from .kernels.batch import gather_batch
from .layout import aligned_empty, aligned_empty_like
from .losses import SoftmaxCrossEntropy
from .models import LeNet5, forward_backward
from .optim import Adam

# benchmark name -> the layer's name in LeNet5
LAYERS = {"conv2d-c1": "c1", "maxpool2d-s2": "s2", "relu-s2": "relu2", "conv2d-c3": "c3", "maxpool2d-s4": "s4",
          "linear-f5": "f5", "linear-f6": "f6", "linear-f7": "f7"}


# the engine's ladder, slowest first: the reference's loops, the fast backend's im2col rung, its direct rung
LADDER = ("reference", "im2col", "direct")


def gathered(images, idx, dtype, normalize, shifts=None):
    """uint8 images[idx] as the model takes them, as the trainer loads a batch:
    data.preprocess's result, moved by `shifts` as data.shift_images moves it, in
    one kernel pass."""
    x = aligned_empty((len(idx), 1, images.shape[1] + 2 * PAD, images.shape[2] + 2 * PAD), dtype)
    shifts = np.zeros((len(idx), 2), np.int64) if shifts is None else shifts
    gather_batch(images, idx, shifts, *standardisation(normalize), x)
    return x


def lenet(impl, dtype=np.float32, seed=0):
    """A seeded LeNet5 on `impl`: a rung of LADDER, or a backend ("fast": its automatic choice)."""
    if impl in ("im2col", "direct"):
        return LeNet5("fast", dtype, seed, conv=impl)
    return LeNet5(impl, dtype, seed)


def layer_case(name, impl, batch, dtype=np.float32, seed=0):
    """A layer of a seeded LeNet5 on `impl` (see lenet) and its input there: a
    synthetic batch run through the layers before it, so that the input has the
    values and the memory layout the layer meets in training (the direct rung
    keeps a large batch innermost, the im2col rung the channels; C1 computes no
    input gradient)."""
    model = lenet(impl, dtype, seed)
    x, _ = synthetic_batch(batch, dtype, seed)
    place = model.layer_names.index(LAYERS[name])
    for layer in model.layers[:place]:
        x = layer.forward(x)
    return model.layers[place], x


def gradient_like(y, seed=1):
    """A random upstream gradient laid out in memory as y is, as the next layer's
    backward hands it over in the network."""
    dy = aligned_empty_like(y)  # y's memory order, on a cache line as the fast layers allocate it
    dy[...] = np.random.default_rng(seed).standard_normal(y.shape)
    return dy


def train_step(model, optimizer, loss, x, labels):
    """One step: forward, loss, backward, optimizer update. Returns the loss."""
    value, _ = forward_backward(model, loss, x, labels)
    optimizer.step()
    return value


def synthetic_batch(batch, dtype=np.float32, seed=0):
    """MNIST-shaped images in [0, 1] and labels, for when timing needs no real data."""
    rng = np.random.default_rng(seed)
    return rng.random((batch, 1, 32, 32)).astype(dtype), rng.integers(0, 10, batch)


def training_setup(impl, dtype=np.float32, seed=0, lr=1e-3):
    """LeNet5 on `impl` (see lenet), Adam and the loss: what a benchmark step needs."""
    model = lenet(impl, dtype, seed)
    return model, Adam(model.params, lr=lr), SoftmaxCrossEntropy()


def median_step_seconds(model, optimizer, loss, batches):
    """Median wall time of train_step over (x, labels) batches."""
    times = []
    for x, labels in batches:
        start = time.perf_counter()
        train_step(model, optimizer, loss, x, labels)
        times.append(time.perf_counter() - start)
    return float(np.median(times))
