"""A photo or drawing of a digit (or of a data set's other classes) -> an MNIST-style
28 x 28 image, and its top classes."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import FastLeNetError

MAX_PIXELS = 40_000_000  # refuse larger images rather than exhaust memory
MAX_BYTES = 64 << 20


class ImageError(FastLeNetError, ValueError):
    """An image file that cannot be a digit: unreadable, empty, too large."""


def load_grayscale(path):
    """Any PNG/JPEG (alpha, palette, 16-bit included) -> float array in [0, 1], dark ink on any background."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror})") from None
    if size == 0:
        raise ImageError(f"{path}: empty file")
    if size > MAX_BYTES:
        raise ImageError(f"{path}: {size} bytes is over the {MAX_BYTES >> 20} MiB limit for an image")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageError(f"{path}: {im.width}x{im.height} pixels is over the limit of {MAX_PIXELS:,}")
            im = ImageOps.exif_transpose(im)  # a phone's sideways photo, upright
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(im, np.float64)
                pixels = pixels / max(float(pixels.max()), 1.0)
            else:
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    im = on_background(im.convert("RGBA"))
                pixels = np.asarray(im.convert("L"), np.float64) / 255.0
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from None
    return pixels


def on_background(rgba):
    """An image with transparency, composited onto the background its ink is not: white
    under dark ink, black under light ink (white chalk on a transparent layer)."""
    alpha = np.asarray(rgba.getchannel("A"), np.float64) / 255.0
    light = np.asarray(rgba.convert("L"), np.float64) / 255.0
    ink_lightness = (light * alpha).sum() / alpha.sum() if alpha.sum() else 0.0
    colour = (0, 0, 0, 255) if ink_lightness > 0.5 else (255, 255, 255, 255)
    return Image.alpha_composite(Image.new("RGBA", rgba.size, colour), rgba)


def border(a):
    return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])


def mnist_style(pixels, name="image", fit=20, centre="mass"):
    """Grayscale [0, 1] -> uint8 (28, 28) the way the data set was made: white ink on black,
    cropped to the ink, scaled to fit `fit` x `fit` keeping aspect, centred by centre of
    mass (MNIST: fit 20, "mass") or by its box (Fashion-MNIST, KMNIST: fit 28, "box")."""
    ink = 1.0 - pixels if border(pixels).mean() > 0.5 else pixels  # light background: invert
    ink = np.clip(ink - np.median(border(ink)), 0, 1)               # background level -> 0
    rows, cols = np.flatnonzero(ink.max(axis=1) > 0.2), np.flatnonzero(ink.max(axis=0) > 0.2)
    if not len(rows):
        raise ImageError(f"{name}: no digit found: the image is blank")
    ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = ink.shape
    scale = fit / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    digit = np.asarray(Image.fromarray((ink * 255).astype(np.uint8)).resize(size, Image.LANCZOS), np.float64)
    canvas = np.zeros((28, 28))
    total = digit.sum()
    cy, cx = ((np.indices(digit.shape) * digit).reshape(2, -1).sum(axis=1) / total) if total and centre == "mass" \
        else ((digit.shape[0] - 1) / 2, (digit.shape[1] - 1) / 2)
    top = int(np.clip(round(13.5 - cy), 0, 28 - digit.shape[0]))
    left = int(np.clip(round(13.5 - cx), 0, 28 - digit.shape[1]))
    canvas[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return np.clip(canvas, 0, 255).astype(np.uint8)


def top_classes(probs, classes=tuple("0123456789"), k=3):
    """The k likeliest classes: label ("digit", for MNIST's sake), name and probability."""
    order = np.argsort(probs)[::-1][:k]
    return [{"digit": int(d), "class": classes[d], "probability": float(probs[d])} for d in order]
