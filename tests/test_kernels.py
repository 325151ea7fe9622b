"""The Numba kernels against plain NumPy, compiled and as the Python they are
written in (`.py_func`), so the kernel logic is covered line by line too.
CI runs this file once more with NUMBA_DISABLE_JIT=1."""

import numpy as np
import numba
import pytest
from numba import njit
from numba.core.errors import TypingError

from fastlenet import kernels
from fastlenet.kernels import relu, simd
from fastlenet.kernels.relu import relu_backward, relu_forward
from fastlenet.kernels.simd import lanes, loads, outer_fma, row_splats, rows_from, store_rows
from fastlenet.kernels import (col2im, gather_windows, interleave, maxpool2x2_backward_interleaved,
                               maxpool2x2_forward, maxpool2x2_forward_interleaved, maxpool_backward, maxpool_forward,
                               softmax_cross_entropy, window_max, window_scatter)


def compiled_and_python(kernel):
    kernel = getattr(kernel, "kernel", kernel)  # the compiled kernel behind a checked entry point
    return [pytest.param(kernel, id="jit"), pytest.param(getattr(kernel, "py_func", kernel), id="python")]


@pytest.mark.parametrize("kernel", compiled_and_python(col2im))
@pytest.mark.parametrize("kernel_size, stride, pad", [(3, 1, 0), (2, 2, 0), (3, 2, 1), (1, 1, 0), (3, 1, 2)])
def test_col2im_sums_every_window(kernel, kernel_size, stride, pad):
    rng = np.random.default_rng(0)
    n, c, oh, ow, k = 2, 3, 4, 5, kernel_size
    cols = rng.standard_normal((n, oh, ow, k, k, c))  # (N, OH, OW, KH, KW, C): channels innermost
    hp, wp = (oh - 1) * stride + k, (ow - 1) * stride + k
    padded = np.zeros((n, hp, wp, c))
    for i in range(oh):
        for j in range(ow):
            padded[:, i * stride:i * stride + k, j * stride:j * stride + k] += cols[:, i, j]
    expected = padded[:, pad:hp - pad, pad:wp - pad]  # what falls in the padding is dropped
    out = np.full(expected.shape, np.nan)  # must be overwritten, not accumulated into
    kernel(cols.reshape(n, oh, ow, k, k * c), stride, stride, pad, pad, out)
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kernel", compiled_and_python(gather_windows))
def test_gather_windows_copies_each_window_then_a_one(kernel):
    x = np.arange(2 * 4 * 5 * 3, dtype=np.float64).reshape(2, 4, 5, 3)  # (N, H, W, C)
    s_n, s_h, s_w, s_c = x.strides  # 2x2 windows at stride (2, 1): (N, OH=2, OW=4, KH=2, KW*C=6)
    windows = np.lib.stride_tricks.as_strided(x, (2, 2, 4, 2, 6), (s_n, 2 * s_h, s_w, s_h, s_c))
    cols = np.full((2 * 2 * 4, 2 * 2 * 3 + 1), np.nan)
    kernel(windows, cols)
    for row, (n, i, j) in enumerate(np.ndindex(2, 2, 4)):
        window = x[n, 2 * i:2 * i + 2, j:j + 2]  # (KH, KW, C)
        np.testing.assert_array_equal(cols[row], np.append(window.reshape(-1), 1.0))


@pytest.mark.parametrize("forward", compiled_and_python(window_max))
@pytest.mark.parametrize("backward", compiled_and_python(window_scatter))
@pytest.mark.parametrize("channels_innermost", [False, True])
def test_window_max_and_scatter(forward, backward, channels_innermost):
    x = np.array([[[[1, 5, 2, 2],
                    [3, 0, 2, 7],
                    [4, 4, 9, 1]]]], np.float64)
    x = np.concatenate([x, -x], axis=1)  # a second channel, its maxima elsewhere
    if channels_innermost:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    s_n, s_c, s_h, s_w = x.strides  # 2x2 windows, stride 1: overlapping
    windows = np.lib.stride_tricks.as_strided(x, (1, 2, 2, 3, 2, 2), (s_n, s_c, s_h, s_w, s_h, s_w))
    out, argmax = np.full((1, 2, 2, 3), np.nan), np.full((1, 2, 2, 3), -1, np.int32)
    forward(windows, out, argmax)
    np.testing.assert_array_equal(out[0, 0], [[5, 5, 7], [4, 9, 9]])
    np.testing.assert_array_equal(argmax[0, 0], [[1, 0, 3], [2, 3, 2]])  # place in the window; first max wins ties
    np.testing.assert_array_equal(out[0, 1], [[0, 0, -2], [0, 0, -1]])
    np.testing.assert_array_equal(argmax[0, 1], [[3, 2, 0], [1, 0, 3]])
    dx = np.full_like(x, np.nan)
    backward(np.ones((1, 2, 2, 3)), argmax, 2, 2, 1, 1, dx)
    np.testing.assert_array_equal(dx[0, 0], [[0, 2, 0, 0], [0, 0, 0, 1], [1, 0, 2, 0]])
    np.testing.assert_array_equal(dx[0, 1], [[0, 0, 1, 0], [0, 4, 0, 0], [0, 0, 0, 1]])


@pytest.mark.parametrize("forward", compiled_and_python(maxpool_forward))
@pytest.mark.parametrize("backward", compiled_and_python(maxpool_backward))
def test_maxpool_kernels(forward, backward):
    x = np.array([[[[1, 5, 2, 2],
                    [3, 0, 2, 7],
                    [4, 4, 9, 1]]]], np.float64)
    out = np.empty((1, 1, 2, 3))
    argmax = np.empty((1, 1, 2, 3), np.int32)
    forward(x, 2, 2, 1, 1, out, argmax)  # 2x2 windows, stride 1: overlapping
    np.testing.assert_array_equal(out, [[[[5, 5, 7], [4, 9, 9]]]])
    np.testing.assert_array_equal(argmax, [[[[1, 1, 7], [8, 10, 10]]]])  # first max wins ties
    dx = np.full_like(x, np.nan)
    backward(np.ones((1, 1, 2, 3)), argmax, dx)
    np.testing.assert_array_equal(dx, [[[[0, 2, 0, 0], [0, 0, 0, 1], [1, 0, 2, 0]]]])


@pytest.mark.parametrize("forward", compiled_and_python(maxpool2x2_forward))
def test_maxpool2x2_kernel_matches_the_general_one(forward):
    x = np.random.default_rng(1).integers(0, 3, (2, 3, 5, 7)).astype(np.float64)  # ties, odd sizes
    out, argmax = np.empty((2, 3, 2, 3)), np.empty((2, 3, 2, 3), np.int32)
    maxpool_forward(x, 2, 2, 2, 2, out, argmax)
    out2, argmax2 = np.empty_like(out), np.empty_like(argmax)
    forward(x, out2, argmax2)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(argmax2, argmax)


@pytest.mark.parametrize("forward", compiled_and_python(maxpool2x2_forward_interleaved))
@pytest.mark.parametrize("backward", compiled_and_python(maxpool2x2_backward_interleaved))
def test_interleaved_2x2_pool_kernels_match_the_general_ones(forward, backward):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 3, (3, 2, 5, 7)).astype(np.float32)  # ties, a ragged row and column
    out, argmax = np.empty((3, 2, 2, 3), np.float32), np.empty((3, 2, 2, 3), np.int32)
    maxpool_forward(x, 2, 2, 2, 2, out, argmax)
    to_inner = (1, 2, 3, 0)  # (N, C, H, W) -> (C, H, W, N)
    out2, argmax2 = np.full((2, 2, 3, 3), np.nan, np.float32), np.full((2, 2, 3, 3), -1, np.int8)
    forward(x.transpose(to_inner), out2, argmax2)
    np.testing.assert_array_equal(out2, out.transpose(to_inner))
    row, col = np.divmod(argmax, 7)  # the flat index in a 5 x 7 plane -> the place in its 2x2 window
    np.testing.assert_array_equal(argmax2, (2 * (row % 2) + col % 2).transpose(to_inner))
    dy = rng.standard_normal(out.shape).astype(np.float32)
    dx = np.empty_like(x)
    maxpool_backward(dy, argmax, dx)
    dx2 = np.full((2, 5, 7, 3), np.nan, np.float32)  # must be overwritten everywhere
    backward(dy.transpose(to_inner), argmax2, dx2)
    np.testing.assert_array_equal(dx2, dx.transpose(to_inner))


@pytest.mark.parametrize("kernel", compiled_and_python(interleave))
def test_interleave_puts_the_batch_innermost(kernel):
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    out = np.full((3, 4, 5, 2), np.nan)
    kernel(x, out)
    np.testing.assert_array_equal(out, x.transpose(1, 2, 3, 0))


@pytest.mark.parametrize("kernel", compiled_and_python(softmax_cross_entropy))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_is_the_log_sum_exp_formula(kernel, dtype):
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((7, 10)) * 5).astype(dtype)
    logits[0] = [1e4, -1e4, 0, 0, 0, 0, 0, 0, 0, 3e3]  # exp would overflow without the shift
    logits[1] = [2, 7, 0, 7, 0, 0, 0, 0, 0, 0]  # a tie: argmax takes the first
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    grad, predicted = np.full_like(logits, np.nan), np.full(7, -1)
    total = kernel(logits, labels, grad, predicted)
    assert grad.dtype == dtype and np.isfinite(total)
    np.testing.assert_array_equal(predicted, logits.argmax(axis=1))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(grad, (np.exp(log_probs) - np.eye(10)[labels]) / 7, rtol=tol, atol=tol)
    assert total == pytest.approx(-log_probs[np.arange(7), labels].sum(), rel=tol)


@njit
def _block(w, bias, x, out):
    """A block of rows (1, 2, 2) (the last repeated) at two vectors from x[1]:
    bias + w[row, 3] * x, stored at row * plane + 1."""
    rows = rows_from(1, 2, 3)
    sums = outer_fma(w, rows, 3, loads(x, 1, 2), row_splats(bias, rows, 2))
    store_rows(out, rows, 2 * lanes(x) + 1, 1, sums)


@pytest.mark.parametrize("kernel", compiled_and_python(_block))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_register_block_loads_multiplies_adds_and_stores_its_rows(kernel, dtype):
    rng = np.random.default_rng(0)
    n = lanes(np.zeros(1, dtype))
    assert n == simd.BYTES // np.dtype(dtype).itemsize
    w, bias = rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal(3).astype(dtype)
    x, plane = rng.standard_normal(2 * n + 3).astype(dtype), 2 * n + 1
    out = np.full(3 * plane + 1, np.nan, dtype)
    kernel(w, bias, x, out)
    expected = np.full_like(out, np.nan)
    for row in (1, 2):
        expected[row * plane + 1:row * plane + 1 + 2 * n] = bias[row] + w[row, 3] * x[1:1 + 2 * n]
    np.testing.assert_allclose(out, expected, rtol=1e-6)  # fused or not, within rounding; NaN where untouched
    assert np.isnan(out[:plane + 1]).all()  # row 0 is not in the block


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="a compile-time check; plain Python has none")
def test_vectors_refuse_a_strided_array():
    x = np.zeros(80, np.float32)[::2]
    with pytest.raises(TypingError, match="contiguous 1-D float arrays"):
        _block(np.zeros((3, 4), np.float32), np.zeros(3, np.float32), x, np.zeros(200, np.float32))


def _f32(*shape):
    return np.zeros(shape, np.float32)


BAD_CALLS = [  # (entry point, arguments, what the one line must say)
    ("conv_forward", lambda: (_f32(3, 3, 40), _f32(6, 3, 5, 5), _f32(6), 1, 0, 8, _f32(6, 3, 40)[:, :, ::2]),
     "conv_forward: out must be C-contiguous"),
    ("conv_forward", lambda: (_f32(3, 3, 40), _f32(6, 2, 5, 5), _f32(6), 1, 0, 8, _f32(6, 3, 40)),
     "conv_forward: w has C = 2, x has C = 3"),
    ("conv_forward", lambda: (_f32(3, 3, 40), _f32(6, 3, 5, 5), _f32(5), 1, 0, 8, _f32(6, 3, 40)),
     "conv_forward: bias has F = 5, w has F = 6"),
    ("conv_forward", lambda: (_f32(3, 3, 40), _f32(6, 3, 5, 5).astype(np.float64), _f32(6), 1, 0, 8, _f32(6, 3, 40)),
     "conv_forward: w is float64, the other float arrays float32"),
    ("conv_input_grad", lambda: (_f32(6, 3, 40), np.asfortranarray(_f32(6, 2, 5, 5)), 1, 0, 8, _f32(2, 3, 40)),
     "conv_input_grad: w must be C-contiguous"),
    ("relu_forward", lambda: (_f32(10), _f32(10), np.zeros(10, np.int8)), "relu_forward: mask must be bool, got int8"),
    ("relu_forward", lambda: (np.zeros(10, np.int64), _f32(10), np.zeros(10, bool)),
     "relu_forward: x must be float32 or float64, got int64"),
    ("maxpool2x2_forward", lambda: (_f32(2, 3, 8, 8), _f32(2, 3, 4, 4), np.zeros((2, 3, 4, 4), np.int64)),
     "maxpool2x2_forward: argmax must be int32, got int64"),
    ("maxpool_backward", lambda: (_f32(2, 3, 4), np.zeros((2, 3, 4, 4), np.int32), _f32(2, 3, 8, 8)),
     "maxpool_backward: dy must be 4-D (N, C, OH, OW), got shape (2, 3, 4)"),
    ("softmax_cross_entropy", lambda: ([[0.0] * 10], np.zeros(1, np.int64), _f32(1, 10), np.zeros(1, np.int64)),
     "softmax_cross_entropy: logits must be a NumPy array, got list"),
    ("interleave", lambda: (_f32(2, 1, 4, 4), _f32(1, 4, 4, 2)[..., :1]), "interleave: out has N = 1, x has N = 2"),
    ("interleave", lambda: (_f32(2, 1, 4, 4),), "interleave: takes 2 arguments (x, out), got 1"),
    ("adam_update", lambda: (_f32(4), _f32(4), _f32(4), np.broadcast_to(_f32(1), (4,)), 0.9, 0.1, 0.999, 0.001, 1e-3,
                             1.0, 1e-8), "adam_update: exp_avg_sq is written to and must be writable"),
]


@pytest.mark.parametrize("name, make_args, message", BAD_CALLS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_CALLS)])
def test_checked_entry_points_say_what_does_not_fit(name, make_args, message):
    with pytest.raises(kernels.KernelArgumentError) as caught:
        getattr(kernels, name)(*make_args())
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_every_public_kernel_is_checked_and_a_good_call_goes_through():
    for name in kernels.__all__[1:]:
        assert getattr(kernels, name).spec, name
    x = np.random.default_rng(0).standard_normal(10).astype(np.float32)
    out, mask = np.empty_like(x), np.empty(10, bool)
    kernels.relu_forward(x, out, mask)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    np.testing.assert_array_equal(mask, x > 0)


@pytest.mark.parametrize("forward", compiled_and_python(relu_forward))
@pytest.mark.parametrize("backward", compiled_and_python(relu_backward))
def test_relu_kernels_cut_in_pieces_cover_every_element(forward, backward):
    """Three pieces and a ragged end, NaN and zeros among them: every element
    once, as NumPy computes it (NaN-prefilled outputs must be overwritten)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(3 * relu.PIECE + 5).astype(np.float32)
    x[::997], x[5::1009] = np.nan, 0
    out, mask = np.full_like(x, np.nan), np.zeros(x.shape, bool)
    forward(x, out, mask)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    np.testing.assert_array_equal(mask, x > 0)
    dy, dx = rng.standard_normal(x.shape).astype(np.float32), np.full_like(x, np.nan)
    dy[7::1013] = np.inf  # inf * 0 is NaN, as in NumPy's dy * mask
    backward(dy, mask, dx)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(dx, dy * mask)


@pytest.mark.parametrize("kernel", compiled_and_python(kernels.gather_batch))
@pytest.mark.parametrize("dtype, normalize", [(np.float32, False), (np.float32, True), (np.float64, True)])
@pytest.mark.parametrize("most", [0, 1, 4])  # the largest shift: none, the default's, --shift's largest
def test_gather_batch_is_preprocess_then_shift_bit_for_bit(kernel, dtype, normalize, most):
    from fastlenet.augment import background
    from fastlenet.data import preprocess, shift_images, standardisation
    rng = np.random.default_rng(most)
    images = rng.integers(0, 256, (9, 28, 28)).astype(np.uint8)
    images[0] = 255  # the extremes
    images[1] = 0
    idx = np.array([4, 0, 8, 4, 1, 2])  # any order, repeats
    shifts = rng.integers(-most, most + 1, (6, 2))
    shifts[0] = most, -most  # a corner moved as far as it goes
    out = np.full((6, 1, 32, 32), np.nan, dtype)
    kernel(images, idx, shifts, *standardisation(normalize), out)
    expected = shift_images(preprocess(images[idx], dtype, normalize), shifts, background(dtype, normalize))
    assert out.dtype == expected.dtype and out.tobytes() == expected.tobytes()
