"""LeNet-5 on both backends, the loss and the optimizers."""

import math

import numpy as np
import pytest

from fastlenet.losses import SoftmaxCrossEntropy
from fastlenet.models import LeNet5
from fastlenet.optim import SGD, Adam
from fastlenet.core import Parameter
from fastlenet.fast import RowLayout
from fastlenet.layout import batch_innermost
from helpers import numerical_grad, rel_error


def batch(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 32, 32)).astype(dtype), rng.integers(0, 10, n)


@pytest.mark.parametrize("layout", ["planes", "interleaved"])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_lenet_fast_matches_reference(dtype, tol, layout, monkeypatch):
    """Small batches run image after image; large ones interleaved, where the
    pool, ReLU and flatten in between keep the batch innermost (forced here)."""
    monkeypatch.setattr(RowLayout, "ROWS_FROM", 10**9 if layout == "planes" else 0)
    fast, ref = LeNet5("fast", dtype, seed=3), LeNet5("reference", dtype, seed=3)
    for name, p in fast.named_params.items():
        np.testing.assert_array_equal(p.value, ref.named_params[name].value)
    x, y = batch(5, dtype)
    losses = []
    for model in (fast, ref):
        loss = SoftmaxCrossEntropy()
        losses.append(loss.forward(model.forward(x), y))
        model.backward(loss.backward())
    assert losses[0] == pytest.approx(losses[1], rel=tol)
    for name, p in fast.named_params.items():
        assert p.grad.dtype == dtype
        assert rel_error(p.grad, ref.named_params[name].grad) < tol, name


def test_lenet_gradient_is_the_numerical_gradient():
    model = LeNet5("fast", np.float64, seed=1)
    x, y = batch(2, np.float64, seed=1)
    loss = SoftmaxCrossEntropy()
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())

    def f():
        return loss.forward(model.forward(x), y)

    for name in ("c1.bias", "c3.bias", "f7.weight"):  # small tensors: seconds, not minutes
        p = model.named_params[name]
        analytic = p.grad.copy()
        assert rel_error(analytic, numerical_grad(f, p.value)) < 1e-6, name


def test_lenet_learns_a_fixed_batch():
    model = LeNet5("fast", seed=0)
    x, y = batch(32, np.float32)
    opt, loss = Adam(model.params, lr=1e-2), SoftmaxCrossEntropy()
    first = None
    for _ in range(60):
        value = loss.forward(model.forward(x), y)
        first = value if first is None else first
        model.backward(loss.backward())
        opt.step()
    assert value < 0.05 * first


def test_lenet_state_dict_round_trip_and_errors():
    a, b = LeNet5(seed=0), LeNet5(seed=1)
    assert list(a.state_dict()) == ["c1.weight", "c1.bias", "c3.weight", "c3.bias", "f5.weight", "f5.bias",
                                    "f6.weight", "f6.bias", "f7.weight", "f7.bias"]
    b.load_state_dict(a.state_dict())
    x, _ = batch(2, np.float32)
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    state = a.state_dict()
    state["f5.weight"] = state["f5.weight"][:, :10]
    with pytest.raises(ValueError, match=r"'f5.weight' has shape \(120, 10\), expected \(120, 400\)"):
        b.load_state_dict(state)
    with pytest.raises(ValueError, match=r"missing \['c1.bias'\]"):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "c1.bias"})
    with pytest.raises(TypeError, match="float64, the model is float32"):
        b.load_state_dict(LeNet5(dtype=np.float64).state_dict())


def test_lenet_rejects_unpadded_images():
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 1, 32, 32\).*got \(2, 1, 28, 28\)"):
        LeNet5().forward(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(ValueError, match="backend must be one of"):
        LeNet5("torch")


def test_loss_value_gradient_and_stability():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((4, 10)), rng.integers(0, 10, 4)
    loss = SoftmaxCrossEntropy()
    value = loss.forward(logits, labels)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert value == pytest.approx(-np.log(probs[np.arange(4), labels]).mean(), rel=1e-12)
    analytic = loss.backward()
    assert rel_error(analytic, numerical_grad(lambda: loss.forward(logits, labels), logits)) < 1e-7

    huge = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], np.float32)
    value = loss.forward(huge, np.array([1, 2]))
    grad = loss.backward()
    assert np.isfinite(value) and value == pytest.approx(1e4, rel=1e-6)  # -log softmax = 2e4 / 2 images
    assert np.all(np.isfinite(grad)) and grad.dtype == np.float32


def test_loss_bad_input():
    loss = SoftmaxCrossEntropy()
    with pytest.raises(RuntimeError, match="before forward"):
        loss.backward()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        loss.forward(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="expected logits"):
        loss.forward(np.zeros((2, 3)), np.array([0]))


def test_adam_matches_hand_computed_steps():
    p = Parameter(np.array([1.0, -2.0]))
    opt = Adam([p], lr=0.1)
    p.grad[...] = [0.5, -0.1]
    opt.step()
    # step 1: bias correction makes the update lr * g / (|g| + eps)
    np.testing.assert_allclose(p.value, [1 - 0.1 * 0.5 / (0.5 + 1e-8), -2 + 0.1 * 0.1 / (0.1 + 1e-8)], rtol=1e-14)
    before = p.value.copy()
    p.grad[...] = [0.2, 0.3]
    opt.step()
    for i, (g1, g2) in enumerate([(0.5, 0.2), (-0.1, 0.3)]):
        m = 0.9 * (0.1 * g1) + 0.1 * g2
        v = 0.999 * (0.001 * g1 ** 2) + 0.001 * g2 ** 2
        expected = before[i] - 0.1 / (1 - 0.9 ** 2) * m / (np.sqrt(v) / np.sqrt(1 - 0.999 ** 2) + 1e-8)
        assert p.value[i] == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_kernel_is_numpys_formula_bit_for_bit(dtype):
    """The one-pass kernel against Adam written as NumPy array expressions, same dtype throughout."""
    rng = np.random.default_rng(3)
    p = Parameter(rng.standard_normal((4, 7)).astype(dtype))
    value, m, v = p.value.copy(), np.zeros_like(p.value), np.zeros_like(p.value)
    opt = Adam([p], lr=3e-3, betas=(0.8, 0.99), eps=1e-6)
    for t in range(1, 4):
        p.grad[...] = g = rng.standard_normal((4, 7)).astype(dtype)
        opt.step()
        m = m * 0.8 + (1 - 0.8) * g
        v = v * 0.99 + (1 - 0.99) * g * g
        # math.sqrt: a Python float, so float32 stays float32 as in the optimizer
        value -= 3e-3 / (1 - 0.8 ** t) * m / (np.sqrt(v) / math.sqrt(1 - 0.99 ** t) + 1e-6)
        assert p.value.dtype == dtype
        np.testing.assert_array_equal(p.value, value)
        np.testing.assert_array_equal(opt.exp_avg[0], m)
        np.testing.assert_array_equal(opt.exp_avg_sq[0], v)


def test_adam_refuses_a_strided_parameter():
    p = Parameter(np.zeros((3, 4)))
    p.value = np.zeros((4, 3)).T  # a view a flat update could not write through
    with pytest.raises(ValueError, match="C-contiguous"):
        Adam([p]).step()


def test_sgd_momentum_matches_hand_computed_steps():
    p = Parameter(np.array([1.0]))
    opt = SGD([p], lr=0.1, momentum=0.9)
    for g in (0.5, 0.2):
        p.grad[...] = g
        opt.step()
    assert p.value[0] == pytest.approx(1 - 0.1 * 0.5 - 0.1 * (0.9 * 0.5 + 0.2), rel=1e-15)
    plain = Parameter(np.array([1.0]))
    plain.grad[...] = 0.5
    SGD([plain], lr=0.1).step()
    assert plain.value[0] == 0.95


@pytest.mark.parametrize("make", [lambda ps: Adam(ps, lr=0.01), lambda ps: SGD(ps, lr=0.01, momentum=0.9)])
def test_optimizer_state_round_trip(make):
    rng = np.random.default_rng(0)
    params = [Parameter(rng.standard_normal(3).astype(np.float32)) for _ in range(2)]
    twin = [Parameter(p.value.copy()) for p in params]
    opt = make(params)
    for p in params:
        p.grad[...] = rng.standard_normal(3)
    opt.step()
    clone = make(twin)
    for p, q in zip(params, twin):
        q.value[...] = p.value
        q.grad[...] = p.grad
    clone.load_state_dict(opt.state_dict())
    opt.step(), clone.step()
    for p, q in zip(params, twin):
        np.testing.assert_array_equal(p.value, q.value)
    assert params[0].value.dtype == np.float32
    opt.zero_grad()
    assert not params[0].grad.any()
    bad = opt.state_dict()
    key = "exp_avg" if "exp_avg" in bad else "momentum_buffers"
    bad[key] = bad[key][:1]
    with pytest.raises(ValueError, match=f"'{key}' has 1 arrays for 2 parameters"):
        clone.load_state_dict(bad)


def test_adam_agrees_with_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch is an optional peer (pip install torch==2.13.0)")
    rng = np.random.default_rng(0)
    value, grads = rng.standard_normal(5), rng.standard_normal((3, 5))
    p, tp = Parameter(value.copy()), torch.tensor(value.copy(), requires_grad=True)
    ours, theirs = Adam([p], lr=0.01), torch.optim.Adam([tp], lr=0.01)
    for g in grads:
        p.grad[...] = g
        tp.grad = torch.tensor(g)
        ours.step(), theirs.step()
    np.testing.assert_allclose(p.value, tp.detach().numpy(), rtol=1e-12)


def test_large_batches_flow_batch_innermost_without_copies():
    """From batch 37 both convolutions are interleaved: every 4-D activation after C1
    lies batch-innermost, and C3 reads the ReLU's output in place."""
    model = LeNet5("fast", np.float32, seed=0)
    h, outputs = batch(40, np.float32)[0], []
    for layer in model.layers[:6]:  # c1 s2 relu2 c3 s4 relu4
        h = layer.forward(h)
        outputs.append(h)
    assert all(batch_innermost(a) for a in outputs)
    assert np.shares_memory(model.c3._x_rows, outputs[2])


def test_old_import_paths_still_work():
    import fastlenet.fast
    import fastlenet.layers
    from fastlenet.settings import SettingsError, TrainConfig
    from fastlenet.train import ConfigError, TrainConfig as OldTrainConfig, learning_rate  # noqa: F401
    assert fastlenet.layers is fastlenet.fast and fastlenet.layers.Conv2D is fastlenet.fast.Conv2D
    assert ConfigError is SettingsError and OldTrainConfig is TrainConfig
