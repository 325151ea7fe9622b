"""Fast layers: im2col on strided views + GEMM, Numba kernels for the scatters
and for the convolutions a GEMM serves badly.

Same classes, signatures and results as `fastlenet.reference`; swap the import
and a model trains unchanged, only faster.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .core import ConvSpec, Flatten, Layer, LinearSpec, PoolSpec
from .kernels import (col2im, conv_forward, conv_input_grad, conv_weight_grad, gather_windows, gradient_to_rows,
                      maxpool2x2_forward, maxpool_backward, maxpool_forward, relu_backward, relu_forward)

__all__ = ["Conv2D", "MaxPool2D", "ReLU", "Linear", "Flatten"]


def _pad(x, ph, pw):
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x


def im2col(x_pad, kernel, stride, out_hw, out=None):
    """Every window as a row: (N, C, HP, WP) -> (N*OH*OW, C*KH*KW), one copy.

    The strided view (N, OH, OW, C, KH, KW) costs nothing; a Numba kernel
    copies it into the contiguous matrix the GEMM wants (into `out` when its
    shape and dtype fit, so a layer reuses one buffer from step to step).
    """
    n, c = x_pad.shape[:2]
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    s_n, s_c, s_h, s_w = x_pad.strides
    windows = as_strided(x_pad, (n, oh, ow, c, kh, kw), (s_n, s_h * sh, s_w * sw, s_c, s_h, s_w),
                         writeable=False)
    cols_shape = (n * oh * ow, c * kh * kw)
    if out is None or out.shape != cols_shape or out.dtype != x_pad.dtype:
        out = np.empty(cols_shape, x_pad.dtype)
    gather_windows(windows, out.reshape(windows.shape))
    return out


class RowLayout:
    """How the direct kernels see a padded batch (N, C, HP, WP): as rows (C, R, L),
    a kernel tap row moving `steps` = (rows, positions); see fastlenet.kernels.direct.

    - rows, (C, HP, N*WP): row h of every image side by side, steps (1, 0);
      least waste, chosen once a row holds at least ROWS_FROM positions.
    - planes, (C, 1, N*HP*WP): image after image, steps (0, WP); for small
      batches, whose rows would be too short to vectorise (measured at batch 1:
      C3 forward 0.07 ms as planes, 0.22 ms as rows).
    """

    ROWS_FROM = 512

    def __init__(self, n, hp, wp):
        self.n, self.hp, self.wp = n, hp, wp
        self.rows = n * wp >= self.ROWS_FROM
        self.steps = (1, 0) if self.rows else (0, wp)
        self.image_stride = wp if self.rows else hp * wp

    def pack(self, a):
        """(N, C, HP, WP) -> (C, R, L), one copy (free for planes of one channel)."""
        order = (1, 2, 0, 3) if self.rows else (1, 0, 2, 3)  # -> (C, HP, N, WP) or (C, N, HP, WP)
        return np.ascontiguousarray(a.transpose(order)).reshape(a.shape[1], -1, self.n * self.image_stride)

    def empty(self, channels, height, dtype):
        """Rows for `channels` planes of `height` rows (output rows, or HP)."""
        return np.empty((channels, height if self.rows else 1, self.n * self.image_stride), dtype)

    def unpack(self, a, h, w):
        """(C, R, L) -> the (N, C, h, w) view of the top-left h x w of every image."""
        if self.rows:  # (C, R, N*WP) -> (C, R, N, WP)
            return a.reshape(a.shape[0], a.shape[1], self.n, self.wp)[:, :h, :, :w].transpose(2, 0, 1, 3)
        return a.reshape(a.shape[0], self.n, self.hp, self.wp)[:, :, :h, :w].transpose(1, 0, 2, 3)


class Conv2D(ConvSpec):
    """Two algorithms, both checked against the reference:

    - stride 1: direct Numba kernels (fastlenet.kernels.direct) on the batch
      laid out in long rows (RowLayout): contiguous multiply-adds and no
      columns at all. LeNet's GEMMs are too thin (K = 25 or 150, 6 or 16
      outputs) to pay for the copy that feeds them: measured on 2 cores, C3
      forward went from 4.7 ms (im2col + GEMM) to 2.8 ms, and to 2.2-2.4 ms
      with image rows side by side.
    - any other stride: im2col + GEMM, the general path. Every window becomes
      a row of a matrix and the convolution one matrix product; the input
      gradient is a GEMM into columns and a Numba col2im scatter.
    """

    _cols = None

    def forward(self, x):
        n, f, oh, ow = self._start_forward(x)
        x_pad = _pad(x, *self.padding)
        c, hp, wp = x_pad.shape[1:]
        if self.stride == (1, 1):
            self._layout = layout = RowLayout(n, hp, wp)
            self._x_rows = layout.pack(x_pad)
            y_rows = layout.empty(f, oh, x.dtype)
            conv_forward(self._x_rows, self.weight.value, self.bias.value, *layout.steps, y_rows)
            return layout.unpack(y_rows, oh, ow)
        self._x_pad_shape = x_pad.shape
        self._cols = im2col(x_pad, self.kernel_size, self.stride, (oh, ow), self._cols)  # (N*OH*OW, C*KH*KW)
        y = self._cols @ self.weight.value.reshape(f, -1).T                               # (N*OH*OW, F)
        y += self.bias.value
        # (N*OH*OW, F) -> (N, OH, OW, F) -> NCHW view: channels stay innermost in memory
        return y.reshape(n, oh, ow, f).transpose(0, 3, 1, 2)

    def backward(self, dy):
        self._check_grad(dy)
        if self.stride == (1, 1):
            return self._backward_direct(dy)
        dy.sum(axis=(0, 2, 3), out=self.bias.grad)
        n, f, oh, ow = dy.shape
        dy_rows = dy.transpose(0, 2, 3, 1).reshape(n * oh * ow, f)  # free when dy came from forward's layout
        np.matmul(dy_rows.T, self._cols, out=self.weight.grad.reshape(f, -1))
        if not self.input_grad:
            return None
        (kh, kw), (c, hp, wp) = self.kernel_size, self._x_pad_shape[1:]
        dcols = dy_rows @ self.weight.value.reshape(f, -1)  # (N*OH*OW, C*KH*KW)
        dx_pad = np.empty((n, c, hp, wp), dy.dtype)
        col2im(dcols.reshape(n, oh, ow, c, kh, kw), *self.stride, dx_pad)
        return self._crop(dx_pad)

    def _backward_direct(self, dy):
        (n, f, oh, ow), c, layout = dy.shape, self.in_channels, self._layout
        dy_rows = layout.empty(f, oh, dy.dtype)  # the forward's output rows, zero where no output is
        gradient_to_rows(dy, layout.image_stride, *layout.steps, dy_rows, self.bias.grad)
        conv_weight_grad(self._x_rows, dy_rows, *layout.steps, self.weight.grad)
        if not self.input_grad:
            return None
        dx_rows = layout.empty(c, layout.hp, dy.dtype)
        conv_input_grad(dy_rows, self.weight.value, *layout.steps, dx_rows)
        return self._crop(layout.unpack(dx_rows, layout.hp, layout.wp))

    def _crop(self, dx_pad):
        (ph, pw), (hp, wp) = self.padding, dx_pad.shape[2:]
        return dx_pad[:, :, ph:hp - ph, pw:wp - pw]


class MaxPool2D(PoolSpec):
    """Numba kernels: any window and stride, and a forward specialised for LeNet's
    2x2 windows at stride 2. The argmax (a flat index in the plane) is what backward needs."""

    def forward(self, x):
        out_shape = self._start_forward(x)
        self._x_shape = x.shape
        y, self._argmax = np.empty(out_shape, x.dtype), np.empty(out_shape, np.int32)
        if self.kernel_size == self.stride == (2, 2):
            maxpool2x2_forward(x, y, self._argmax)
        else:
            maxpool_forward(x, *self.kernel_size, *self.stride, y, self._argmax)
        return y

    def backward(self, dy):
        self._check_grad(dy)
        dx = np.empty(self._x_shape, dy.dtype)
        maxpool_backward(dy, self._argmax, dx)
        return dx


class ReLU(Layer):
    """One Numba pass each way over contiguous memory. A strided array (a conv's
    input gradient is a transposed view) takes NumPy's ufuncs instead: they walk
    any strides, where a copy first would cost more than the ReLU."""

    def forward(self, x):
        self._check_float(x)
        self._record(x.shape, x.dtype)
        self._mask = np.empty(x.shape, np.bool_)  # 1 byte per element instead of caching x
        if not x.flags.c_contiguous:
            np.greater(x, 0, out=self._mask)
            return np.maximum(x, 0)
        y = np.empty_like(x)
        relu_forward(x.reshape(-1), y.reshape(-1), self._mask.reshape(-1))
        return y

    def backward(self, dy):
        self._check_grad(dy)
        if not dy.flags.c_contiguous:
            return dy * self._mask
        dx = np.empty_like(dy)
        relu_backward(dy.reshape(-1), self._mask.reshape(-1), dx.reshape(-1))
        return dx


class Linear(LinearSpec):
    def forward(self, x):
        self._start_forward(x)
        self._x = x
        y = x @ self.weight.value.T
        y += self.bias.value
        return y

    def backward(self, dy):
        self._check_grad(dy)
        np.matmul(dy.T, self._x, out=self.weight.grad)
        dy.sum(axis=0, out=self.bias.grad)
        return dy @ self.weight.value if self.input_grad else None
