"""A trained LeNet-5 out of fastlenet and back: ONNX checked by ONNX Runtime, PyTorch's
state_dict both ways (safetensors), and what does not fit refused by name."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from fastlenet.cli import main
from fastlenet.data import preprocess
from fastlenet.errors import WeightsError
from fastlenet.export import TORCH_NAMES, from_torch, to_onnx, to_torch
from fastlenet.models import LeNet5
from fastlenet.storage import load_model, save_model
from conftest import synthetic_mnist


def lenet(seed=3, normalize=False):
    """A LeNet5 with biases that are not zero, so that every tensor is checked."""
    model = LeNet5("fast", np.float32, seed=seed)
    rng = np.random.default_rng(seed)
    for p in model.params:
        if p.value.ndim == 1:
            p.value[...] = rng.normal(0, 0.1, p.value.shape)
    model.normalize = normalize
    return model


def mnist_test_images(real_or_none, n):
    """n MNIST test images (uint8, 28 x 28): the real ones when on disk, else synthetic."""
    images = real_or_none.test_images if real_or_none is not None else synthetic_mnist(10, 1000).test_images
    return images[:n]


@pytest.fixture
def mnist_or_none(request):
    try:
        return request.getfixturevalue("real_mnist")
    except pytest.skip.Exception:
        return None


@pytest.mark.parametrize("normalize", [False, True])
def test_onnx_runtime_gives_fastlenets_logits(tmp_path, mnist_or_none, normalize):
    onnx = pytest.importorskip("onnx", reason="the ONNX extra: pip install -e '.[onnx]'")
    ort = pytest.importorskip("onnxruntime", reason="the ONNX extra: pip install -e '.[onnx]'")
    model = lenet(normalize=normalize)
    to_onnx(model, tmp_path / "model.onnx")
    graph = onnx.load(tmp_path / "model.onnx")
    onnx.checker.check_model(graph, full_check=True)
    assert [i.name for i in graph.graph.input] == ["image"] and [o.name for o in graph.graph.output] == ["logits"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # any batch size
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 1000):
        images = mnist_test_images(mnist_or_none, n)
        (logits,) = session.run(["logits"], {"image": images})
        expected = model.forward(preprocess(images, np.float32, normalize))
        assert logits.shape == (n, 10) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_the_export_command_writes_each_format(tmp_path, capsys):
    save_model(tmp_path / "w.safetensors", lenet())
    assert main(["export", str(tmp_path / "w.safetensors"), "--format", "torch", "-o", str(tmp_path / "t.st")]) == 0
    back = from_torch(tmp_path / "t.st")
    for name, a in lenet().state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name], a)
    assert main(["export", str(tmp_path / "missing.safetensors"), "--format", "torch", "-o", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.safetensors: cannot read" in err[0]


TORCH_LENET = """
import torch.nn as nn
lenet = nn.Sequential(
    nn.Conv2d(1, 6, 5), nn.MaxPool2d(2), nn.ReLU(),
    nn.Conv2d(6, 16, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
    nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
"""


def torch_lenet():
    """The README's PyTorch LeNet-5, as a user copies it."""
    space = {}
    exec(TORCH_LENET, space)
    return space["lenet"]


def test_the_readme_gives_the_pytorch_module_used_here():
    from pathlib import Path
    assert TORCH_LENET.strip() in (Path(__file__).parents[1] / "README.md").read_text()


def test_pytorch_weights_both_ways(tmp_path, mnist_or_none, capsys):
    torch = pytest.importorskip("torch", reason="PyTorch is an optional peer (pip install -e '.[compare]')")
    from safetensors.torch import load_file, save_file as torch_save_file
    torch.manual_seed(0)
    net = torch_lenet()
    data = synthetic_mnist(64, 10)
    x = torch.from_numpy(preprocess(data.train_images))
    y = torch.from_numpy(data.train_labels.astype(np.int64))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(5):  # a few steps of training in PyTorch
        optimizer.zero_grad()
        nn_loss = torch.nn.functional.cross_entropy(net(x), y)
        nn_loss.backward()
        optimizer.step()
    torch_save_file(net.state_dict(), str(tmp_path / "lenet.safetensors"))
    assert main(["import", str(tmp_path / "lenet.safetensors"), "-o", str(tmp_path / "weights.safetensors")]) == 0
    imported = load_model(tmp_path / "weights.safetensors")
    images = preprocess(mnist_test_images(mnist_or_none, 1000))
    with torch.no_grad():
        theirs = net(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(imported.forward(images), theirs, rtol=1e-5, atol=1e-5)

    ours = lenet(seed=5)
    to_torch(ours, tmp_path / "out.safetensors")
    other = torch_lenet()
    other.load_state_dict(load_file(str(tmp_path / "out.safetensors")))
    with torch.no_grad():
        np.testing.assert_allclose(other(torch.from_numpy(images)).numpy(), ours.forward(images), rtol=1e-5,
                                   atol=1e-5)

    torch.save(net.state_dict(), tmp_path / "lenet.pt")  # a pickle: never loaded
    assert main(["import", str(tmp_path / "lenet.pt"), "-o", str(tmp_path / "no.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "never loads pickles" in err and "safetensors.torch.save_file" in err


def torch_like_tensors(**changes):
    tensors = {TORCH_NAMES[name]: a for name, a in lenet().state_dict().items()}
    tensors.update(changes)
    return {k: v for k, v in tensors.items() if v is not None}


@pytest.mark.parametrize("changes, message", [
    ({"0.weight": None}, "missing 0.weight"),
    ({"conv1.weight": np.zeros(3, np.float32)}, "unknown conv1.weight"),
    ({"3.weight": np.zeros((16, 6, 3, 3), np.float32)}, "'3.weight' has shape (16, 6, 3, 3), expected (16, 6, 5, 5)"),
    ({"11.bias": np.zeros(10, np.float64)}, "'11.bias' is float64, expected float32"),
    ({"9.bias": np.full(84, np.nan, np.float32)}, "'9.bias' holds NaN or infinite values"),
])
def test_pytorch_weights_that_do_not_fit_are_refused_by_name(tmp_path, capsys, changes, message):
    save_file(torch_like_tensors(**changes), str(tmp_path / "lenet.safetensors"))
    assert main(["import", str(tmp_path / "lenet.safetensors"), "-o", str(tmp_path / "w.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastlenet: error: ") and message in err[0], err
    assert not (tmp_path / "w.safetensors").exists()


def test_imported_weights_carry_the_preprocessing_said(tmp_path):
    save_file(torch_like_tensors(), str(tmp_path / "lenet.safetensors"))
    assert main(["import", str(tmp_path / "lenet.safetensors"), "-o", str(tmp_path / "w.safetensors"),
                 "--normalize"]) == 0
    assert load_model(tmp_path / "w.safetensors").normalize
    with pytest.raises(WeightsError, match="not a fastlenet weights file"):  # a PyTorch file is not ours as it is
        load_model(tmp_path / "lenet.safetensors")
