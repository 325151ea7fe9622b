"""The ladder, per LeNet-5 layer and pass: one group per (layer, pass) with
`impl` = reference | im2col | direct as the parameter, so each group's table
shows what each rung buys; the same for a training step and inference.

    pytest bench/ --benchmark-only --benchmark-group-by=group,param:dtype,param:batch
"""

import numpy as np
import pytest

from fastlenet.augment import distort
from fastlenet.averaging import WeightAverage
from fastlenet.fast import Conv2D
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


@pytest.mark.parametrize("part", ["train-step", "ema-update", "shift", "rotate-scale"])
def test_recipe_costs(benchmark, measure, part):
    """What a recipe adds to a batch-256 float32 step (fast): the weight average's update
    (--ema) and the distortions (--shift; --rotate/--scale), beside the step itself."""
    benchmark.group = "recipe-costs-256"
    model, opt, loss = training_setup("fast", np.float32)
    x, labels = synthetic_batch(256, np.float32)
    rng = np.random.default_rng(0)
    shifts, angles, scales = rng.integers(-2, 3, (256, 2)), rng.uniform(-10, 10, 256), rng.uniform(0.9, 1.1, 256)
    average = WeightAverage(model.params, 0.999)
    parts = {"train-step": lambda: train_step(model, opt, loss, x, labels), "ema-update": average.update,
             "shift": lambda: distort(x, shifts, np.zeros(256), np.ones(256)),
             "rotate-scale": lambda: distort(x, shifts, angles, scales)}
    measure("fast", parts[part])


# (batch, channels, filters, size, kernel, padding), stride 1: LeNet's convolutions and wider ones,
# the shapes behind `auto`'s choice of the direct rung at stride 1 (README, The ladder)
CONV_SHAPES = [(256, 1, 6, 32, 5, 0), (256, 6, 16, 14, 5, 0), (32, 6, 16, 14, 5, 0), (8, 6, 16, 14, 5, 0),
               (32, 3, 16, 32, 3, 1), (32, 16, 32, 16, 3, 1), (32, 32, 64, 16, 3, 1), (32, 64, 64, 8, 3, 1),
               (8, 64, 128, 8, 3, 1), (256, 16, 32, 16, 3, 1)]


@pytest.mark.parametrize("impl", ["im2col", "direct"])
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=["n{}-c{}-f{}-h{}-k{}-p{}".format(*s) for s in CONV_SHAPES])
def test_conv_rung_by_shape(benchmark, measure, shape, impl):
    """A stride-1 convolution's forward and backward on each fast rung, float32."""
    n, c, f, h, k, p = shape
    benchmark.group = "conv-rung-n{}-c{}-f{}-h{}-k{}-p{}".format(*shape)
    rng = np.random.default_rng(0)
    layer = Conv2D(c, f, k, padding=p, algorithm=impl, rng=0)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    dy = gradient_like(layer.forward(x))  # in the memory order the rung's own output has

    def step():
        layer.forward(x)
        layer.backward(dy)
    measure(impl, step)
