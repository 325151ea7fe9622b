"""LeNet-5 as in the spec, on either backend."""

import numpy as np

from . import fast, reference
from .core import float_dtype
from .sequential import Sequential

BACKENDS = {"fast": fast, "reference": reference}
INPUT_SHAPE = (1, 32, 32)


class LeNet5(Sequential):
    """1x32x32 -> C1 6@5x5 -> pool 2 -> ReLU -> C3 16@5x5 -> pool 2 -> ReLU
    -> F5 400->120 -> ReLU -> F6 120->84 -> ReLU -> F7 84->10 (logits).

    Parameters are named "c1.weight", "c1.bias", ..., "f7.bias". The same
    seed gives the same initial weights whichever the backend. `normalize`
    is the input preprocessing the weights were trained with (data.preprocess)
    and `dataset` the data (datasets.DATASETS): both are saved and loaded with them.
    `conv` picks the fast engine's rung for the convolutions and the pools
    (fastlenet.fast.Conv2D, MaxPool2D): "auto", "im2col" or "direct".
    """

    architecture = "lenet5"
    normalize = False
    dataset = "mnist"

    def __init__(self, backend="fast", dtype=np.float32, seed=0, conv="auto"):
        if backend not in BACKENDS:
            raise ValueError(f"LeNet5: backend must be one of {sorted(BACKENDS)}, got {backend!r}")
        L = BACKENDS[backend]
        self.backend, self.dtype = backend, float_dtype(dtype)
        rng = np.random.default_rng(seed)
        self.conv = conv
        rung = dict(dtype=self.dtype, rng=rng, algorithm=conv)
        super().__init__(
            ("c1", L.Conv2D(1, 6, 5, **rung)), ("s2", L.MaxPool2D(2, algorithm=conv)), ("relu2", L.ReLU()),
            ("c3", L.Conv2D(6, 16, 5, **rung)), ("s4", L.MaxPool2D(2, algorithm=conv)), ("relu4", L.ReLU()),
            ("flatten", L.Flatten()),
            ("f5", L.Linear(16 * 5 * 5, 120, dtype=self.dtype, rng=rng)), ("relu5", L.ReLU()),
            ("f6", L.Linear(120, 84, dtype=self.dtype, rng=rng)), ("relu6", L.ReLU()),
            ("f7", L.Linear(84, 10, dtype=self.dtype, rng=rng)),
        )
        self.c1.input_grad = False  # nothing upstream of the image needs a gradient

    def __repr__(self):
        return f"LeNet5(backend={self.backend!r}, dtype={self.dtype.name})"

    def forward(self, x):
        """x (N, 1, 32, 32) -> logits (N, 10)."""
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1:] != INPUT_SHAPE:
            raise ValueError(f"LeNet5: expected input of shape (N, 1, 32, 32) (MNIST 28x28 padded by 2), "
                             f"got {getattr(x, 'shape', type(x).__name__)}")
        return super().forward(x)


def forward_backward(model, loss, x, labels):
    """One batch through the model and the loss and back: fills every parameter's
    .grad. Returns (mean loss, logits). The one place this sequence is written."""
    logits = model.forward(x)
    value = loss.forward(logits, labels)
    model.backward(loss.backward())
    return value, logits
