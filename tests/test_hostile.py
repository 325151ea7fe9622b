"""Arbitrary bytes into the IDX reader and the weights loader: a valid result or the
documented exception, nothing else."""

import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastlenet.data import DataError, parse_idx, read_idx
from fastlenet.errors import WeightsError
from fastlenet.models import LeNet5
from fastlenet.storage import atomic_write, json_text, load_model, save_model

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def idx_header(type_code, dims):
    return struct.pack(">HBB", 0, type_code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


@FAST
@given(st.binary(max_size=512))
def test_idx_parser_on_arbitrary_bytes(payload):
    try:
        array = parse_idx(payload)
    except DataError:
        return
    assert array.size * array.dtype.itemsize == len(payload) - 4 - 4 * array.ndim


@FAST
@given(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]), st.lists(st.integers(0, 6), min_size=1, max_size=3),
       st.integers(-8, 8))
def test_idx_parser_on_plausible_headers(type_code, dims, slack):
    itemsize = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}[type_code]
    expected = int(np.prod(dims)) * itemsize
    body = bytes(max(0, expected + slack))
    try:
        array = parse_idx(idx_header(type_code, dims) + body)
    except DataError:
        assert len(body) != expected
        return
    assert list(array.shape) == dims and len(body) == expected


def test_idx_reader_refuses_huge_headers(tmp_path):
    path = tmp_path / "huge.gz"
    path.write_bytes(gzip.compress(idx_header(0x08, [4_000_000_000, 28, 28])))
    try:
        read_idx(path)
    except DataError as e:
        assert "header says" in str(e)
    else:
        raise AssertionError("a header promising 3 TB was accepted")


@FAST
@given(st.binary(max_size=2048))
def test_weights_loader_on_arbitrary_bytes(tmp_path, content):
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    try:
        load_model(path)
    except WeightsError:
        pass


@FAST
@given(st.data())
def test_weights_loader_on_corrupted_real_files(tmp_path, data):
    path = tmp_path / "w.safetensors"
    save_model(path, LeNet5())
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    path.write_bytes(bytes(raw[:cut]))
    try:
        model = load_model(path)
    except WeightsError:
        return
    assert all(p.value.shape == q.value.shape for p, q in zip(model.params, LeNet5().params))


@pytest.mark.parametrize("first_bytes", [b"\x80", b"PK"])
def test_a_genuine_file_whose_header_length_looks_like_a_pickle_loads(tmp_path, first_bytes):
    """The safetensors header length is the file's first 8 bytes: it may start like a pickle
    (0x80) or a zip ('PK'). Found when a longer run config moved a checkpoint's header there."""
    model, path = LeNet5(seed=0), tmp_path / "model.safetensors"
    for pad in range(20000):
        save_model(path, model, {"note": "x" * pad})
        if path.read_bytes()[:len(first_bytes)] == first_bytes:
            break
    else:
        pytest.fail("no padding gave that header length")
    assert load_model(path).forward(np.zeros((1, 1, 32, 32), np.float32)).shape == (1, 10)


def data_section(raw):
    (length,) = struct.unpack("<Q", raw[:8])
    return 8 + length, len(raw)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_corrupted_tensor_bytes_are_refused_naming_the_file(tmp_path, where):
    """The bytes of a tensor carry no structure safetensors could check: the digest does."""
    path = tmp_path / "model.safetensors"
    save_model(path, LeNet5())
    raw = bytearray(path.read_bytes())
    start, end = data_section(raw)
    at = {"first": start, "middle": (start + end) // 2, "last": end - 64}[where]
    raw[at:at + 64] = bytes(b ^ 0x5A for b in raw[at:at + 64])
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match=f"{path}: corrupt: its tensors do not match the digest"):
        load_model(path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(tmp_path, value):
    model = LeNet5()
    model.f6.weight.value[3, 7] = value
    save_model(tmp_path / "w.safetensors", model)
    with pytest.raises(WeightsError, match="'f6.weight' holds 1 NaN or infinite values; weights must be finite"):
        load_model(tmp_path / "w.safetensors")


def test_the_same_weights_give_the_same_bytes_in_every_process(tmp_path):
    """The safetensors library orders its header's metadata differently in each process."""
    script = ("import sys; from fastlenet.models import LeNet5; from fastlenet.storage import save_model; "
              "m = LeNet5(seed=3); m.normalize = True; save_model(sys.argv[1], m, {'note': 'same'})")
    files = [tmp_path / f"{k}.safetensors" for k in range(3)]
    for f in files:
        subprocess.run([sys.executable, "-c", script, str(f)], check=True)
    assert len({f.read_bytes() for f in files}) == 1
    assert load_model(files[0]).normalize


def test_a_fifo_given_as_weights_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    result = subprocess.run([sys.executable, "-m", "fastlenet", "evaluate", str(fifo)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"fastlenet: error: {fifo}: not a regular file (a folder, a FIFO "
                                                  f"or a device); weights are a .safetensors file"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "out.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == mode


def test_json_output_is_always_json():
    text = json_text({"accuracy": float("nan"), "per_class": [1.0, float("inf"), -float("inf")], "n": 3})
    assert json.loads(text) == {"accuracy": None, "per_class": [1.0, None, None], "n": 3}
    assert "NaN" not in text and "Infinity" not in text
