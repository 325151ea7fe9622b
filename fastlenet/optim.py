"""Optimizers updating Parameter values in place from their gradients."""

import math

import numpy as np

from .kernels.adam import adam_update


def flat(a):
    """The 1-D view of an array a kernel updates in place (reshape would copy a strided one)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"optimizer: parameters and gradients must be C-contiguous arrays to be updated in "
                         f"place, got one of shape {a.shape} with strides {a.strides}")
    return a.reshape(-1)


def load_buffers(owner, name, params, arrays):
    """Copies of `arrays`, one per parameter, each checked to have its parameter's shape and dtype."""
    if len(arrays) != len(params):
        raise ValueError(f"{owner}.load_state_dict: '{name}' has {len(arrays)} arrays for {len(params)} "
                         f"parameters")
    loaded = []
    for i, (p, a) in enumerate(zip(params, arrays)):
        a = np.asarray(a)
        if a.shape != p.value.shape or a.dtype != p.value.dtype:
            raise ValueError(f"{owner}.load_state_dict: {name}[{i}] is {a.dtype}{a.shape}, "
                             f"expected {p.value.dtype}{p.value.shape}")
        loaded.append(a.copy())
    return loaded


class Optimizer:
    """`buffers` names the state_dict entries that are lists of arrays (one per
    parameter); the other entries are scalars."""

    buffers = ()

    def __init__(self, params):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")

    def zero_grad(self):
        for p in self.params:
            p.grad[...] = 0

    def _buffers(self):
        return [np.zeros_like(p.value) for p in self.params]

    def _load_buffers(self, name, arrays):
        return load_buffers(type(self).__name__, name, self.params, arrays)


class SGD(Optimizer):
    """PyTorch's SGD: buf = momentum * buf + g; p -= lr * buf (plain SGD when momentum = 0)."""

    buffers = ("momentum_buffers",)

    def __init__(self, params, lr, momentum=0.0):
        super().__init__(params)
        if lr <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"SGD: need lr > 0 and 0 <= momentum < 1, got lr={lr}, momentum={momentum}")
        self.lr, self.momentum = float(lr), float(momentum)
        self.momentum_buffers = self._buffers()
        self.steps = 0

    def step(self):
        self.steps += 1
        for p, buf in zip(self.params, self.momentum_buffers):
            if self.momentum:
                buf *= self.momentum
                buf += p.grad
                p.value -= self.lr * buf
            else:
                p.value -= self.lr * p.grad

    def state_dict(self):
        return {"lr": self.lr, "momentum": self.momentum, "steps": self.steps,
                "momentum_buffers": [b.copy() for b in self.momentum_buffers]}

    def load_state_dict(self, state):
        self.momentum_buffers = self._load_buffers("momentum_buffers", state["momentum_buffers"])
        self.lr, self.momentum, self.steps = float(state["lr"]), float(state["momentum"]), int(state["steps"])


class Adam(Optimizer):
    """PyTorch's Adam: bias-corrected moments, eps added to sqrt(v_hat).

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    buffers = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params)
        b1, b2 = betas
        if lr <= 0 or not (0 <= b1 < 1 and 0 <= b2 < 1) or eps < 0:
            raise ValueError(f"Adam: need lr > 0, betas in [0, 1), eps >= 0; got lr={lr}, betas={betas}, eps={eps}")
        self.lr, self.betas, self.eps = float(lr), (float(b1), float(b2)), float(eps)
        self.exp_avg, self.exp_avg_sq = self._buffers(), self._buffers()
        self.steps = 0

    def step(self):
        self.steps += 1
        b1, b2 = self.betas
        step_size = self.lr / (1 - b1 ** self.steps)
        sqrt_bias2 = math.sqrt(1 - b2 ** self.steps)  # a Python float: no float64 promotion
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            adam_update(flat(p.value), flat(p.grad), m.reshape(-1), v.reshape(-1),
                        b1, 1 - b1, b2, 1 - b2, step_size, sqrt_bias2, self.eps)

    def state_dict(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "steps": self.steps,
                "exp_avg": [m.copy() for m in self.exp_avg], "exp_avg_sq": [v.copy() for v in self.exp_avg_sq]}

    def load_state_dict(self, state):
        self.exp_avg = self._load_buffers("exp_avg", state["exp_avg"])
        self.exp_avg_sq = self._load_buffers("exp_avg_sq", state["exp_avg_sq"])
        self.lr, self.eps, self.steps = float(state["lr"]), float(state["eps"]), int(state["steps"])
        self.betas = tuple(float(b) for b in state["betas"])


def make_optimizer(name, params, lr, momentum=0.0):
    """"adam" or "sgd", as the training settings name them."""
    if name == "adam":
        return Adam(params, lr=lr)
    if name == "sgd":
        return SGD(params, lr=lr, momentum=momentum)
    raise ValueError(f"optimizer must be adam or sgd, got {name!r}")
