"""Reference vs fast, per LeNet-5 layer and pass: one group per (layer, pass)
with `impl` as the parameter, so each group's table shows the speedup.

    pytest bench/ --benchmark-only --benchmark-group-by=group,param:dtype,param:batch
"""

import pytest

from fastlenet.workloads import LAYERS, gradient_like, layer_case, synthetic_batch, train_step, training_setup
from conftest import MATRIX


@MATRIX
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_layer(benchmark, measure, name, direction, impl, dtype, batch):
    benchmark.group = f"{name}-{direction}"
    layer, x = layer_case(name, impl, batch, dtype)
    dy = gradient_like(layer.forward(x))
    measure(impl, (lambda: layer.forward(x)) if direction == "forward" else (lambda: layer.backward(dy)))


@MATRIX
def test_train_step(benchmark, measure, impl, dtype, batch):
    benchmark.group = "lenet5-train-step"
    model, opt, loss = training_setup(impl, dtype)
    x, labels = synthetic_batch(batch, dtype)
    measure(impl, lambda: train_step(model, opt, loss, x, labels))


@MATRIX
def test_inference(benchmark, measure, impl, dtype, batch):
    benchmark.group = "lenet5-inference"
    model, _, _ = training_setup(impl, dtype)
    x, _ = synthetic_batch(batch, dtype)
    measure(impl, lambda: model.forward(x))
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median
