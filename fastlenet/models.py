"""LeNet-5 as in the spec, on either backend."""

import numpy as np

from . import fast, reference
from .core import float_dtype

BACKENDS = {"fast": fast, "reference": reference}
INPUT_SHAPE = (1, 32, 32)


class LeNet5:
    """1x32x32 -> C1 6@5x5 -> pool 2 -> ReLU -> C3 16@5x5 -> pool 2 -> ReLU
    -> F5 400->120 -> ReLU -> F6 120->84 -> ReLU -> F7 84->10 (logits).

    Parameters are named "c1.weight", "c1.bias", ..., "f7.bias". The same
    seed gives the same initial weights whichever the backend. `normalize`
    is the input preprocessing the weights were trained with (data.preprocess):
    it is saved and loaded with them.
    """

    architecture = "lenet5"
    normalize = False

    def __init__(self, backend="fast", dtype=np.float32, seed=0):
        if backend not in BACKENDS:
            raise ValueError(f"LeNet5: backend must be one of {sorted(BACKENDS)}, got {backend!r}")
        L = BACKENDS[backend]
        self.backend, self.dtype = backend, float_dtype(dtype)
        rng = np.random.default_rng(seed)
        self.c1 = L.Conv2D(1, 6, 5, dtype=self.dtype, rng=rng)
        self.c3 = L.Conv2D(6, 16, 5, dtype=self.dtype, rng=rng)
        self.f5 = L.Linear(16 * 5 * 5, 120, dtype=self.dtype, rng=rng)
        self.f6 = L.Linear(120, 84, dtype=self.dtype, rng=rng)
        self.f7 = L.Linear(84, 10, dtype=self.dtype, rng=rng)
        self.c1.input_grad = False  # nothing upstream of the image needs a gradient
        self.layers = [
            self.c1, L.MaxPool2D(2), L.ReLU(),
            self.c3, L.MaxPool2D(2), L.ReLU(),
            L.Flatten(),
            self.f5, L.ReLU(),
            self.f6, L.ReLU(),
            self.f7,
        ]
        self.layer_names = ["c1", "s2", "relu2", "c3", "s4", "relu4", "flatten", "f5", "relu5", "f6", "relu6", "f7"]
        self.named_params = {f"{name}.{kind}": getattr(getattr(self, name), kind)
                             for name in ("c1", "c3", "f5", "f6", "f7") for kind in ("weight", "bias")}
        self.params = list(self.named_params.values())

    def __repr__(self):
        return f"LeNet5(backend={self.backend!r}, dtype={self.dtype.name})"

    def forward(self, x):
        """x (N, 1, 32, 32) -> logits (N, 10)."""
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1:] != INPUT_SHAPE:
            raise ValueError(f"LeNet5: expected input of shape (N, 1, 32, 32) (MNIST 28x28 padded by 2), "
                             f"got {getattr(x, 'shape', type(x).__name__)}")
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dlogits):
        """Fills every parameter's .grad from dlogits (N, 10)."""
        for layer in reversed(self.layers):
            dlogits = layer.backward(dlogits)

    def state_dict(self):
        return {name: p.value.copy() for name, p in self.named_params.items()}

    def load_state_dict(self, state):
        """Copies weights in; names, shapes and dtypes must match exactly."""
        missing = sorted(set(self.named_params) - set(state))
        unexpected = sorted(set(state) - set(self.named_params))
        if missing or unexpected:
            raise ValueError(f"LeNet5.load_state_dict: not a LeNet-5 state: missing {missing}, unexpected {unexpected}")
        for name, p in self.named_params.items():
            value = np.asarray(state[name])
            if value.shape != p.value.shape:
                raise ValueError(f"LeNet5.load_state_dict: '{name}' has shape {value.shape}, expected {p.value.shape}")
            if value.dtype != p.value.dtype:
                raise TypeError(f"LeNet5.load_state_dict: '{name}' is {value.dtype}, the model is {p.value.dtype}")
        for name, p in self.named_params.items():
            p.value[...] = state[name]


def forward_backward(model, loss, x, labels):
    """One batch through the model and the loss and back: fills every parameter's
    .grad. Returns (mean loss, logits). The one place this sequence is written."""
    logits = model.forward(x)
    value = loss.forward(logits, labels)
    model.backward(loss.backward())
    return value, logits
