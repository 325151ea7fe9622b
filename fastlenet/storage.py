"""Files that must never be half-written nor run code when read: atomic
writes, and weights in safetensors (tensors plus a string header, no pickle)."""

import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from .datasets import DATASETS
from .errors import WeightsError
from .models import LeNet5

WEIGHTS_FORMAT = "fastlenet-weights/1"
WEIGHTS_NAME = "model.safetensors"


def atomic_write(path, data):
    """Writes bytes (or text) to path so that a reader, or a crash, only ever
    sees the old file or the complete new one: temporary file in the same
    folder, flush, fsync, rename over."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a file should get the user's mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a full disk: say which file
            raise write_error(e, path) from None
        raise


TEMPORARY = ".tmp"


def current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder, names):
    """Deletes what killed atomic writes of `names` left in `folder` (call it while no other
    writer can be there: a run directory once it is held)."""
    for p in Path(folder).glob(f".*{TEMPORARY}"):
        if any(p.name.startswith(f".{name}.") for name in names):
            p.unlink(missing_ok=True)


def write_error(e, path):
    """An OSError raised while writing (a full disk), naming the file it was for."""
    return OSError(e.errno, f"cannot write ({e.strerror or e})", str(path))


def json_text(obj, **options):
    """JSON that any parser reads: a NaN or an infinity (which json.dumps would write as
    the non-JSON NaN / Infinity) becomes null."""
    return json.dumps(finite(obj), allow_nan=False, **options)


def finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path, obj):
    atomic_write(path, json_text(obj, indent=2) + "\n")


def save_tensors(path, tensors, metadata):
    """tensors: name -> ndarray; metadata: name -> str (stored in the header, with the
    tensors' digest). The same tensors and metadata give the same bytes."""
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    metadata = {"format": WEIGHTS_FORMAT, **metadata, DIGEST: digest(tensors)}
    atomic_write(path, sorted_header(safetensors_bytes(tensors, metadata=metadata)))


DIGEST = "tensors_sha256"


def digest(tensors):
    """SHA-256 of every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.data)
    return h.hexdigest()


def sorted_header(blob):
    """safetensors bytes with the JSON header's keys sorted. The library writes its
    metadata map in an order that changes from process to process; sorted, the same
    tensors give the same file. Same keys and values, so the same length: the header's
    padding and the data offsets stay as they are."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:
        raise ValueError(f"sorted_header: the sorted header is longer ({len(text)} bytes) than the original ({length})")
    return blob[:8] + text.ljust(length) + blob[8 + length:]


def read_safetensors(path):
    """-> (tensors, metadata) of any safetensors file. Nothing else is read: a pickle
    is refused, never unpickled, and a FIFO or a device is refused before it blocks."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block the read below forever
        raise WeightsError(f"{path}: not a regular file (a folder, a FIFO or a device); weights are a "
                           f".safetensors file")
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read ({e.strerror})") from None
    try:  # safetensors parses a JSON header and raw bytes: it never unpickles anything
        with safe_open(str(path), framework="np") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        # sniffed only now: a safetensors header length may well start with these bytes
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise WeightsError(f"{path}: looks like a pickle or a zip (e.g. a torch.save file); fastlenet reads "
                               f"only safetensors files and never loads pickles (in PyTorch: "
                               f"safetensors.torch.save_file(model.state_dict(), 'lenet.safetensors'))") from None
        raise WeightsError(f"{path}: not a valid safetensors file ({e})") from None


def load_tensors(path):
    """-> (tensors, metadata) of a fastlenet weights file (its format and digest checked)."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise WeightsError(f"{path}: not a fastlenet weights file (format {metadata.get('format')!r}, "
                           f"expected {WEIGHTS_FORMAT!r})")
    if DIGEST in metadata and metadata[DIGEST] != digest(tensors):  # files from before the digest have none
        raise WeightsError(f"{path}: corrupt: its tensors do not match the digest written with them")
    return tensors, metadata


def model_metadata(model):
    """What a model needs besides its tensors: architecture, dtype, input preprocessing and
    the data set it classifies."""
    return {"architecture": model.architecture, "dtype": model.dtype.name,
            "normalize": "true" if model.normalize else "false", "dataset": model.dataset}


def save_model(path, model, extra=None):
    save_tensors(path, model.state_dict(), {**model_metadata(model), **(extra or {})})


def load_model(path, backend="fast"):
    """A LeNet5 with the weights of `path`, or a WeightsError saying what does not fit."""
    tensors, metadata = load_tensors(path)
    if metadata.get("architecture") != LeNet5.architecture:
        raise WeightsError(f"{path}: weights of architecture {metadata.get('architecture')!r}, "
                           f"expected {LeNet5.architecture!r}")
    dtype = metadata.get("dtype")
    if dtype not in ("float32", "float64"):
        raise WeightsError(f"{path}: unsupported dtype {dtype!r} (float32 or float64)")
    normalize = metadata.get("normalize", "false")  # weights from before it was recorded: unnormalised
    if normalize not in ("true", "false"):
        raise WeightsError(f"{path}: 'normalize' must be true or false, got {normalize!r}")
    for name, a in sorted(tensors.items()):
        bad = int(a.size - np.isfinite(a).sum()) if a.dtype.kind == "f" else 0
        if bad:
            raise WeightsError(f"{path}: '{name}' holds {bad} NaN or infinite values; weights must be finite "
                               f"(a run that diverged?)")
    dataset = metadata.get("dataset", "mnist")  # weights from before it was recorded: MNIST's
    if dataset not in DATASETS:
        raise WeightsError(f"{path}: weights of data set {dataset!r}; data sets are: {', '.join(DATASETS)}")
    model = LeNet5(backend, dtype=dtype)
    model.normalize, model.dataset = normalize == "true", dataset
    try:
        model.load_state_dict(tensors)
    except (ValueError, TypeError) as e:
        raise WeightsError(f"{path}: {e}") from None
    return model


def weights_path(path):
    """A run directory or a weights file -> the weights file."""
    path = Path(path)
    return path / WEIGHTS_NAME if path.is_dir() else path
