"""Every layer of both backends: gradients against central differences (float64),
fast against reference on random shapes, dtypes, and the errors bad input gets."""

import numpy as np
import pytest

from fastlenet import fast
from fastlenet import layout
from fastlenet import reference as ref
from helpers import check_layer_gradients, distinct_values, rel_error

BACKENDS = [pytest.param(ref, id="reference"), pytest.param(fast, id="fast")]

# (batch, in_ch, out_ch, height, width, kernel, stride, padding): batch 1,
# odd sizes, non-square images, kernels 1/3/5, paddings 0/1/2, and strides 1/2,
# that is both fast algorithms: direct (stride 1) and im2col + GEMM (stride 2);
# more than six channels or filters, rows shorter and longer than a register block
# interleaved rows of 45 positions: longer than a block of 64-byte vectors (32 float32), not a multiple
WIDE_ROWS = (5, 3, 7, 8, 9, 3, 1, 1)
CONV_CASES = [
    WIDE_ROWS,
    (2, 3, 4, 9, 8, 5, 1, 1),
    (1, 8, 2, 6, 7, 3, 1, 2),
    (1, 1, 1, 5, 5, 1, 1, 0),
    (1, 1, 2, 7, 9, 3, 1, 0),
    (2, 3, 4, 7, 7, 3, 2, 1),
    (3, 2, 3, 9, 6, 5, 1, 2),
    (1, 2, 2, 11, 11, 5, 2, 2),
    (2, 1, 6, 8, 8, 5, 1, 0),
    (2, 3, 2, 6, 5, 1, 2, 1),
    (1, 4, 3, 5, 7, 3, 2, 0),
    (3, 2, 8, 9, 9, 3, 1, 1),
]
# (batch, channels, height, width, kernel, stride): overlapping windows (stride < kernel),
# windows that leave a ragged edge, batch 1
POOL_CASES = [
    (1, 1, 4, 4, 2, None),
    (2, 3, 7, 9, 2, None),
    (1, 2, 6, 6, 3, 2),
    (3, 1, 5, 8, 3, 1),
    (2, 2, 9, 7, 3, None),
]


@pytest.fixture(params=["planes", "interleaved"])
def row_layout(request, monkeypatch):
    """The direct convolution's two layouts: the size threshold forced either way."""
    monkeypatch.setattr(fast.RowLayout, "ROWS_FROM", 10**9 if request.param == "planes" else 0)
    return request.param


def batch_innermost_copy(x):
    """x with the same values, laid out as a large batch's convolution output: (C, H, W, N) in memory."""
    return np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)


def conv_pair(case, dtype, seed=0):
    n, cin, cout, h, w, k, s, p = case
    layers = [mod.Conv2D(cin, cout, k, stride=s, padding=p, dtype=dtype, rng=seed) for mod in (ref, fast)]
    rng = np.random.default_rng(seed)
    for layer in layers:  # non-zero bias so that it is checked too
        layer.bias.value[...] = rng.standard_normal(cout) if layer is layers[0] else layers[0].bias.value
    x = np.random.default_rng(seed + 1).standard_normal((n, cin, h, w)).astype(dtype)
    return layers, x


def conv_gradients(backend, case):
    n, cin, cout, h, w, k, s, p = case
    rng = np.random.default_rng(1)
    layer = backend.Conv2D(cin, cout, k, stride=s, padding=p, dtype=np.float64, rng=rng)
    layer.bias.value[...] = rng.standard_normal(cout)
    check_layer_gradients(layer, rng.standard_normal((n, cin, h, w)), rng)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_gradients_fast(case, row_layout):
    conv_gradients(fast, case)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_gradients_reference(case):  # once: the layouts are the fast backend's
    conv_gradients(ref, case)


@pytest.mark.parametrize("direct_weight_grad", [1 << 40, 0], ids=["gemm-weight-grad", "direct-weight-grad"])
def test_linear_gradients_on_a_batch_innermost_input(direct_weight_grad):
    """The fast Linear's 1x1-convolution path: more than six outputs, rows of 19;
    its weight gradient by one GEMM and, from DIRECT_WEIGHT_GRAD, as a product of rows."""
    rng = np.random.default_rng(10)
    layer = fast.Linear(20, 13, dtype=np.float64, rng=rng)
    layer.DIRECT_WEIGHT_GRAD = direct_weight_grad
    layer.bias.value[...] = rng.standard_normal(13)
    check_layer_gradients(layer, np.asfortranarray(rng.standard_normal((19, 20))), rng)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", POOL_CASES)
def test_pool_gradients(backend, case):
    n, c, h, w, k, s = case
    rng = np.random.default_rng(2)
    check_layer_gradients(backend.MaxPool2D(k, s), distinct_values(rng, (n, c, h, w)), rng)


@pytest.mark.parametrize("backend", BACKENDS)
def test_relu_flatten_linear_gradients(backend):
    rng = np.random.default_rng(3)
    check_layer_gradients(backend.ReLU(), distinct_values(rng, (2, 3, 5, 7)), rng)
    check_layer_gradients(backend.Flatten(), rng.standard_normal((2, 3, 5, 7)), rng)
    layer = backend.Linear(7, 5, dtype=np.float64, rng=rng)
    layer.bias.value[...] = rng.standard_normal(5)
    check_layer_gradients(layer, rng.standard_normal((3, 7)), rng)


def assert_close(a, b, dtype):
    assert a.dtype == b.dtype == dtype
    assert a.shape == b.shape
    tol = 1e-10 if dtype == np.float64 else 1e-5
    scale = max(float(np.max(np.abs(a), initial=0.0)), 1e-30)
    assert np.max(np.abs(a.astype(np.float64) - b), initial=0.0) <= tol * scale


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_fast_matches_reference(case, dtype, row_layout):
    (slow, quick), x = conv_pair(case, dtype)
    assert_close(quick.forward(x), slow.forward(x), dtype)
    g = np.random.default_rng(5).standard_normal(slow._out_shape).astype(dtype)
    assert_close(quick.backward(g), slow.backward(g), dtype)
    for p_fast, p_ref in zip(quick.params, slow.params):
        assert_close(p_fast.grad, p_ref.grad, dtype)


@pytest.mark.parametrize("case", [(3, 2, 4, 8, 8, 5, 1, 0), (2, 3, 2, 6, 5, 3, 1, 2)])
def test_conv_on_a_batch_innermost_input(case, row_layout):
    """A convolution's input as the pool before it leaves a large batch: read in
    place (no padding) or copied once into padded rows."""
    (slow, quick), x = conv_pair(case, np.float64)
    x_inner = batch_innermost_copy(x)
    assert_close(quick.forward(x_inner), slow.forward(x), np.float64)
    g = np.random.default_rng(5).standard_normal(slow._out_shape)
    assert_close(quick.backward(batch_innermost_copy(g)), slow.backward(g), np.float64)
    for p_fast, p_ref in zip(quick.params, slow.params):
        assert_close(p_fast.grad, p_ref.grad, np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pool_fast_matches_reference(case, dtype):
    n, c, h, w, k, s = case
    # integers in a small range: plenty of ties, which must go to the first maximum
    x = np.random.default_rng(6).integers(0, 4, (n, c, h, w)).astype(dtype)
    slow, quick = ref.MaxPool2D(k, s), fast.MaxPool2D(k, s)
    y = slow.forward(x)
    assert_close(quick.forward(x), y, dtype)
    g = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
    dx_ref, dx_fast = slow.backward(g), quick.backward(g)
    assert_close(dx_fast, dx_ref, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, kernel, stride", [((3, 2, 7, 9), 2, None), ((2, 1, 4, 4), 2, None),
                                                   ((4, 3, 6, 5), 3, 2)])
def test_pool_on_a_batch_innermost_input(shape, kernel, stride, dtype):
    """Ties and ragged edges included; a 2x2 pool keeps the batch innermost for the next layer."""
    x = np.random.default_rng(11).integers(0, 4, shape).astype(dtype)
    slow, quick = ref.MaxPool2D(kernel, stride), fast.MaxPool2D(kernel, stride)
    y_fast, y_ref = quick.forward(batch_innermost_copy(x)), slow.forward(x)
    assert_close(y_fast, y_ref, dtype)
    assert fast.batch_innermost(y_fast) == (kernel == 2)
    g = np.random.default_rng(12).standard_normal(y_ref.shape).astype(dtype)
    for grad in (g, batch_innermost_copy(g)):  # whatever layout the gradient comes in
        assert_close(quick.backward(grad), slow.backward(grad), dtype)
    check_layer_gradients(fast.MaxPool2D(kernel, stride), batch_innermost_copy(distinct_values(
        np.random.default_rng(13), shape)), np.random.default_rng(14))


def test_relu_and_flatten_keep_a_batch_innermost_layout():
    rng = np.random.default_rng(15)
    x = batch_innermost_copy(rng.standard_normal((3, 4, 5, 5)))
    relu, flatten = fast.ReLU(), fast.Flatten()
    y = relu.forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert fast.batch_innermost(y)
    flatten.forward(y)
    g = rng.standard_normal((3, 100))
    dy = flatten.backward(g)
    np.testing.assert_array_equal(dy, g.reshape(3, 4, 5, 5))
    assert fast.same_order(dy, x)  # so the ReLU takes its one-pass kernel
    for grad in (dy, np.ascontiguousarray(dy)):
        np.testing.assert_array_equal(relu.backward(grad), grad * (x > 0))


def test_flat_views_memory_in_order():
    a = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(fast.flat(a.transpose(2, 0, 1)), np.arange(24.0))
    assert fast.flat(a[:, :, :2]) is None  # not one dense block
    assert fast.flat(a.T.T) is not None


def test_aligned_empty_starts_large_arrays_on_a_cache_line():
    for _ in range(20):  # malloc's placement varies; every one must come out aligned
        a = layout.aligned_empty((6, 14, 3584), np.float32)
        assert a.shape == (6, 14, 3584) and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % layout.CACHE_LINE == 0
    small = layout.aligned_empty((3, 5), np.int32)  # below ALIGN_FROM: plain np.empty
    assert small.shape == (3, 5) and small.dtype == np.int32
    assert layout.aligned_empty((0, 4), np.float64).shape == (0, 4)


@pytest.mark.parametrize("transpose", [(0, 1, 2, 3), (3, 0, 1, 2), (0, 2, 1, 3)])
def test_aligned_empty_like_keeps_memory_order(transpose):
    base = np.zeros((4, 16, 64, 64), np.float32)  # 1 MB, 256 kB as bools: both aligned
    a = base.transpose(transpose)
    for dtype in (None, np.bool_):
        like = layout.aligned_empty_like(a, dtype)
        assert like.shape == a.shape and like.dtype == (dtype or a.dtype)
        assert fast.same_order(like, a) and fast.flat(like) is not None
        assert like.ctypes.data % layout.CACHE_LINE == 0


def test_lenet_buffers_start_on_cache_lines():
    """What the kernels stream at batch 256 starts on a cache line: each conv's
    packed input (C3's is the ReLU's output, read in place), conv outputs and
    pool gradients (the convs' upstream gradients, read in place)."""
    from fastlenet.models import LeNet5
    model = LeNet5("fast", np.float32, seed=0)
    h = np.random.default_rng(16).random((256, 1, 32, 32), np.float32)
    outputs = []
    for layer in model.layers:
        h = layer.forward(h)
        outputs.append(h)
    c1_out, c3_out = outputs[0], outputs[3]
    s2, s4 = model.layers[1], model.layers[4]
    dy1, dy3 = s2.backward(np.ones_like(outputs[1])), s4.backward(np.ones_like(outputs[4]))
    for a in (model.c1._x_rows, model.c3._x_rows, c1_out, c3_out, dy1, dy3):
        assert a.ctypes.data % layout.CACHE_LINE == 0


def test_pool_tie_goes_to_first_maximum():
    x = np.ones((1, 1, 2, 2))
    for backend in (ref, fast):
        pool = backend.MaxPool2D(2)
        pool.forward(x)
        np.testing.assert_array_equal(pool.backward(np.full((1, 1, 1, 1), 3.0)), [[[[3.0, 0.0], [0.0, 0.0]]]])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relu_linear_fast_matches_reference(dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 9)).astype(dtype)
    g = rng.standard_normal((4, 5)).astype(dtype)
    slow, quick = ref.Linear(9, 5, dtype=dtype, rng=1), fast.Linear(9, 5, dtype=dtype, rng=1)
    assert_close(quick.forward(x), slow.forward(x), dtype)
    assert_close(quick.backward(g), slow.backward(g), dtype)
    for a, b in zip(quick.params, slow.params):
        assert_close(a.grad, b.grad, dtype)
    r1, r2 = ref.ReLU(), fast.ReLU()
    assert_close(r2.forward(x), r1.forward(x), dtype)
    assert_close(r2.backward(x), r1.backward(x), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch", [7, 37, 48])  # rows shorter and longer than a register block; 48 splits in 16
@pytest.mark.parametrize("direct_weight_grad", [1 << 40, 0], ids=["gemm-weight-grad", "direct-weight-grad"])
def test_linear_after_a_batch_innermost_flatten_returns_its_order(dtype, batch, direct_weight_grad):
    """A large batch's pool output, flattened, is (N, IN) with the batch
    innermost; the fast Linear computes it as a 1x1 convolution, its output
    and gradient come back batch-innermost, and Flatten passes the gradient
    on as the view of the pool's layout, without a copy."""
    rng = np.random.default_rng(9)
    x = batch_innermost_copy(rng.standard_normal((batch, 4, 3, 3)).astype(dtype))
    g = rng.standard_normal((batch, 8)).astype(dtype)
    flatten, quick, slow = fast.Flatten(), fast.Linear(36, 8, dtype=dtype, rng=1), ref.Linear(36, 8, dtype=dtype, rng=1)
    quick.DIRECT_WEIGHT_GRAD = direct_weight_grad
    quick.bias.value[...] = slow.bias.value[...] = rng.standard_normal(8)
    h = flatten.forward(x)
    y = quick.forward(h)
    assert_close(y, slow.forward(x.reshape(batch, 36)), dtype)
    assert fast.batch_innermost(y)
    dh = quick.backward(g)
    assert_close(dh, slow.backward(g), dtype)
    assert fast.same_order(dh, h)
    dx = flatten.backward(dh)
    assert np.shares_memory(dx, dh) and fast.batch_innermost(dx)
    for a, b in zip(quick.params, slow.params):
        assert_close(a.grad, b.grad, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_relu_fast_equals_reference_on_zeros_and_nan(dtype, strided):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 4, 6, 5)).astype(dtype).transpose(0, 1, 3, 2)  # a strided NCHW view
    x[0, 0, 0, :3] = [0.0, -0.0, np.nan]
    g = rng.standard_normal((3, 4, 6, 5)).astype(dtype).transpose(0, 1, 3, 2)
    g[1, 1, 1, 1] = np.inf
    if not strided:
        x, g = np.ascontiguousarray(x), np.ascontiguousarray(g)
    slow, quick = ref.ReLU(), fast.ReLU()
    y = quick.forward(x)
    np.testing.assert_array_equal(y, slow.forward(x))  # NaN where NaN: a diverging run stays visible
    assert y.dtype == dtype and np.isnan(y[0, 0, 0, 2])
    np.testing.assert_array_equal(quick.backward(g), slow.backward(g))


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_grad_can_be_skipped(backend):
    conv = backend.Conv2D(1, 2, 3, dtype=np.float64, rng=0)
    y = conv.forward(np.ones((1, 1, 5, 5)))
    full_dw = (conv.backward(np.ones_like(y)), conv.weight.grad.copy())[1]
    conv.input_grad = False
    assert conv.backward(np.ones_like(y)) is None
    np.testing.assert_array_equal(conv.weight.grad, full_dw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_dtype_is_input_dtype(backend, dtype):
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(dtype)
    for layer in (backend.Conv2D(1, 2, 3, dtype=dtype), backend.MaxPool2D(2), backend.ReLU(), backend.Flatten()):
        y = layer.forward(x)
        assert y.dtype == dtype and layer.backward(np.ones_like(y)).dtype == dtype
    lin = backend.Linear(4, 3, dtype=dtype)
    y = lin.forward(x[:, 0, 0, :4])
    assert y.dtype == dtype and lin.backward(np.ones_like(y)).dtype == dtype
    assert lin.weight.grad.dtype == dtype


def test_same_rng_gives_same_weights_in_both_backends():
    a, b = ref.Conv2D(3, 4, 5, rng=11), fast.Conv2D(3, 4, 5, rng=11)
    np.testing.assert_array_equal(a.weight.value, b.weight.value)
    assert a.weight.value.std() == pytest.approx(np.sqrt(2 / 75), rel=0.2)  # He: sqrt(2 / fan_in)


@pytest.mark.parametrize("backend", BACKENDS)
class TestBadInput:
    def test_integer_input(self, backend):
        for layer in (backend.Conv2D(1, 1, 3), backend.MaxPool2D(), backend.ReLU(), backend.Linear(3, 2)):
            with pytest.raises(TypeError, match="float32 or float64"):
                layer.forward(np.ones((1, 1, 3, 3), np.int64))

    def test_dtype_mismatch(self, backend):
        with pytest.raises(TypeError, match="float64 does not match .*float32"):
            backend.Conv2D(1, 1, 3).forward(np.ones((1, 1, 4, 4)))

    def test_wrong_ndim(self, backend):
        with pytest.raises(ValueError, match=r"Conv2D.*4-D input \(N, C, H, W\), got shape \(4, 4\)"):
            backend.Conv2D(1, 1, 3).forward(np.ones((4, 4), np.float32))
        with pytest.raises(ValueError, match=r"Linear.*2-D input"):
            backend.Linear(3, 2).forward(np.ones((1, 1, 3), np.float32))

    def test_wrong_channels(self, backend):
        with pytest.raises(ValueError, match=r"expected 3 input channels, got shape \(2, 1, 8, 8\)"):
            backend.Conv2D(3, 1, 3).forward(np.ones((2, 1, 8, 8), np.float32))
        with pytest.raises(ValueError, match="expected 3 input features"):
            backend.Linear(3, 2).forward(np.ones((2, 4), np.float32))

    def test_smaller_than_kernel(self, backend):
        with pytest.raises(ValueError, match="smaller than the kernel 5x5"):
            backend.Conv2D(1, 1, 5).forward(np.ones((1, 1, 4, 8), np.float32))
        with pytest.raises(ValueError, match="smaller than the window 2x2"):
            backend.MaxPool2D(2).forward(np.ones((1, 1, 1, 8), np.float32))

    def test_backward_before_forward(self, backend):
        for layer in (backend.Conv2D(1, 1, 3), backend.MaxPool2D(), backend.ReLU(), backend.Linear(3, 2),
                      backend.Flatten()):
            with pytest.raises(RuntimeError, match="backward called before forward"):
                layer.backward(np.ones((1, 1, 1, 1), np.float32))

    def test_gradient_of_wrong_shape(self, backend):
        conv = backend.Conv2D(1, 2, 3)
        conv.forward(np.ones((1, 1, 5, 5), np.float32))
        with pytest.raises(ValueError, match=r"gradient shape \(1, 2, 2, 2\) does not match .*\(1, 2, 3, 3\)"):
            conv.backward(np.ones((1, 2, 2, 2), np.float32))
        pool = backend.MaxPool2D()
        pool.forward(np.ones((1, 1, 4, 4), np.float32))
        with pytest.raises(ValueError, match="MaxPool2D"):
            pool.backward(np.ones((1, 1, 4, 4), np.float32))

    def test_bad_constructor_arguments(self, backend):
        with pytest.raises(ValueError, match="kernel_size and stride must be >= 1"):
            backend.Conv2D(1, 1, 0)
        with pytest.raises(ValueError, match="padding >= 0"):
            backend.Conv2D(1, 1, 3, padding=-1)
        with pytest.raises(TypeError, match="float32 or float64"):
            backend.Linear(2, 2, dtype=np.int32)


def test_layouts_are_named_by_order():
    x = np.zeros((4, 3, 5, 5), np.float32)
    assert layout.order(x) == layout.IMAGE_MAJOR
    assert layout.order(batch_innermost_copy(x)) == layout.BATCH_INNERMOST
    assert layout.order(batch_innermost_copy(x).reshape(4, -1)) == layout.BATCH_INNERMOST  # Flatten's view keeps it
    assert layout.order(x[:, :, ::2]) == layout.STRIDED
    assert layout.order(x[:1]) == layout.IMAGE_MAJOR  # one image: nothing to interleave
