"""Reference vs fast, per LeNet-5 layer and pass: one group per (layer, pass)
with `impl` as the parameter, so each group's table shows the speedup.

    pytest bench/ --benchmark-only --benchmark-group-by=group,param:dtype,param:batch
"""

import numpy as np
import pytest

from fastlenet.workloads import LAYERS, layer_case, synthetic_batch, train_step, training_setup
from conftest import warm_up

IMPLS = ["reference", "fast"]
DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
BATCHES = [1, 32, 256]


def run(benchmark, impl, fn):
    """The loops get few rounds (pedantic): seconds per call, and the suite must stay short."""
    if impl == "reference":
        return benchmark.pedantic(fn, rounds=3, iterations=1)
    return benchmark(fn)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_layer(benchmark, record, name, direction, impl, dtype, batch):
    benchmark.group = f"{name}-{direction}"
    layer, x = layer_case(name, impl, batch, dtype)
    y = layer.forward(x)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    fn = (lambda: layer.forward(x)) if direction == "forward" else (lambda: layer.backward(dy))
    record(warm_up(fn))
    run(benchmark, impl, fn)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_train_step(benchmark, record, impl, dtype, batch):
    benchmark.group = "lenet5-train-step"
    model, opt, loss = training_setup(impl, dtype)
    x, labels = synthetic_batch(batch, dtype)
    fn = lambda: train_step(model, opt, loss, x, labels)  # noqa: E731
    record(warm_up(fn))
    run(benchmark, impl, fn)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_inference(benchmark, record, impl, dtype, batch):
    benchmark.group = "lenet5-inference"
    model, _, _ = training_setup(impl, dtype)
    x, _ = synthetic_batch(batch, dtype)
    fn = lambda: model.forward(x)  # noqa: E731
    record(warm_up(fn))
    run(benchmark, impl, fn)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median
