"""The training images' distortions: the resampling kernel against a tent-filter
oracle, exact shifts and quarter turns, draws that repeat, and the edge fill."""

import numpy as np
import pytest

from fastlenet.augment import background, distort, draws, inverse_maps
from fastlenet.data import preprocess, shift_images
from fastlenet.kernels import affine_warp
from fastlenet.settings import SettingsError, TrainConfig

RNG = np.random.default_rng(7)


def tent_oracle(x, shifts, angles, scales, fill):
    """Output pixel q of image k reads the original at p = c + R(-angle)(q - c - shift)/scale,
    as a sum over every input pixel weighted by the bilinear (tent) filter
    max(0, 1 - |dr|) max(0, 1 - |dc|), the outside counted as `fill`."""
    n, ch, h, w = x.shape
    centre = (h - 1) / 2
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=fill)
    rows, cols = np.arange(-1, h + 1), np.arange(-1, w + 1)
    out = np.empty(x.shape)
    for k in range(n):
        t = np.deg2rad(angles[k])
        for i in range(h):
            for j in range(w):
                dr, dc = i - centre - shifts[k, 0], j - centre - shifts[k, 1]
                r = centre + (np.cos(t) * dr + np.sin(t) * dc) / scales[k]
                c = centre + (-np.sin(t) * dr + np.cos(t) * dc) / scales[k]
                weights = np.outer(np.maximum(0, 1 - abs(rows - r)), np.maximum(0, 1 - abs(cols - c)))
                outside = 1 - weights.sum()  # beyond the one-pixel border: all fill
                out[k, :, i, j] = (padded[k] * weights).sum(axis=(1, 2)) + outside * fill
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, size", [(1, 32), (3, 9), (2, 12)])
def test_warp_matches_the_tent_filter_oracle(dtype, n, size):
    x = RNG.random((n, 1, size, size)).astype(dtype)
    shifts, angles, scales = RNG.integers(-2, 3, (n, 2)), RNG.uniform(-30, 30, n), RNG.uniform(0.7, 1.3, n)
    out = np.full_like(x, np.nan)
    affine_warp(x, inverse_maps(shifts, angles, scales, size), -0.25, out)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, tent_oracle(x, shifts, angles, scales, -0.25),
                               rtol=0, atol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("fill", [0.0, -0.4242])
def test_integer_shifts_move_pixels_exactly_as_shift_images(fill):
    x = RNG.random((5, 1, 10, 10)).astype(np.float32)
    shifts, out = RNG.integers(-3, 4, (5, 2)), np.full_like(x, np.nan)
    affine_warp(x, inverse_maps(shifts, np.zeros(5), np.ones(5), 10), fill, out)
    np.testing.assert_array_equal(out, shift_images(x, shifts, fill))
    np.testing.assert_array_equal(shift_images(x, np.array([[1, 0]] * 5), fill)[:, :, 0], np.float32(fill))  # moved in


def test_a_quarter_turn_is_rot90_and_a_double_scale_spreads_from_the_centre():
    x = RNG.random((1, 1, 8, 8))
    out = np.empty_like(x)
    affine_warp(x, inverse_maps(np.zeros((1, 2), np.int64), np.array([90.0]), np.ones(1), 8), 0.0, out)
    np.testing.assert_allclose(out[0, 0], np.rot90(x[0, 0]), atol=1e-12)  # counter-clockwise on screen
    dot = np.zeros((1, 1, 9, 9))
    dot[0, 0, 4, 5] = 1.0  # one pixel right of the centre
    out = np.empty_like(dot)
    affine_warp(dot, inverse_maps(np.zeros((1, 2), np.int64), np.zeros(1), np.full(1, 2.0), 9), 0.0, out)
    assert out[0, 0, 4, 6] == 1.0 and out[0, 0, 4, 5] == out[0, 0, 3, 6] == 0.5 and out[0, 0, 3, 5] == 0.25
    assert out.sum() == 4.0  # twice as wide and twice as tall


def test_draws_repeat_by_seed_and_step_and_shift_only_runs_draw_as_before():
    cfg = TrainConfig(shift=2, rotate=10.0, scale=0.1, seed=3)
    first, again, other = draws(cfg, 5, 64), draws(cfg, 5, 64), draws(cfg, 6, 64)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])
    assert np.abs(first[1]).max() <= 10 and np.abs(first[2] - 1).max() <= 0.1
    shifts, angles, scales = draws(TrainConfig(shift=2, seed=3), 5, 64)
    np.testing.assert_array_equal(shifts, np.random.default_rng([3, 0x5817F, 5]).integers(-2, 3, (64, 2)))
    assert not angles.any() and (scales == 1).all()


def test_distortions_fill_with_the_blank_pixels_value():
    assert background(np.float32, False) == 0.0
    assert background(np.float32, True) == pytest.approx(-0.1307 / 0.3081)
    images = np.full((2, 28, 28), 255, np.uint8)
    for normalize in (False, True):
        x = preprocess(images, np.float32, normalize)
        blank = background(np.float32, normalize)
        for angles in (np.zeros(2), np.array([45.0, -45.0])):
            out = distort(x, np.array([[4, 0], [0, -4]]), angles, np.ones(2), normalize)
            assert out.dtype == np.float32 and out.shape == x.shape
            assert out[0, 0, 0, 0] == pytest.approx(blank) and out[1, 0, -1, -1] == pytest.approx(blank)


@pytest.mark.parametrize("flag, value, message", [
    ("rotate", 31.0, "--rotate must be >= 0.0 and <= 30.0, got 31.0"),
    ("scale", -0.1, "--scale must be >= 0.0 and <= 0.3, got -0.1"),
])
def test_distortion_bounds(flag, value, message):
    with pytest.raises(SettingsError, match=message):
        TrainConfig(**{flag: value}).check()
