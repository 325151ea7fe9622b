"""Reference layers: the textbook per-output-pixel loops of the spec.

Slow on purpose and written to be read: every output pixel is one window of
the (padded) input combined with the weights. These are the oracle the fast
layers are tested against and the baseline their speed is measured from.
"""

import numpy as np

from .core import ConvSpec, Flatten, Layer, LinearSpec, PoolSpec
from .sequential import Sequential  # noqa: F401  (one container serves both backends)

__all__ = ["Conv2D", "MaxPool2D", "ReLU", "Linear", "Flatten", "Sequential"]


def _windows(out_h, out_w, kernel, stride):
    """Yields (i, j, rows, cols): output pixel (i, j) and the slices of its input window."""
    (kh, kw), (sh, sw) = kernel, stride
    for i in range(out_h):
        for j in range(out_w):
            yield i, j, slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)


class Conv2D(ConvSpec):
    def forward(self, x):
        n, f, oh, ow = self._start_forward(x)
        ph, pw = self.padding
        self._x_pad = x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        w = self.weight.value
        y = np.empty((n, f, oh, ow), x.dtype)
        for i, j, rows, cols in _windows(oh, ow, self.kernel_size, self.stride):
            window = x_pad[:, :, rows, cols]  # (N, C, kh, kw)
            # (N, 1, C, kh, kw) * (1, F, C, kh, kw) summed over the window -> (N, F)
            y[:, :, i, j] = np.sum(window[:, None] * w[None], axis=(2, 3, 4))
        y += self.bias.value[:, None, None]
        return y

    def backward(self, dy):
        self._check_grad(dy)
        x_pad, w = self._x_pad, self.weight.value
        dx_pad = np.zeros_like(x_pad)
        dw = np.zeros_like(w)
        for i, j, rows, cols in _windows(*dy.shape[2:], self.kernel_size, self.stride):
            g = dy[:, :, i, j, None, None, None]  # (N, F, 1, 1, 1)
            # every output pixel sends its gradient to the weights through its window ...
            dw += np.sum(g * x_pad[:, None, :, rows, cols], axis=0)  # sum over N -> (F, C, kh, kw)
            # ... and back through the weights to its window
            if self.input_grad:
                dx_pad[:, :, rows, cols] += np.sum(g * w[None], axis=1)  # sum over F -> (N, C, kh, kw)
        self.weight.grad[...] = dw
        self.bias.grad[...] = dy.sum(axis=(0, 2, 3))
        if not self.input_grad:
            return None
        ph, pw = self.padding
        h, w_ = x_pad.shape[2] - 2 * ph, x_pad.shape[3] - 2 * pw
        return dx_pad[:, :, ph:ph + h, pw:pw + w_]


class MaxPool2D(PoolSpec):
    def forward(self, x):
        n, c, oh, ow = self._start_forward(x)
        self._x = x
        kh, kw = self.kernel_size
        y = np.empty((n, c, oh, ow), x.dtype)
        for i, j, rows, cols in _windows(oh, ow, self.kernel_size, self.stride):
            y[:, :, i, j] = x[:, :, rows, cols].reshape(n, c, kh * kw).max(axis=2)
        return y

    def backward(self, dy):
        self._check_grad(dy)
        x = self._x
        n, c = x.shape[:2]
        kh, kw = self.kernel_size
        dx = np.zeros_like(x)
        for i, j, rows, cols in _windows(*dy.shape[2:], self.kernel_size, self.stride):
            window = x[:, :, rows, cols].reshape(n, c, kh * kw)
            # argmax picks the first maximum: ties send the whole gradient to one input
            first_max = window.argmax(axis=2)[..., None] == np.arange(kh * kw)  # (N, C, kh*kw)
            dx[:, :, rows, cols] += (first_max * dy[:, :, i, j, None]).reshape(n, c, kh, kw)
        return dx


class ReLU(Layer):
    def forward(self, x):
        self._check_float(x)
        self._record(x.shape, x.dtype)
        self._x = x
        return np.maximum(x, 0)

    def backward(self, dy):
        self._check_grad(dy)
        return dy * (self._x > 0)


class Linear(LinearSpec):
    def forward(self, x):
        self._start_forward(x)
        self._x = x
        return x @ self.weight.value.T + self.bias.value

    def backward(self, dy):
        self._check_grad(dy)
        self.weight.grad[...] = dy.T @ self._x
        self.bias.grad[...] = dy.sum(axis=0)
        return dy @ self.weight.value if self.input_grad else None
