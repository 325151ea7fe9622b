"""Sequential: a user's own CNN from the same layers, on both backends, agreeing."""

import numpy as np
import pytest

from fastlenet import layers, reference
from fastlenet.losses import SoftmaxCrossEntropy
from fastlenet.models import LeNet5
from fastlenet.optim import Adam

from helpers import distinct_values, numerical_grad, rel_error


def small_cnn(L, dtype=np.float64, seed=0):
    """Not LeNet: 8 channels, a stride-2 padded conv, a 3x3 pool at stride 2, two classes' worth of logits."""
    rng = np.random.default_rng(seed)
    return L.Sequential(
        ("conv1", L.Conv2D(3, 8, 3, stride=2, padding=1, dtype=dtype, rng=rng)), ("relu1", L.ReLU()),
        ("pool", L.MaxPool2D(3, stride=2)),
        ("conv2", L.Conv2D(8, 5, 2, dtype=dtype, rng=rng)), ("relu2", L.ReLU()),
        ("flatten", L.Flatten()), ("head", L.Linear(5 * 2 * 2, 4, dtype=dtype, rng=rng)))


def test_a_small_cnn_agrees_across_backends_and_with_central_differences():
    fast, ref = small_cnn(layers), small_cnn(reference)
    x = distinct_values(np.random.default_rng(1), (3, 3, 13, 13))  # odd sizes, 3 images
    g = np.random.default_rng(2).standard_normal((3, 4))
    y_fast, y_ref = fast.forward(x), ref.forward(x)
    assert y_fast.shape == (3, 4) and rel_error(y_fast, y_ref) < 1e-12
    dx_fast, dx_ref = fast.backward(g), ref.backward(g)
    assert rel_error(dx_fast, dx_ref) < 1e-12
    for name, p in fast.named_params.items():
        assert rel_error(p.grad, ref.named_params[name].grad) < 1e-12, name
    objective = lambda: float(np.sum(fast.forward(x) * g))  # noqa: E731
    assert rel_error(dx_fast, numerical_grad(objective, x)) < 1e-7
    weight = fast.conv1.weight
    analytic = weight.grad.copy()
    assert rel_error(analytic, numerical_grad(objective, weight.value)) < 1e-7


def test_a_small_cnn_trains_with_adam_on_either_backend():
    rng = np.random.default_rng(3)
    x = rng.random((16, 3, 13, 13)).astype(np.float32)
    labels = rng.integers(0, 4, 16)
    for L in (layers, reference):
        net, loss = small_cnn(L, np.float32), SoftmaxCrossEntropy()
        opt = Adam(net.params, lr=1e-2)
        first = loss.forward(net.forward(x), labels)
        for _ in range(40):
            value = loss.forward(net.forward(x), labels)
            net.backward(loss.backward())
            opt.step()
        assert value < 0.2 * first, L.__name__


def test_names_attributes_and_state_dict():
    net = layers.Sequential(layers.Linear(3, 2, rng=0), layers.ReLU(), ("out", layers.Linear(2, 1, rng=1)))
    assert net.layer_names == ["0", "1", "out"] and net.out is net.layers[2]
    assert list(net.state_dict()) == ["0.weight", "0.bias", "out.weight", "out.bias"]
    assert net.params == [net.layers[0].weight, net.layers[0].bias, net.out.weight, net.out.bias]
    other = layers.Sequential(layers.Linear(3, 2, rng=5), layers.ReLU(), ("out", layers.Linear(2, 1, rng=6)))
    other.load_state_dict(net.state_dict())
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(other.forward(x), net.forward(x))
    with pytest.raises(ValueError, match=r"Sequential.load_state_dict: not a state of this network: missing \['out.bias'\]"):
        other.load_state_dict({k: v for k, v in net.state_dict().items() if k != "out.bias"})
    with pytest.raises(AttributeError, match="no attribute or layer 'conv'"):
        net.conv  # noqa: B018


def test_bad_layers_are_refused_by_name():
    with pytest.raises(ValueError, match=r"layer names must differ, got \['a', 'a'\]"):
        layers.Sequential(("a", layers.ReLU()), ("a", layers.ReLU()))
    with pytest.raises(TypeError, match="layer '1' has no forward/backward"):
        layers.Sequential(layers.ReLU(), np.zeros(3))


def test_backward_returns_none_when_the_first_layer_computes_no_input_gradient():
    model = LeNet5(seed=0)
    assert model.layer_names[0] == "c1" and model.c1.input_grad is False
    logits = model.forward(np.zeros((2, 1, 32, 32), np.float32))
    assert model.backward(np.ones_like(logits)) is None
    assert reference.Sequential is layers.Sequential
