"""Adam's update in one pass over a parameter (NumPy needs nine, each a full read and write)."""

import numpy as np
from numba import prange

from .jit import kernel


@kernel(parallel=True)
def adam_update(value, grad, exp_avg, exp_avg_sq, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size,
                sqrt_bias2, eps):
    """In place, over 1-D views of one parameter and its moments:

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        value -= step_size * m / (sqrt(v) / sqrt_bias2 + eps)

    The scalars (Python floats) are cast to the arrays' dtype and the operations
    run in NumPy's order, so float32 stays float32 and the result is NumPy's,
    bit for bit. A parallel loop, whose iterations are declared independent, is
    also what lets LLVM vectorise it (a serial loop does not, even on one thread).
    """
    t = value.dtype.type
    b1, c1, b2, c2 = t(beta1), t(one_minus_beta1), t(beta2), t(one_minus_beta2)
    lr, bias2, e = t(step_size), t(sqrt_bias2), t(eps)
    for i in prange(value.shape[0]):
        g = grad[i]
        m = exp_avg[i] * b1 + c1 * g
        v = exp_avg_sq[i] * b2 + c2 * g * g
        exp_avg[i] = m
        exp_avg_sq[i] = v
        value[i] -= lr * m / (np.sqrt(v) / bias2 + e)
