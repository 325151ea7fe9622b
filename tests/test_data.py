"""Reading, verifying, finding and downloading MNIST, with no internet."""

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
    assert data.search_dirs(tmp_path / "flag") == [tmp_path / "flag", tmp_path / "env",
                                                   tmp_path / "cache" / "fastlenet" / "mnist"]
    monkeypatch.delenv("FASTLENET_DATA")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.search_dirs() == [tmp_path / "home" / ".cache" / "fastlenet" / "mnist"]
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    write_idx(tmp_path / "b" / "t10k-labels-idx1-ubyte", LABELS, compress=False)
    write_idx(tmp_path / "a" / "t10k-labels-idx1-ubyte.gz", LABELS)
    assert data.locate("t10k-labels-idx1-ubyte", [tmp_path / "a", tmp_path / "b"]).name.endswith(".gz")


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


@pytest.fixture
def mirrors(monkeypatch):
    payload = idx_bytes(LABELS)
    Mirror.body = gzip.compress(payload)
    monkeypatch.setitem(data.FILES, NAME, (hashlib.sha256(payload).hexdigest(), (10,)))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    kinds = ("good", "html", "short", "gone", "endless", "drip")
    yield {kind: f"{base}/{kind}/" for kind in kinds} | {"down": "http://127.0.0.1:9/"}
    server.shutdown()


def test_download_skips_bad_mirrors_and_keeps_only_the_good_file(tmp_path, mirrors):
    order = [mirrors["down"], mirrors["gone"], mirrors["html"], mirrors["short"], mirrors["good"]]
    path = data.download(NAME, tmp_path, mirrors=order, retries=1, timeout=5)
    assert path == tmp_path / f"{NAME}.gz"
    np.testing.assert_array_equal(read_idx(path), LABELS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{NAME}.gz"]  # no .part left behind


def test_download_failure_names_every_mirror(tmp_path, mirrors):
    order = [mirrors["down"], mirrors["gone"], mirrors["html"], mirrors["short"]]
    with pytest.raises(DataError) as err:
        data.download(NAME, tmp_path, mirrors=order, retries=2, timeout=5)
    message = str(err.value)
    for url in order:
        assert url + NAME + ".gz" in message
    assert "HTML" in message and "Not Found" in message and "of" in message
    assert list(tmp_path.iterdir()) == []  # nothing kept


def test_a_mirror_that_never_stops_is_cut_at_the_size_the_file_can_be(tmp_path, mirrors):
    start = time.monotonic()
    with pytest.raises(DataError, match=r"endless/t10k-labels-idx1-ubyte.gz \(try 1\): sent more than the 4114 bytes"):
        data.download(NAME, tmp_path, mirrors=[mirrors["endless"]], retries=1, timeout=5)
    assert time.monotonic() - start < 10 and list(tmp_path.iterdir()) == []  # no .part left


def test_a_mirror_that_drips_is_cut_at_the_deadline(tmp_path, mirrors):
    start = time.monotonic()
    with pytest.raises(DataError, match=r"drip/t10k-labels-idx1-ubyte.gz \(try 1\): not done after 1 s"):
        data.download(NAME, tmp_path, mirrors=[mirrors["drip"]], retries=1, timeout=5, deadline=1.0)
    assert time.monotonic() - start < 5 and list(tmp_path.iterdir()) == []


def test_a_killed_downloads_part_file_is_removed_by_the_next(tmp_path, mirrors):
    stale = tmp_path / f".{NAME}.gz.x8k2.part"
    stale.write_bytes(b"half a download")
    data.download(NAME, tmp_path, mirrors=[mirrors["good"]], retries=1, timeout=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{NAME}.gz"]


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
