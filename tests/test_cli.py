"""The command line as a user meets it: one-line errors, evaluate, predict, data."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastlenet.cli import main
from fastlenet.evaluation import predict_proba
from fastlenet.models import LeNet5
from fastlenet.predict import mnist_style
from fastlenet.storage import load_model, save_model, save_tensors
from fastlenet.train import TrainConfig, train


def run_cli(*args, env=None):
    """Runs `python -m fastlenet ARGS` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "fastlenet", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


def one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastlenet: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, real_mnist):
    """A LeNet-5 trained briefly on real MNIST (about 97 % on the test set, in seconds)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    train(TrainConfig(epochs=1, limit_train=30000, batch_size=64, eval_every=1000, out=str(out), quiet=True,
                      lr_schedule="constant", lr=1e-3, shift=0), data=real_mnist)  # one epoch: the spec's rate
    return out


def test_weights_that_are_not_ours(tmp_path, capsys):
    cases = {}
    cases["random.safetensors"] = np.random.default_rng(0).bytes(4096)
    cases["model.pkl"] = pickle.dumps({"c1.weight": np.zeros(3)})
    cases["empty.safetensors"] = b""
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    other = LeNet5().state_dict()
    save_tensors(tmp_path / "other.safetensors", other, {"architecture": "resnet18", "dtype": "float32"})
    del other["f7.bias"]
    save_tensors(tmp_path / "missing.safetensors", other, {"architecture": "lenet5", "dtype": "float32"})
    shapes = LeNet5().state_dict()
    shapes["c1.weight"] = np.zeros((6, 1, 3, 3), np.float32)
    save_tensors(tmp_path / "shape.safetensors", shapes, {"architecture": "lenet5", "dtype": "float32"})
    save_tensors(tmp_path / "dtype.safetensors", LeNet5().state_dict(), {"architecture": "lenet5", "dtype": "float64"})
    good = tmp_path / "good.safetensors"
    save_model(good, LeNet5())
    good_bytes = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(good_bytes[:len(good_bytes) // 2])
    expected = {
        "random.safetensors": "not a valid safetensors file",
        "model.pkl": "never loads pickles",
        "empty.safetensors": "not a valid safetensors file",
        "other.safetensors": "architecture 'resnet18', expected 'lenet5'",
        "missing.safetensors": "missing ['f7.bias']",
        "shape.safetensors": "'c1.weight' has shape (6, 1, 3, 3), expected (6, 1, 5, 5)",
        "dtype.safetensors": "is float32, the model is float64",
        "truncated.safetensors": "not a valid safetensors file",
        "absent.safetensors": "cannot read",
    }
    for name, message in expected.items():
        assert main(["predict", str(tmp_path / name), "x.png"]) == 1, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (name, err)


def test_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Exploit()))
    one_line_error(run_cli("evaluate", evil), "never loads pickles")
    assert not marker.exists()


def test_bad_out_and_missing_data(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(run_cli("train", "--out", blocker), "exists and is not a directory")
    one_line_error(run_cli("train", "--out", blocker / "run"), "cannot write there")
    one_line_error(run_cli("train", "--epochs", "0", "--out", tmp_path / "r"), "--epochs must be >= 1, got 0")
    assert not (tmp_path / "r").exists()
    env = {k: v for k, v in os.environ.items() if k != "FASTLENET_DATA"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), FASTLENET_MIRRORS="http://127.0.0.1:9/")
    one_line_error(run_cli("data", "--data-dir", tmp_path / "nothing", env=env), "MNIST files missing")
    result = run_cli("train", "--data-dir", tmp_path / "nothing", "--out", tmp_path / "r2", env=env)
    assert "http://127.0.0.1:9/train-images-idx3-ubyte.gz" in result.stderr
    assert "To install by hand" in result.stderr and "Traceback" not in result.stderr


def test_data_command_verifies(real_mnist):
    result = run_cli("data", "--data-dir", real_mnist.directory)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("genuine (checksum verified)") == 4 and "60000x28x28" in result.stdout
    assert result.stdout.startswith("MNIST: searched, in order: ")
    one_line_error(run_cli("data", "--dataset", "fashion-mnist", "--data-dir", real_mnist.directory),
                   "not the genuine Fashion-MNIST file")


def test_evaluate_prints_table_and_json(trained):
    table = run_cli("evaluate", trained)
    assert table.returncode == 0, table.stderr
    assert "test accuracy:" in table.stdout and "true\\pred" in table.stdout
    result = json.loads(run_cli("evaluate", trained / "model.safetensors", "--json").stdout)
    summary = json.loads((trained / "summary.json").read_text())
    assert result["accuracy"] == summary["test_accuracy"] > 0.95
    assert np.array(result["confusion_matrix"]).sum() == 10000


def drawn(digit, mode="L"):
    """An MNIST digit as a person would draw it: dark ink on white, larger, off-centre."""
    canvas = np.full((120, 90), 255, np.uint8)
    big = np.asarray(Image.fromarray(255 - digit).resize((84, 84)))
    canvas[20:104, 3:87] = big
    im = Image.fromarray(canvas)
    if mode == "RGBA":
        rgba = np.zeros((120, 90, 4), np.uint8)
        rgba[..., 3] = 255 - canvas  # ink only in the alpha channel, transparent background
        im = Image.fromarray(rgba, "RGBA")
    elif mode == "I;16":
        im = Image.fromarray(canvas.astype(np.uint16) * 257)
    return im


def test_predict_reads_mnist_digits_as_images(tmp_path, trained, real_mnist):
    paths, labels = [], []
    for i in range(30):
        mode = ["L", "RGBA", "I;16"][i % 3]
        path = tmp_path / f"digit{i}.png"
        drawn(real_mnist.test_images[i], mode).save(path)
        paths.append(path)
        labels.append(int(real_mnist.test_labels[i]))
    jpeg = tmp_path / "digit.jpg"
    drawn(real_mnist.test_images[0]).convert("RGB").save(jpeg, quality=90)
    result = run_cli("predict", trained, *paths, jpeg, "--json")
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    top = [p["top"][0]["digit"] for p in predictions]
    assert sum(t == y for t, y in zip(top, labels)) >= 27  # 90 % of redrawn digits
    assert top[-1] == labels[0]
    for p in predictions:  # three distinct digits, most probable first, from a trained model's confident softmax
        probs = [t["probability"] for t in p["top"]]
        assert len({t["digit"] for t in p["top"]}) == 3 and probs == sorted(probs, reverse=True) and probs[0] > 0.5
    text = run_cli("predict", trained, paths[0])
    assert text.stdout.startswith(f"{paths[0]}: {labels[0]} (")


def test_predict_bad_images(tmp_path, trained):
    (tmp_path / "text.png").write_text("this is not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("1", (10000, 5000)).save(tmp_path / "huge.png")
    Image.new("L", (40, 40), 255).save(tmp_path / "blank.png")
    one_line_error(run_cli("predict", trained, tmp_path / "text.png"), "not a readable image")
    one_line_error(run_cli("predict", trained, tmp_path / "empty.png"), "empty file")
    one_line_error(run_cli("predict", trained, tmp_path / "huge.png"), "10000x5000 pixels is over the limit")
    one_line_error(run_cli("predict", trained, tmp_path / "blank.png"), "no digit found")


def test_predict_reports_each_bad_image_and_still_reads_the_good_ones(tmp_path, trained, real_mnist):
    good = [tmp_path / f"good{k}.png" for k in range(2)]
    for k, path in enumerate(good):
        drawn(real_mnist.test_images[k]).save(path)
    (tmp_path / "bad.png").write_text("not an image")
    images = [good[0], tmp_path / "bad.png", good[1]]
    text = run_cli("predict", trained, *images)
    assert text.returncode == 1 and "Traceback" not in text.stderr
    assert text.stderr.strip().splitlines() == [f"fastlenet: error: {tmp_path / 'bad.png'}: not a readable image "
                                                f"(cannot identify image file '{tmp_path / 'bad.png'}')"]
    assert [line.split(":")[0] for line in text.stdout.splitlines()] == [str(good[0]), str(good[1])]
    result = run_cli("predict", trained, *images, "--json")
    entries = json.loads(result.stdout)
    assert result.returncode == 1 and [sorted(e) for e in entries] == [["image", "top"], ["error", "image"],
                                                                        ["image", "top"]]


def test_predict_turns_a_sideways_photo_upright(tmp_path, trained, real_mnist):
    """A phone stores a photo as the sensor saw it and says in EXIF how to turn it."""
    model = load_model(trained / "model.safetensors")

    def read_as(image):
        pixels = np.asarray(image.convert("L"), np.float64) / 255
        return int(predict_proba(model, mnist_style(pixels)[None]).argmax())

    k = next(i for i in range(200) if read_as(drawn(real_mnist.test_images[i])) == real_mnist.test_labels[i]
             != read_as(drawn(real_mnist.test_images[i]).transpose(Image.Transpose.ROTATE_90)))
    sideways = drawn(real_mnist.test_images[k]).transpose(Image.Transpose.ROTATE_90)  # misread as it is
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    sideways.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    result = json.loads(run_cli("predict", trained, tmp_path / "photo.jpg", "--json").stdout)
    assert result[0]["top"][0]["digit"] == real_mnist.test_labels[k]


def test_predict_reads_light_ink_on_a_transparent_layer(tmp_path, trained, real_mnist):
    digit = np.asarray(drawn(real_mnist.test_images[0]))
    rgba = np.zeros(digit.shape + (4,), np.uint8)
    rgba[..., :3] = 255  # white ink ...
    rgba[..., 3] = 255 - digit  # ... only where the digit is: the rest transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "chalk.png")
    result = json.loads(run_cli("predict", trained, tmp_path / "chalk.png", "--json").stdout)
    assert result[0]["top"][0]["digit"] == real_mnist.test_labels[0]


def test_evaluate_needs_only_the_test_files(tmp_path, trained, real_mnist):
    only_test = tmp_path / "test-only"
    only_test.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        found = next(p for p in real_mnist.directory.iterdir() if p.name.startswith(name))
        (only_test / found.name).write_bytes(found.read_bytes())
    env = dict(os.environ, FASTLENET_MIRRORS="http://127.0.0.1:9/", XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("FASTLENET_DATA", None)
    result = run_cli("evaluate", trained, "--data-dir", only_test, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] == json.loads((trained / "summary.json").read_text())["test_accuracy"]
    assert sorted(p.name for p in only_test.iterdir()) == sorted(p.name for p in only_test.iterdir()
                                                                 if p.name.startswith("t10k"))  # nothing fetched
