"""Numerical gradients and comparisons shared by the tests."""

import numpy as np


def numerical_grad(f, x, h=1e-6):
    """Central differences of the scalar f() with respect to every element of x (in place)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        up = f()
        x[idx] = old - h
        down = f()
        x[idx] = old
        grad[idx] = (up - down) / (2 * h)
    return grad


def rel_error(a, b):
    """Largest |a - b| relative to the largest magnitude of either array."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.max(np.abs(a), initial=0.0), np.max(np.abs(b), initial=0.0), 1e-12)
    return float(np.max(np.abs(a - b), initial=0.0) / scale)


def distinct_values(rng, shape):
    """Random values at least ~1e-3 apart and away from 0, so max-pool and ReLU
    have no ties or kinks within a finite-difference step."""
    size = int(np.prod(shape))
    values = (rng.permutation(size) + 0.5 - size / 2) / size * 4
    return values.reshape(shape).astype(np.float64)


def check_layer_gradients(layer, x, rng, tol=1e-7):
    """Compares layer.backward with central differences of sum(forward(x) * g)."""
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)

    def loss():
        return float(np.sum(layer.forward(x) * g))

    assert rel_error(dx, numerical_grad(loss, x)) < tol
    for p in layer.params:
        analytic = p.grad.copy()
        assert rel_error(analytic, numerical_grad(loss, p.value)) < tol
