"""Where the time goes, against the machine: the floating-point work of each
layer pass, and the rate this machine reaches on its best case, a large SGEMM
on the same number of threads, measured on the spot."""

import time

import numpy as np
from threadpoolctl import ThreadpoolController

from .core import ConvSpec, LinearSpec, output_size

CALIBRATION_N = 2048  # SGEMM size: large enough for BLAS's best rate, ~40 ms a product on two cores


def pass_flops(layer, x_shape):
    """(forward, backward) floating-point operations of `layer` on an input of `x_shape`,
    a multiply-add counted as two; None for the layers that only move or compare numbers.
    The backward counts the weight gradient, and the input gradient unless the layer skips it."""
    n = x_shape[0]
    if isinstance(layer, ConvSpec):
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
        positions = output_size(x_shape[2], kh, sh, ph) * output_size(x_shape[3], kw, sw, pw)
        forward = 2 * n * positions * layer.out_channels * layer.in_channels * kh * kw
    elif isinstance(layer, LinearSpec):
        forward = 2 * n * layer.in_features * layer.out_features
    else:
        return None, None
    return forward, forward * (2 if layer.input_grad else 1)


def peak_flops(threads, dtype=np.float32, repeats=3):
    """FLOP/s of the best of `repeats` (CALIBRATION_N)^3 matrix products on `threads` BLAS
    threads: what this machine's cores reach on the friendliest dense arithmetic there is
    (OPENBLAS_CORETYPE, where set, applies to it as to every GEMM)."""
    a = np.random.default_rng(0).random((CALIBRATION_N, CALIBRATION_N)).astype(dtype)
    out = np.empty_like(a)
    with ThreadpoolController().limit(limits=threads, user_api="blas"):
        np.matmul(a, a, out=out)  # BLAS's threads start, its buffers are allocated
        best = min(timed(lambda: np.matmul(a, a, out=out)) for _ in range(repeats))
    return 2 * CALIBRATION_N ** 3 / best


def measured_peak(threads):
    """(FLOP/s, the record a report gives of it): peak_flops on `threads` threads."""
    flops = peak_flops(threads)
    return flops, {"peak_gflops": flops / 1e9,
                   "peak_measured_by": f"SGEMM {CALIBRATION_N}^3 on {threads} BLAS threads, best of 3"}


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rates(flops, seconds, peak):
    """{gflops, peak_share} of work done in `seconds`; empty without work to count."""
    if flops is None or not seconds:
        return {}
    return {"gflops": flops / seconds / 1e9, "peak_share": flops / seconds / peak}
