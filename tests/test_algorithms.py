"""The fast engine's rungs, forced: the convolution's im2col + GEMM at any stride
and direct at stride 1, the pool's window view and direct kernels, each against
the reference on every input layout; LeNet-5's step the same on every rung."""

import numpy as np
import pytest

from fastlenet import fast, reference as ref
from fastlenet.losses import SoftmaxCrossEntropy
from fastlenet.models import LeNet5, forward_backward

from helpers import check_layer_gradients, distinct_values, rel_error
from test_layers import CONV_CASES, POOL_CASES

# how an input may lie in memory: as a user builds it, as an im2col layer leaves it, as a large batch's direct layer
LAYOUTS = {"image-major": lambda a: a,
           "channels-innermost": lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
           "batch-innermost": lambda a: np.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)}

RUNGS = [(case, algorithm) for case in CONV_CASES for algorithm in ("im2col", "direct")
         if algorithm == "im2col" or case[6] == 1]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case, algorithm", RUNGS)
def test_each_algorithm_equals_the_reference(case, algorithm, layout):
    n, cin, cout, h, w, k, s, p = case
    rng = np.random.default_rng(3)
    slow = ref.Conv2D(cin, cout, k, stride=s, padding=p, dtype=np.float64, rng=0)
    quick = fast.Conv2D(cin, cout, k, stride=s, padding=p, dtype=np.float64, rng=0, algorithm=algorithm)
    slow.bias.value[...] = quick.bias.value[...] = rng.standard_normal(cout)
    x = rng.standard_normal((n, cin, h, w))
    y = slow.forward(x)
    assert rel_error(quick.forward(LAYOUTS[layout](x)), y) < 1e-12
    assert quick._direct == (algorithm == "direct") and (quick._cols is None) == (algorithm == "direct")  # the rung ran
    dy = rng.standard_normal(y.shape)
    assert rel_error(quick.backward(LAYOUTS[layout](dy)), slow.backward(dy)) < 1e-12
    assert rel_error(quick.weight.grad, slow.weight.grad) < 1e-12
    assert rel_error(quick.bias.grad, slow.bias.grad) < 1e-12


@pytest.mark.parametrize("case", [c for c in CONV_CASES if c[6] == 1][:4])
def test_im2col_at_stride_one_against_central_differences(case):
    n, cin, cout, h, w, k, s, p = case
    rng = np.random.default_rng(1)
    layer = fast.Conv2D(cin, cout, k, stride=s, padding=p, dtype=np.float64, rng=rng, algorithm="im2col")
    layer.bias.value[...] = rng.standard_normal(cout)
    check_layer_gradients(layer, rng.standard_normal((n, cin, h, w)), rng)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ["im2col", "direct"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_each_pool_algorithm_equals_the_reference(case, algorithm, layout):
    n, c, h, w, k, s = case
    rng = np.random.default_rng(4)
    x = rng.integers(0, 4, (n, c, h, w)).astype(np.float64)  # many ties: the first maximum must win
    slow, quick = ref.MaxPool2D(k, s), fast.MaxPool2D(k, s, algorithm=algorithm)
    y = slow.forward(x)
    assert rel_error(quick.forward(LAYOUTS[layout](x)), y) == 0
    dy = rng.standard_normal(y.shape)
    assert rel_error(quick.backward(LAYOUTS[layout](dy)), slow.backward(dy)) < 1e-15


@pytest.mark.parametrize("case", POOL_CASES)
def test_the_pool_window_rung_against_central_differences(case):
    n, c, h, w, k, s = case
    rng = np.random.default_rng(5)
    check_layer_gradients(fast.MaxPool2D(k, s, algorithm="im2col"), distinct_values(rng, (n, c, h, w)), rng)


def test_the_im2col_rung_hands_its_layout_on():
    """Channels innermost from one im2col layer to the next: the convolution's
    output, the pool's output and both gradients, so nothing is transposed between them."""
    x = np.random.default_rng(6).standard_normal((3, 2, 12, 12))
    conv, pool = fast.Conv2D(2, 4, 3, dtype=np.float64, algorithm="im2col"), fast.MaxPool2D(2, algorithm="im2col")
    y = pool.forward(conv.forward(x))
    dx = conv.backward(pool.backward(np.ones_like(y)))
    for a in (y, pool.backward(np.ones_like(y)), dx):
        assert a.transpose(0, 2, 3, 1).flags.c_contiguous
    assert np.all(conv._cols[:, -1] == 1)  # the bias's column


@pytest.mark.parametrize("batch", [1, 7, 40])  # 40: the direct rung's interleaved layout
def test_a_lenet_step_agrees_across_rungs(batch):
    rng = np.random.default_rng(batch)
    x, labels = rng.random((batch, 1, 32, 32)), rng.integers(0, 10, batch)
    models = {"reference": LeNet5("reference", np.float64, seed=2)}
    models.update({conv: LeNet5("fast", np.float64, seed=2, conv=conv) for conv in ("im2col", "direct", "auto")})
    results = {name: forward_backward(model, SoftmaxCrossEntropy(), x, labels) for name, model in models.items()}
    assert models["im2col"].c3._cols is not None and models["direct"].c3._cols is None
    assert models["im2col"].s4.algorithm == "im2col" and models["direct"].s4.algorithm == "direct"
    for name, model in models.items():
        assert rel_error(results[name][1], results["reference"][1]) < 1e-12, name
        for key, p in model.named_params.items():
            assert rel_error(p.grad, models["reference"].named_params[key].grad) < 1e-10, (name, key)


def test_the_algorithm_is_checked_by_both_backends():
    for backend in (fast, ref):
        with pytest.raises(ValueError, match="Conv2D: algorithm must be one of auto, im2col, direct, got 'gemm'"):
            backend.Conv2D(1, 2, 3, algorithm="gemm")
        with pytest.raises(ValueError, match="MaxPool2D: algorithm must be one of auto, im2col, direct, got 'argmax'"):
            backend.MaxPool2D(2, algorithm="argmax")
        with pytest.raises(ValueError, match=r"algorithm 'direct' needs stride 1 .*got stride=\(2, 2\)"):
            backend.Conv2D(1, 2, 3, stride=2, algorithm="direct")
    assert ref.Conv2D(1, 2, 3, algorithm="im2col").algorithm == "im2col"  # the loops take it, and ignore it
    with pytest.raises(ValueError, match="algorithm must be one of"):
        LeNet5(conv="winograd")
