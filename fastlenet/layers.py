"""Fast layers: im2col on strided views + GEMM, Numba kernels for the scatters
and for the convolutions a GEMM serves badly.

Same classes, signatures and results as `fastlenet.reference`; swap the import
and a model trains unchanged, only faster.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .core import ConvSpec, Flatten, Layer, LinearSpec, PoolSpec
from .kernels import (col2im, conv_forward, conv_input_grad, conv_weight_grad, gather_windows,
                      maxpool_backward, maxpool_forward)

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


class Conv2D(ConvSpec):
    """Two algorithms, chosen by shape (both checked against the reference):

    - im2col + GEMM, the general path: every window becomes a row of a
      matrix and the convolution one matrix product.
    - direct stride-1 kernels (fastlenet.kernels.direct) where the GEMM is
      starved: a window of fewer than DIRECT_MAX_WINDOW values (C1's 25)
      gives a product too thin to beat the copy that feeds it.

    The input gradient, at stride 1, is always the direct transposed
    convolution: it never materialises the (N*OH*OW, C*KH*KW) gradient
    columns that col2im would scatter.
    """

    DIRECT_MAX_WINDOW = 64
    _cols = None

    def _direct(self):
        kh, kw = self.kernel_size
        return self.stride == (1, 1) and self.in_channels * kh * kw < self.DIRECT_MAX_WINDOW

    def forward(self, x):
        n, f, oh, ow = self._start_forward(x)
        x_pad = _pad(x, *self.padding)
        if self.stride == (1, 1):
            x_pad = np.ascontiguousarray(x_pad)  # the direct kernels walk flat planes
        self._x_pad = x_pad
        if self._direct():
            y = np.empty((n, f, oh, ow), x.dtype)
            conv_forward(x_pad.reshape(n, self.in_channels, -1), self.weight.value, self.bias.value,
                         x_pad.shape[3], y)
            return y
        self._cols = im2col(x_pad, self.kernel_size, self.stride, (oh, ow), self._cols)  # (N*OH*OW, C*KH*KW)
        y = self._cols @ self.weight.value.reshape(f, -1).T                               # (N*OH*OW, F)
        y += self.bias.value
        # (N*OH*OW, F) -> (N, OH, OW, F) -> NCHW view: channels stay innermost in memory
        return y.reshape(n, oh, ow, f).transpose(0, 3, 1, 2)

    def backward(self, dy):
        self._check_grad(dy)
        n, f, oh, ow = dy.shape
        x_pad = self._x_pad
        c, hp, wp = x_pad.shape[1:]
        dy.sum(axis=(0, 2, 3), out=self.bias.grad)
        if self.stride == (1, 1):
            dy_wide = np.zeros((n, f, oh, wp), dy.dtype)  # (N, F, OH, WP): zero beyond column OW
            dy_wide[..., :ow] = dy
            dy_wide = dy_wide.reshape(n, f, oh * wp)
        if self._direct():
            conv_weight_grad(x_pad.reshape(n, c, -1), dy_wide, wp, ow, self.weight.grad)
        else:
            dy_rows = dy.transpose(0, 2, 3, 1).reshape(n * oh * ow, f)  # free when dy came from forward's layout
            np.matmul(dy_rows.T, self._cols, out=self.weight.grad.reshape(f, -1))
        if not self.input_grad:
            return None
        dx_pad = np.empty((n, c, hp, wp), dy.dtype)
        if self.stride == (1, 1):
            conv_input_grad(dy_wide, self.weight.value, wp, ow, dx_pad.reshape(n, c, -1))
        else:
            kh, kw = self.kernel_size
            dcols = dy_rows @ self.weight.value.reshape(f, -1)  # (N*OH*OW, C*KH*KW)
            col2im(dcols.reshape(n, oh, ow, c, kh, kw), *self.stride, dx_pad)
        (ph, pw) = self.padding
        return dx_pad[:, :, ph:hp - ph, pw:wp - pw]


class MaxPool2D(PoolSpec):
    def forward(self, x):
        out_shape = self._start_forward(x)
        self._x_shape = x.shape
        y = np.empty(out_shape, x.dtype)
        self._argmax = np.empty(out_shape, np.int32)
        maxpool_forward(x, *self.kernel_size, *self.stride, y, self._argmax)
        return y

    def backward(self, dy):
        self._check_grad(dy)
        dx = np.empty(self._x_shape, dy.dtype)
        maxpool_backward(dy, self._argmax, dx)
        return dx


class ReLU(Layer):
    def forward(self, x):
        self._check_float(x)
        self._record(x.shape, x.dtype)
        self._mask = x > 0  # 1 byte per element instead of caching x
        return np.maximum(x, 0)

    def backward(self, dy):
        self._check_grad(dy)
        return dy * self._mask


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
