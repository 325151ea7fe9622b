"""Random distortions of the training images (--shift, --rotate, --scale), drawn for
the global batch from (seed, step): the same on every rank, and again on resume."""

import math

import numpy as np

from .data import preprocess, shift_images
from .kernels.warp import affine_warp

DRAWS = 0x5817F  # the augmentation's stream of the run's seed


def distorted_epochs(config):
    """How many epochs, from the first, see distorted images: all but the last
    --clean-fraction of them, rounded to whole epochs (0 without a distortion)."""
    return config.epochs - math.floor(config.clean_fraction * config.epochs + 0.5) if config.distorts() else 0


def draws(config, iteration, n):
    """(shifts (n, 2) integers (down, right), angles (n,) degrees, scales (n,)) of step `iteration`."""
    rng = np.random.default_rng([config.seed, DRAWS, iteration])
    shifts = rng.integers(-config.shift, config.shift + 1, (n, 2))
    if not (config.rotate or config.scale):  # a shift-only run draws what it always drew
        return shifts, np.zeros(n), np.ones(n)
    return shifts, rng.uniform(-config.rotate, config.rotate, n), rng.uniform(1 - config.scale, 1 + config.scale, n)


def inverse_maps(shifts, angles, scales, size):
    """(N, 2, 3) maps from a distorted image's pixels (row, col) back to the original's:
    rotation by `angles` and scaling by `scales` about the image's centre, then the
    shift. Inverse: the output q = c + s R (p - c) + shift read at p = c + R^-1 (q - c - shift) / s."""
    theta, centre = np.deg2rad(angles), (size - 1) / 2
    cos, sin = np.cos(theta) / scales, np.sin(theta) / scales
    maps = np.empty((len(angles), 2, 3))
    maps[:, 0, 0], maps[:, 0, 1], maps[:, 1, 0], maps[:, 1, 1] = cos, sin, -sin, cos
    moved_row, moved_col = centre + shifts[:, 0], centre + shifts[:, 1]
    maps[:, 0, 2] = centre - cos * moved_row - sin * moved_col
    maps[:, 1, 2] = centre + sin * moved_row - cos * moved_col
    return maps


def background(dtype, normalize):
    """The value a blank pixel has after preprocessing: what moves in at the edges."""
    return float(preprocess(np.zeros((1, 1, 1), np.uint8), dtype, normalize)[0, 0, 0, 0])


def distort(x, shifts, angles, scales, normalize=False):
    """x (N, 1, H, H), preprocessed -> a distorted copy. Shifts alone move whole pixels
    (shift_images); a rotation or a scale resamples bilinearly (kernels/warp.py)."""
    fill = background(x.dtype, normalize)
    if not (np.any(angles) or np.any(scales != 1)):
        return shift_images(x, shifts, fill)
    out = np.empty_like(x)
    affine_warp(x, inverse_maps(shifts, angles, scales, x.shape[2]), fill, out)
    return out
