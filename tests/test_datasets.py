"""Fashion-MNIST and KMNIST through train, evaluate, predict, export and import, on
synthetic files pinned as each data set's own (no internet, no real data needed)."""

import dataclasses
import gzip
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from fastlenet import report
from fastlenet.cli import main
from fastlenet.data import TEST_FILES
from fastlenet.datasets import FASHION_MNIST, IdxFile, named
from fastlenet.predict import mnist_style
from fastlenet.settings import SettingsError
from fastlenet.storage import WEIGHTS_NAME, load_model, read_safetensors
from fastlenet.train import TrainConfig, train
from conftest import idx_bytes, synthetic_mnist


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    """A short run on synthetic images that the run takes for Fashion-MNIST, and the
    class names its figures were drawn with."""
    data = dataclasses.replace(synthetic_mnist(), dataset="fashion-mnist")
    out = tmp_path_factory.mktemp("runs") / "fashion"
    drawn = {}
    misclassified = report.plots.misclassified
    report.plots.misclassified = lambda *args: drawn.setdefault("classes", args[-1]) and misclassified(*args)
    try:
        summary = train(TrainConfig(epochs=1, batch_size=64, val_size=100, eval_every=1000, out=str(out), quiet=True,
                                    dataset="fashion-mnist"), data=data)
    finally:
        report.plots.misclassified = misclassified
    return out, data, summary, drawn["classes"]


@pytest.fixture
def fashion_test_files(tmp_path, monkeypatch, fashion_run):
    """The run's test set written as Fashion-MNIST's two test files, and pinned as its own."""
    _, data, _, _ = fashion_run
    for name, array in zip(TEST_FILES, (data.test_images, data.test_labels)):
        gz = gzip.compress(idx_bytes(array))
        (tmp_path / f"{name}.gz").write_bytes(gz)
        monkeypatch.setitem(FASHION_MNIST.files, name, IdxFile(None, array.shape, hashlib.md5(gz).hexdigest()))
    return tmp_path


def test_a_run_records_its_data_set(fashion_run):
    out, _, summary, classes = fashion_run
    assert summary["dataset"] == "fashion-mnist" and classes == FASHION_MNIST.classes
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["dataset"] == "fashion-mnist" and config["data"]["dataset"] == "fashion-mnist"
    assert load_model(out / WEIGHTS_NAME).dataset == "fashion-mnist"
    with pytest.raises(SettingsError, match="cannot change --dataset"):
        train(resume=str(out), changes={"dataset": "mnist"})


def test_the_data_given_must_be_the_data_set_named(tmp_path):
    with pytest.raises(SettingsError, match="--dataset kmnist, but the data given is mnist"):
        train(TrainConfig(epochs=1, out=str(tmp_path / "run"), dataset="kmnist"), data=synthetic_mnist())
    assert not (tmp_path / "run").exists()


def test_evaluating_on_another_data_set_is_refused(fashion_run, capsys):
    out = fashion_run[0]
    assert main(["evaluate", str(out), "--dataset", "mnist"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fastlenet: error: {out} was trained on Fashion-MNIST; its classes are not MNIST's, so "
                   f"--dataset mnist would measure nothing (leave --dataset out, or give fashion-mnist)"]
    assert main(["predict", str(out), "any.png", "--dataset", "kmnist"]) == 1
    assert "was trained on Fashion-MNIST" in capsys.readouterr().err


def test_evaluate_names_the_classes(fashion_run, fashion_test_files, capsys):
    out, data, summary, _ = fashion_run
    assert main(["evaluate", str(out), "--data-dir", str(fashion_test_files)]) == 0
    text = capsys.readouterr().out
    assert f"Fashion-MNIST test accuracy: {summary['test_accuracy']:.2%} ({len(data.test_labels)} images)" in text
    assert "9 Ankle boot" in text and "0 T-shirt/top" in text
    assert main(["evaluate", str(out), "--data-dir", str(fashion_test_files), "--dataset", "fashion-mnist",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "fashion-mnist" and result["classes"] == list(FASHION_MNIST.classes)
    assert result["accuracy"] == summary["test_accuracy"]


def test_predict_names_the_classes(fashion_run, tmp_path, capsys):
    out, data, _, _ = fashion_run
    path = tmp_path / "item.png"
    Image.fromarray(data.test_images[0]).save(path)
    assert main(["predict", str(out), str(path), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert [t["class"] for t in top] == [FASHION_MNIST.classes[t["digit"]] for t in top]
    assert main(["predict", str(out), str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: {top[0]['class']} ({top[0]['probability']:.1%})")


def test_a_drawing_is_placed_as_its_data_set_placed_its_images():
    """A 14 x 7 bar: MNIST fits it in 20 x 20 (then centres its mass), Fashion-MNIST in 28 x 28
    (centring its box): 28 rows by 14 columns, 7 columns of margin each side."""
    pixels = np.zeros((40, 40))
    pixels[3:17, 30:37] = 1.0
    fashion = mnist_style(pixels, fit=FASHION_MNIST.fit, centre=FASHION_MNIST.centre) > 0
    rows, cols = np.flatnonzero(fashion.any(axis=1)), np.flatnonzero(fashion.any(axis=0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (0, 27, 7, 20)
    digit = mnist_style(pixels) > 0
    assert np.flatnonzero(digit.any(axis=1)).size == 20 and np.flatnonzero(digit.any(axis=0)).size == 10


def test_export_and_import_carry_the_data_set(fashion_run, tmp_path, capsys):
    out = fashion_run[0]
    torch_file, imported = tmp_path / "lenet.safetensors", tmp_path / "imported.safetensors"
    assert main(["export", str(out), "--format", "torch", "-o", str(torch_file)]) == 0
    assert main(["import", str(torch_file), "-o", str(imported), "--dataset", "kmnist"]) == 0
    assert load_model(imported).dataset == "kmnist"
    assert read_safetensors(imported)[1]["dataset"] == "kmnist"
    pytest.importorskip("onnx")
    import onnx
    assert main(["export", str(out), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 0
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["dataset"] == "fashion-mnist" and json.loads(props["classes"]) == list(named("fashion-mnist").classes)
