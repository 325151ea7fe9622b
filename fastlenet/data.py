"""The data sets' IDX files: find, download, verify, read and preprocess them (which
data sets there are, and how each is recognised: datasets.py)."""

import gzip
import hashlib
import os
import struct
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .datasets import MNIST as MNIST_SET
from .datasets import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, named
from .errors import DataError

FILES = MNIST_SET.files  # name -> IdxFile(sha256, shape, md5): MNIST's, as before there were others

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
MAX_IDX_BYTES = 1 << 31  # far above any of the data sets; refuses absurd headers before allocating
PART = ".part"  # a download in progress
GZIP_MAGIC = b"\x1f\x8b"


def default_cache_dir(name="mnist"):
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastlenet" / name


def search_dirs(data_dir=None, name="mnist"):
    """Where data set `name` is looked for, in order: --data-dir, $FASTLENET_DATA/<name>
    (and, for MNIST, $FASTLENET_DATA itself: its folder before there were other data
    sets), the user cache's <name> folder."""
    dirs = [data_dir]
    if env := os.environ.get("FASTLENET_DATA"):
        dirs += [env] * (name == "mnist") + [os.path.join(env, name)]
    return [Path(d).expanduser() for d in dirs + [default_cache_dir(name)] if d]


def payload_size(shape):
    """Bytes of the IDX payload of a uint8 array of `shape` (every file of the data sets): header + data."""
    return 4 + 4 * len(shape) + int(np.prod(shape, dtype=np.int64))


def _payload(path, name, limit):
    """The IDX bytes of a file: gunzipped if it is gzip, refused if it is HTML or would hold
    more than `limit` bytes. Never reads or inflates more than limit + 1 bytes."""
    with open(path, "rb") as f:
        if f.read(2) == GZIP_MAGIC:
            f.seek(0)
            return inflate(f, name, limit)
        f.seek(0)
        raw = f.read(limit + 1)
    head = raw[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
        raise DataError(f"{name}: is an HTML/XML page, not an IDX file (a mirror's error page?)")
    if len(raw) > limit:
        raise DataError(f"{name}: more than the {limit} bytes its data can be")
    return raw


def inflate(f, name, limit):
    """A gzip stream (one member or several) -> its bytes, refused one byte past `limit`:
    a file that inflates without end (a "gzip bomb") costs no more than its real size."""
    out, member, started = bytearray(), zlib.decompressobj(16 + zlib.MAX_WBITS), False
    try:
        while chunk := f.read(1 << 16):
            while chunk:
                started = True
                out += member.decompress(chunk, limit + 1 - len(out))
                if len(out) > limit:
                    raise DataError(f"{name}: inflates past {limit} bytes, the size of its data: not this file "
                                    f"(a gzip bomb?)")
                chunk = member.unconsumed_tail
                if member.eof:  # another member may follow
                    chunk, member, started = member.unused_data, zlib.decompressobj(16 + zlib.MAX_WBITS), False
    except zlib.error as e:
        raise DataError(f"{name}: corrupt or truncated gzip ({e})") from None
    if started and not member.eof:
        raise DataError(f"{name}: corrupt or truncated gzip (the stream ends inside it)")
    return bytes(out)


def parse_idx(payload, name="IDX data"):
    """IDX bytes -> ndarray, checking the magic, the dimensions and the size."""
    if len(payload) < 4:
        raise DataError(f"{name}: {len(payload)} bytes is too short for an IDX header")
    zero, type_code, ndim = struct.unpack(">HBB", payload[:4])
    if zero != 0 or type_code not in IDX_TYPES:
        raise DataError(f"{name}: bad IDX magic {payload[:4].hex()} (expected 0000 08 0N)")
    if ndim == 0 or len(payload) < 4 + 4 * ndim:
        raise DataError(f"{name}: IDX header declares {ndim} dimensions but the file ends inside it")
    dims = struct.unpack(f">{ndim}I", payload[4:4 + 4 * ndim])
    dtype = np.dtype(IDX_TYPES[type_code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(payload) - 4 - 4 * ndim
    if expected > MAX_IDX_BYTES or got != expected:
        raise DataError(f"{name}: header says {'x'.join(map(str, dims))} {dtype.name} = {expected} bytes of data, "
                        f"the file has {got} (truncated or not this file)")
    return np.frombuffer(payload, dtype, offset=4 + 4 * ndim).reshape(dims)


def read_idx(path, expected_sha256=None, expected_shape=None, expected_md5=None, title="MNIST"):
    """Reads and verifies one IDX file (gzipped or raw) of data set `title`: genuine if the
    file is the .gz of MD5 `expected_md5` as published, or if its data has SHA-256
    `expected_sha256` (either may be None; with both None, the file is not checked)."""
    path = Path(path)
    payload = _payload(path, path.name, payload_size(expected_shape) if expected_shape else MAX_IDX_BYTES)
    if expected_md5 or expected_sha256:
        check_genuine(path, payload, expected_sha256, expected_md5, title)
    array = parse_idx(payload, path.name)
    if expected_shape and array.shape != expected_shape:
        raise DataError(f"{path.name}: shape {array.shape}, expected {expected_shape}")
    return array


def check_genuine(path, payload, expected_sha256, expected_md5, title):
    """DataError unless the file is the published .gz (MD5) or holds the genuine data (SHA-256)."""
    md5 = file_md5(path) if expected_md5 else None
    if md5 and md5 == expected_md5:
        return
    if expected_sha256:
        got = hashlib.sha256(payload).hexdigest()
        if got != expected_sha256:
            raise DataError(f"{path}: SHA-256 of the data is {got}, expected {expected_sha256}: not the genuine "
                            f"{title} file")
    elif not is_gzip(path):
        raise DataError(f"{path}: {title} is checked against the MD5s its authors publish for the .gz files; "
                        f"this file is not gzipped, so it cannot be: use the .gz file as published")
    else:
        raise DataError(f"{path}: MD5 of the file is {md5}, expected {expected_md5} (as published): "
                        f"not the genuine {title} file")


def is_gzip(path):
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def file_md5(path):
    h = hashlib.md5(usedforsecurity=False)  # a published checksum, not a security measure
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def locate(name, dirs):
    """The first existing `name` or `name.gz` in dirs, or None."""
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _fetch(url, dest, timeout, progress, limit, deadline):
    """Downloads url into a temporary file beside dest: at most `limit` bytes, within
    `deadline` seconds in all (the socket timeout alone lets a byte-a-second mirror hang)."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=PART)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            if total is not None and total > limit:
                raise DataError(f"announces {total} bytes, more than the {limit} the file can be")
            bar, start = progress(total=total, desc=dest.name), time.monotonic()
            while chunk := response.read1(1 << 16):
                out.write(chunk)
                bar.update(len(chunk))
                if out.tell() > limit:
                    raise DataError(f"sent more than the {limit} bytes the file can be")
                if time.monotonic() - start > deadline:
                    raise DataError(f"not done after {deadline:g} s ({out.tell()} bytes)")
            bar.close()
            if total is not None and out.tell() != total:
                raise DataError(f"got {out.tell()} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        return Path(tmp)
    except BaseException:
        os.unlink(tmp)
        raise


def mirror_list(ds, mirrors=None):
    """URL prefixes to try for data set `ds`: `mirrors`, else $FASTLENET_MIRRORS (comma-separated;
    "{dataset}" in one stands for the data set's name), else its authors' list."""
    env = [m.strip().replace("{dataset}", ds.name) for m in os.environ.get("FASTLENET_MIRRORS", "").split(",")]
    return list(mirrors or [m for m in env if m] or ds.mirrors)


def download(name, dest_dir, mirrors=None, retries=2, timeout=30.0, progress=None, deadline=600.0, dataset="mnist"):
    """Fetches `name`.gz of a data set from the first mirror that serves the genuine file.

    Each attempt lands in a temporary file that is verified (gzip, IDX header,
    checksum) before an atomic rename; an HTML page or a truncated file is
    never kept, nor one larger than the file's data can be, nor one that takes over
    `deadline` seconds. Raises DataError naming every mirror's failure.
    """
    ds = named(dataset)
    spec = ds.files[name]
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{name}.gz"
    for stale in dest_dir.glob(f".{dest.name}.*{PART}"):  # left by a download that was killed
        stale.unlink(missing_ok=True)
    limit = payload_size(spec.shape) * 101 // 100 + 4096  # gzip adds at most ~0.03 % to what it cannot shrink
    progress = progress or _NoProgress
    errors = []
    for mirror in mirror_list(ds, mirrors):
        url = mirror + f"{name}.gz"
        for attempt in range(1, retries + 1):
            tmp = None
            try:
                tmp = _fetch(url, dest, timeout, progress, limit, deadline)
                read_idx(tmp, *spec, ds.title)
                os.replace(tmp, dest)
                return dest
            except (OSError, DataError, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                errors.append(f"{url} (try {attempt}): {reason}")
                if tmp is not None and tmp.exists():
                    tmp.unlink()
                if isinstance(e, urllib.error.HTTPError) and 400 <= e.code < 500:
                    break  # a 403 or 404 will not change on retry
                if attempt < retries:
                    time.sleep(0.5 * attempt)
    raise DataError(f"could not download {ds.title}'s {name}.gz:\n  " + "\n  ".join(errors))


class _NoProgress:
    def __init__(self, total=None, desc=None):
        pass

    def update(self, n):
        pass

    def close(self):
        pass


@dataclass
class MNIST:
    """A data set's raw arrays: uint8 images (N, 28, 28) and labels (N,). Named after the
    first of them; `dataset` says which (datasets.DATASETS)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    directory: Path
    dataset: str = "mnist"


TEST_FILES = (TEST_IMAGES, TEST_LABELS)


def writable(folder):
    """Whether files can be written in `folder` (created if it can be)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def find_or_download(data_dir=None, download_missing=True, progress=None, mirrors=None, names=None, dataset="mnist"):
    """Paths of the files `names` (default: all four) of a data set, downloading the missing
    ones into the first writable search directory when allowed."""
    ds = named(dataset)
    dirs = search_dirs(data_dir, ds.name)
    paths = {name: locate(name, dirs) for name in names or tuple(ds.files)}
    missing = [name for name, path in paths.items() if path is None]
    if missing and download_missing:
        target = next((d for d in dirs if writable(d)), dirs[0])
        for name in missing:
            try:
                paths[name] = download(name, target, mirrors=mirrors, progress=progress, dataset=ds.name)
            except (DataError, OSError) as e:
                raise DataError(
                    f"{e}\nSearched: {', '.join(map(str, dirs))}.\n"
                    f"To install by hand, put the {ds.title} files {', '.join(paths)} (.gz"
                    f"{' or raw' if all(ds.files[n].sha256 for n in paths) else ', as published'}) "
                    f"in one of those folders, or point --data-dir at them."
                ) from None
    elif missing:
        raise DataError(f"{ds.title} files missing: {', '.join(missing)}; searched {', '.join(map(str, dirs))}")
    return paths


def load_mnist(data_dir=None, download_missing=True, progress=None, mirrors=None, test_only=False, dataset="mnist"):
    """Finds (or downloads), verifies and reads a data set (MNIST unless named); with
    test_only, only its test set (the training set is then empty), which is all an
    evaluation needs."""
    ds = named(dataset)
    paths = find_or_download(data_dir, download_missing, progress, mirrors, TEST_FILES if test_only else None, ds.name)
    arrays = {name: read_idx(path, *ds.files[name], ds.title) for name, path in paths.items()}
    none = (np.empty((0, 28, 28), np.uint8), np.empty(0, np.uint8))
    return MNIST(arrays.get(TRAIN_IMAGES, none[0]), arrays.get(TRAIN_LABELS, none[1]),
                 arrays[TEST_IMAGES], arrays[TEST_LABELS], paths[TEST_IMAGES].parent, ds.name)


def check_pair(images, labels, what):
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{what}: {images.shape} images and {labels.shape} labels do not pair up")


PAD = 2  # pixels each side: 28 x 28 -> LeNet-5's 32 x 32
MEAN, STD = 0.1307, 0.3081  # MNIST's training-set mean and std (--normalize)


def standardisation(normalize):
    """(mean, std) that inputs are standardised with: MNIST's, or (0, 1), which leaves them as they are."""
    return (MEAN, STD) if normalize else (0.0, 1.0)


def preprocess(images, dtype=np.float32, normalize=False):
    """uint8 (N, 28, 28) -> (N, 1, 32, 32) in [0, 1], padded by 2 pixels as LeNet-5 expects.

    With normalize, the result is standardised with MNIST's training mean and std.
    """
    dtype = np.dtype(dtype)
    n, h, w = images.shape
    out = np.zeros((n, 1, h + 2 * PAD, w + 2 * PAD), dtype)
    out[:, 0, PAD:-PAD, PAD:-PAD] = images / dtype.type(255)
    if normalize:
        out -= dtype.type(MEAN)
        out /= dtype.type(STD)
    return out


def shift_images(x, shifts, fill=0.0):
    """x (N, C, H, W) -> a copy with image k moved shifts[k] = (down, right) pixels,
    `fill` moving in (nothing wraps round). The augmentation behind `--shift`."""
    n, _, h, w = x.shape
    s = int(np.abs(shifts).max(initial=0))
    padded = np.pad(x, ((0, 0), (0, 0), (s, s), (s, s)), constant_values=fill)
    windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, 2s+1, 2s+1, H, W), a view
    # window (s - down, s - right) of image k is image k moved (down, right): one gather
    return windows[np.arange(n), :, s - shifts[:, 0], s - shifts[:, 1]]


def validation_split(n, size, seed):
    """(train_indices, validation_indices): a seeded permutation, disjoint, sorted."""
    if not 0 <= size < n:
        raise DataError(f"validation size must be between 0 and {n - 1}, got {size}")
    order = np.random.default_rng([seed, 0xDA7A]).permutation(n)
    return np.sort(order[size:]), np.sort(order[:size])

