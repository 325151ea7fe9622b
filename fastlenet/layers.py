"""Fast layers: im2col on strided views + GEMM, Numba kernels for the scatters.

Same classes, signatures and results as `fastlenet.reference`; swap the import
and a model trains unchanged, only faster.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .core import ConvSpec, Flatten, Layer, LinearSpec, PoolSpec
from .kernels import col2im, maxpool_backward, maxpool_forward

__all__ = ["Conv2D", "MaxPool2D", "ReLU", "Linear", "Flatten"]


def _pad(x, ph, pw):
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x


def im2col(x_pad, kernel, stride, out_hw):
    """Every window as a row: (N, C, HP, WP) -> (N*OH*OW, C*KH*KW), one copy.

    The strided view (N, OH, OW, C, KH, KW) costs nothing; reshape copies it
    into the contiguous matrix the GEMM wants.
    """
    n, c = x_pad.shape[:2]
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    s_n, s_c, s_h, s_w = x_pad.strides
    windows = as_strided(x_pad, (n, oh, ow, c, kh, kw), (s_n, s_h * sh, s_w * sw, s_c, s_h, s_w),
                         writeable=False)
    return windows.reshape(n * oh * ow, c * kh * kw)


class Conv2D(ConvSpec):
    def forward(self, x):
        n, f, oh, ow = self._start_forward(x)
        x_pad = _pad(x, *self.padding)
        self._x_pad_shape = x_pad.shape
        self._cols = im2col(x_pad, self.kernel_size, self.stride, (oh, ow))  # (N*OH*OW, C*KH*KW)
        y = self._cols @ self.weight.value.reshape(f, -1).T                  # (N*OH*OW, F)
        y += self.bias.value
        # (N*OH*OW, F) -> (N, OH, OW, F) -> NCHW view: channels stay innermost in memory
        return y.reshape(n, oh, ow, f).transpose(0, 3, 1, 2)

    def backward(self, dy):
        self._check_grad(dy)
        n, f, oh, ow = dy.shape
        dy_rows = dy.transpose(0, 2, 3, 1).reshape(n * oh * ow, f)  # free when dy came from forward's layout
        np.matmul(dy_rows.T, self._cols, out=self.weight.grad.reshape(f, -1))
        dy_rows.sum(axis=0, out=self.bias.grad)
        if not self.input_grad:
            return None
        c, (kh, kw) = self.in_channels, self.kernel_size
        dcols = dy_rows @ self.weight.value.reshape(f, -1)  # (N*OH*OW, C*KH*KW)
        dx_pad = np.empty(self._x_pad_shape, dy.dtype)
        col2im(dcols.reshape(n, oh, ow, c, kh, kw), *self.stride, dx_pad)
        (ph, pw), (hp, wp) = self.padding, self._x_pad_shape[2:]
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
