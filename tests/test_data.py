"""Reading, verifying, finding and downloading the data sets, with no internet."""

import gzip
import hashlib
import http.server
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fastlenet import data
from fastlenet.data import DataError, parse_idx, preprocess, read_idx, shift_images, validation_split
from fastlenet.datasets import DATASETS, FASHION_MNIST, TEST_LABELS, IdxFile, named
from conftest import idx_bytes, write_idx

LABELS = np.arange(10, dtype=np.uint8)


@pytest.mark.parametrize("compress", [True, False])
def test_reads_gzipped_and_raw_idx(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    path = write_idx(tmp_path / "x", images, compress)
    np.testing.assert_array_equal(read_idx(path, hashlib.sha256(idx_bytes(images)).hexdigest(), (5, 28, 28)), images)


@pytest.mark.parametrize("payload, message", [
    (b"\x00\x00\x08", "too short for an IDX header"),
    (b"\x12\x34\x08\x01" + b"\x00" * 8, "bad IDX magic 12340801"),
    (b"\x00\x00\x07\x01" + b"\x00" * 8, "bad IDX magic"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "declares 3 dimensions but the file ends inside it"),
    (idx_bytes(LABELS)[:-3], "header says 10 uint8 = 10 bytes of data, the file has 7"),
    (idx_bytes(LABELS) + b"\x00", "the file has 11"),
])
def test_malformed_idx(payload, message):
    with pytest.raises(DataError, match=message):
        parse_idx(payload, "labels")


def test_html_truncated_gzip_and_checksum(tmp_path):
    html = tmp_path / "html.gz"
    html.write_bytes(b"<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    with pytest.raises(DataError, match="is an HTML/XML page, not an IDX file"):
        read_idx(html)
    gz_html = tmp_path / "gz_html.gz"
    gz_html.write_bytes(gzip.compress(b"<html>Access denied</html>"))
    with pytest.raises(DataError, match="bad IDX magic"):
        read_idx(gz_html)
    truncated = tmp_path / "t.gz"
    truncated.write_bytes(gzip.compress(idx_bytes(LABELS))[:-10])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(truncated)
    good = write_idx(tmp_path / "good", LABELS)
    with pytest.raises(DataError, match="SHA-256 of the data is .* expected 0000: not the genuine MNIST file"):
        read_idx(good, "0000")
    with pytest.raises(DataError, match=r"shape \(10,\), expected \(60000,\)"):
        read_idx(good, None, (60000,))


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FASTLENET_DATA", str(tmp_path / "env"))
    assert data.search_dirs(tmp_path / "flag") == [tmp_path / "flag", tmp_path / "env", tmp_path / "env" / "mnist",
                                                   tmp_path / "cache" / "fastlenet" / "mnist"]
    # $FASTLENET_DATA itself is MNIST's folder: the others' files (same names) are in subfolders
    assert data.search_dirs(tmp_path / "flag", "kmnist") == [tmp_path / "flag", tmp_path / "env" / "kmnist",
                                                             tmp_path / "cache" / "fastlenet" / "kmnist"]
    monkeypatch.delenv("FASTLENET_DATA")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.search_dirs() == [tmp_path / "home" / ".cache" / "fastlenet" / "mnist"]
    assert data.search_dirs(None, "fashion-mnist") == [tmp_path / "home" / ".cache" / "fastlenet" / "fashion-mnist"]
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    write_idx(tmp_path / "b" / "t10k-labels-idx1-ubyte", LABELS, compress=False)
    write_idx(tmp_path / "a" / "t10k-labels-idx1-ubyte.gz", LABELS)
    assert data.locate("t10k-labels-idx1-ubyte", [tmp_path / "a", tmp_path / "b"]).name.endswith(".gz")


def test_published_md5_accepts_only_the_file_as_published(tmp_path):
    """Fashion-MNIST and KMNIST are known by their .gz files' MD5s: the same data in another
    gzip wrapper, or uncompressed, cannot be told genuine and is refused, saying why."""
    published = write_idx(tmp_path / "published.gz", LABELS)
    md5 = hashlib.md5(published.read_bytes()).hexdigest()
    np.testing.assert_array_equal(read_idx(published, None, (10,), md5, "KMNIST"), LABELS)
    rewrapped = tmp_path / "rewrapped.gz"
    rewrapped.write_bytes(gzip.compress(idx_bytes(LABELS), compresslevel=1, mtime=1))
    with pytest.raises(DataError, match=f"MD5 of the file is .*, expected {md5} \\(as published\\): not the "
                                        f"genuine KMNIST file"):
        read_idx(rewrapped, None, (10,), md5, "KMNIST")
    raw = write_idx(tmp_path / "raw", LABELS, compress=False)
    with pytest.raises(DataError, match="this file is not gzipped, so it cannot be: use the .gz file as published"):
        read_idx(raw, None, (10,), md5, "KMNIST")
    # MNIST has both: its published .gz, or its data in any wrapper
    sha = hashlib.sha256(idx_bytes(LABELS)).hexdigest()
    for path in (published, rewrapped, raw):
        np.testing.assert_array_equal(read_idx(path, sha, (10,), md5), LABELS)
    with pytest.raises(DataError, match="SHA-256 of the data is .*: not the genuine MNIST file"):
        read_idx(rewrapped, "0" * 64, (10,), md5)


def test_every_data_set_is_pinned():
    """Four files of MNIST's names and shapes each, every one with a published MD5; distinct."""
    md5s = [f.md5 for ds in DATASETS.values() for f in ds.files.values()]
    assert len(set(md5s)) == 12 and all(len(m) == 32 for m in md5s)
    for ds in DATASETS.values():
        assert {n: f.shape for n, f in ds.files.items()} == {n: f.shape for n, f in data.FILES.items()}
        assert len(ds.classes) == 10 and ds.mirrors and ds.name == named(ds.name).name
    assert FASHION_MNIST.classes[9] == "Ankle boot"
    with pytest.raises(DataError, match="unknown data set 'cifar10'; data sets are: mnist, fashion-mnist, kmnist"):
        named("cifar10")


def test_mnist_is_not_taken_for_another_data_set(real_mnist):
    """The same file names: the checksums tell them apart."""
    path = data.locate(TEST_LABELS, [real_mnist.directory])
    for name in ("fashion-mnist", "kmnist"):
        ds = named(name)
        with pytest.raises(DataError, match=f"not the genuine {ds.title} file|cannot be"):
            read_idx(path, *ds.files[TEST_LABELS], ds.title)


def test_preprocess_pads_and_scales():
    images = np.full((2, 28, 28), 255, np.uint8)
    x = preprocess(images)
    assert x.shape == (2, 1, 32, 32) and x.dtype == np.float32
    assert x[:, :, 2:30, 2:30].min() == 1.0 and x[:, :, :2].max() == 0 and x[:, :, :, 30:].max() == 0
    assert preprocess(images, np.float64).dtype == np.float64
    z = preprocess(np.zeros((1, 28, 28), np.uint8), normalize=True)
    assert z[0, 0, 0, 0] == pytest.approx(-0.1307 / 0.3081, rel=1e-6)


def test_shift_images_moves_without_wrapping():
    x = np.zeros((3, 1, 5, 5), np.float32)
    x[:, 0, 1, 3] = 1.0  # one lit pixel per image
    x[2, 0, 4, 4] = 2.0  # and one in the corner of the last image, which a shift pushes out
    out = shift_images(x, np.array([[0, 0], [2, -1], [1, 1]]))
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out[0], x[0])
    assert out[1, 0, 3, 2] == 1.0 and out[1].sum() == 1.0  # two down, one left
    assert out[2, 0, 2, 4] == 1.0 and out[2].sum() == 1.0  # the corner pixel is gone, not wrapped round
    assert x[1, 0, 1, 3] == 1.0  # the input is untouched


def test_validation_split_is_seeded_and_disjoint():
    train, val = validation_split(100, 10, seed=3)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    again = validation_split(100, 10, seed=3)
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, validation_split(100, 10, seed=4)[1])
    with pytest.raises(DataError, match="validation size"):
        validation_split(100, 100, 0)


# --- downloads, against servers on 127.0.0.1 ------------------------------------------------

NAME = "t10k-labels-idx1-ubyte"


class Mirror(http.server.BaseHTTPRequestHandler):
    """/good/ serves the file, /html/ an error page, /short/ a truncated body, /gone/ 404."""

    body = b""

    def do_GET(self):
        kind = self.path.split("/")[1]
        if kind == "gone":
            self.send_error(404)
            return
        if kind in ("endless", "drip"):  # no Content-Length, and a body that never ends
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\x1f" * (1 << 16) if kind == "endless" else b"\x1f")
                    self.wfile.flush()
                    if kind == "drip":
                        time.sleep(0.1)
            except OSError:  # the client gave up
                return
        body = {"good": self.body, "html": b"<html><body>Access denied</body></html>",
                "short": self.body}[kind]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if kind == "short" else body)

    def log_message(self, *args):
        pass


def pin(monkeypatch, ds, name, gz, shape):
    """Data set `ds` knows the file `name` as `gz`: MNIST by its data's SHA-256, the others
    by the MD5 of the .gz, as each is published."""
    spec = (IdxFile(hashlib.sha256(gzip.decompress(gz)).hexdigest(), shape) if ds.files[name].sha256
            else IdxFile(None, shape, hashlib.md5(gz).hexdigest()))
    monkeypatch.setitem(ds.files, name, spec)


@pytest.fixture(params=list(DATASETS))
def mirrors(request, monkeypatch):
    """Loopback mirrors of every kind, serving one small file that the data set named
    urls["dataset"] is made to know as its genuine NAME."""
    Mirror.body = gzip.compress(idx_bytes(LABELS))
    pin(monkeypatch, named(request.param), NAME, Mirror.body, (10,))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    kinds = ("good", "html", "short", "gone", "endless", "drip")
    yield {kind: f"{base}/{kind}/" for kind in kinds} | {"down": "http://127.0.0.1:9/", "dataset": request.param}
    server.shutdown()


def test_download_skips_bad_mirrors_and_keeps_only_the_good_file(tmp_path, mirrors):
    order = [mirrors["down"], mirrors["gone"], mirrors["html"], mirrors["short"], mirrors["good"]]
    path = data.download(NAME, tmp_path, mirrors=order, retries=1, timeout=5, dataset=mirrors["dataset"])
    assert path == tmp_path / f"{NAME}.gz"
    np.testing.assert_array_equal(read_idx(path), LABELS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{NAME}.gz"]  # no .part left behind


def test_download_failure_names_every_mirror(tmp_path, mirrors):
    order = [mirrors["down"], mirrors["gone"], mirrors["html"], mirrors["short"]]
    with pytest.raises(DataError) as err:
        data.download(NAME, tmp_path, mirrors=order, retries=2, timeout=5, dataset=mirrors["dataset"])
    message = str(err.value)
    for url in order:
        assert url + NAME + ".gz" in message
    assert "HTML" in message and "Not Found" in message and "of" in message
    assert list(tmp_path.iterdir()) == []  # nothing kept


def test_a_mirror_that_never_stops_is_cut_at_the_size_the_file_can_be(tmp_path, mirrors):
    start = time.monotonic()
    with pytest.raises(DataError, match=r"endless/t10k-labels-idx1-ubyte.gz \(try 1\): sent more than the 4114 bytes"):
        data.download(NAME, tmp_path, mirrors=[mirrors["endless"]], retries=1, timeout=5, dataset=mirrors["dataset"])
    assert time.monotonic() - start < 10 and list(tmp_path.iterdir()) == []  # no .part left


def test_a_mirror_that_drips_is_cut_at_the_deadline(tmp_path, mirrors):
    start = time.monotonic()
    with pytest.raises(DataError, match=r"drip/t10k-labels-idx1-ubyte.gz \(try 1\): not done after 1 s"):
        data.download(NAME, tmp_path, mirrors=[mirrors["drip"]], retries=1, timeout=5, deadline=1.0,
                      dataset=mirrors["dataset"])
    assert time.monotonic() - start < 5 and list(tmp_path.iterdir()) == []


def test_a_killed_downloads_part_file_is_removed_by_the_next(tmp_path, mirrors):
    stale = tmp_path / f".{NAME}.gz.x8k2.part"
    stale.write_bytes(b"half a download")
    data.download(NAME, tmp_path, mirrors=[mirrors["good"]], retries=1, timeout=5, dataset=mirrors["dataset"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{NAME}.gz"]



class Files(http.server.BaseHTTPRequestHandler):
    """Serves `files` (URL path -> bytes); 404 for anything else."""

    files = {}

    def do_GET(self):
        if self.path not in self.files:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.files[self.path])))
        self.end_headers()
        self.wfile.write(self.files[self.path])

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("name", list(DATASETS))
def test_each_data_set_downloads_into_its_own_folder(tmp_path, monkeypatch, name):
    """"{dataset}" in $FASTLENET_MIRRORS stands for the data set's name; its files land in
    the first folder searched that can be written, its own, and are read as that data set."""
    ds, labels = named(name), np.array([3, 1, 4], np.uint8)
    images = np.random.default_rng(len(name)).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    Files.files = {}
    for file, array in ((data.TEST_FILES[0], images), (data.TEST_FILES[1], labels)):
        gz = gzip.compress(idx_bytes(array))
        pin(monkeypatch, ds, file, gz, array.shape)
        Files.files[f"/{name}/{file}.gz"] = gz
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("FASTLENET_DATA", str(tmp_path / "not-a-folder"))  # its <name> subfolder cannot be made
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    port = server.server_address[1]
    monkeypatch.setenv("FASTLENET_MIRRORS", f"http://127.0.0.1:9/,http://127.0.0.1:{port}/{{dataset}}/")
    try:
        got = data.load_mnist(test_only=True, dataset=name)
    finally:
        server.shutdown()
    assert got.dataset == name and got.directory == tmp_path / "cache" / "fastlenet" / name
    np.testing.assert_array_equal(got.test_images, images)
    np.testing.assert_array_equal(got.test_labels, labels)


@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist"])
def test_real_data_set_is_genuine(name):
    """Runs where the genuine files are in $FASTLENET_DATA/<name> or the user cache."""
    if not all(data.locate(f, data.search_dirs(None, name)) for f in data.FILES):
        pytest.skip(f"{name} not available: put its four .gz files in $FASTLENET_DATA/{name}")
    got = data.load_mnist(download_missing=False, dataset=name)
    assert got.train_images.shape == (60000, 28, 28) and got.test_images.shape == (10000, 28, 28)
    assert np.bincount(got.test_labels).tolist() == [1000] * 10  # both are balanced


BOMB = """
import sys, zlib
from fastlenet.data import FILES, DataError, read_idx
name = "train-labels-idx1-ubyte"
path = sys.argv[1] + "/" + name + ".gz"
with open(path, "wb") as f:  # 512 MB of zeros behind a valid header, in about 0.5 MB
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    f.write(z.compress(bytes.fromhex("0000080100" + "00ea60")))
    block = bytes(1 << 20)
    for _ in range(512):
        f.write(z.compress(block))
    f.write(z.flush())
try:
    read_idx(path, *FILES[name])
except DataError as e:
    print(e)
# VmHWM, the peak of this process's own memory (ru_maxrss would count the parent's, from before exec)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) // 1024)
"""


def test_a_gzip_bomb_is_refused_at_the_size_of_the_data(tmp_path):
    """Peak memory of a fresh process, not a timing: inflating it all would take 512 MB."""
    result = subprocess.run([sys.executable, "-c", BOMB, str(tmp_path)], capture_output=True, text=True,
                            timeout=120, check=True)
    message, peak_mb = result.stdout.strip().splitlines()
    assert message == ("train-labels-idx1-ubyte.gz: inflates past 60008 bytes, the size of its data: not this file "
                       "(a gzip bomb?)")
    assert int(peak_mb) < 150, f"peak RSS {peak_mb} MB"


def test_missing_files_message_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTLENET_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="(?s)Searched: .*flag.*To install by hand, put the MNIST files train-images"):
        data.find_or_download(tmp_path / "flag", mirrors=["http://127.0.0.1:9/"])
    with pytest.raises(DataError, match="MNIST files missing"):
        data.find_or_download(tmp_path / "flag", download_missing=False)


def test_real_mnist_is_genuine(real_mnist):
    assert real_mnist.train_images.shape == (60000, 28, 28) and real_mnist.test_images.shape == (10000, 28, 28)
    assert np.bincount(real_mnist.test_labels).tolist()[:3] == [980, 1135, 1032]
