"""Fixtures shared by the tests: synthetic IDX files, the real MNIST when present."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from fastlenet.data import MNIST, load_mnist


def idx_bytes(array):
    """An IDX file's bytes for a uint8 array."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def synthetic_mnist(n_train=600, n_test=200, seed=0):
    """Learnable fake digits: each class is a fixed random blob pattern plus noise."""
    rng = np.random.default_rng(seed)
    prototypes = (rng.random((10, 28, 28)) > 0.7) * 200

    def make(n):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.clip(prototypes[labels] + rng.normal(0, 30, (n, 28, 28)), 0, 255).astype(np.uint8)
        return images, labels

    (tr_x, tr_y), (te_x, te_y) = make(n_train), make(n_test)
    return MNIST(tr_x, tr_y, te_x, te_y, Path("synthetic"))


def write_idx(path, array, compress=True):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.fixture(scope="session")
def real_mnist():
    """The genuine MNIST from $FASTLENET_DATA (CI points it at ../shared/mnist)."""
    where = os.environ.get("FASTLENET_DATA")
    if not where or not Path(where).is_dir():
        pytest.skip("real MNIST not available: set FASTLENET_DATA to a folder with the four IDX files")
    return load_mnist(where, download_missing=False)
