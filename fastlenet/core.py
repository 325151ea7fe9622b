"""What every layer shares, whichever backend computes it: parameters,
initialisation and the checks that turn bad input into a clear error."""

import numpy as np


class Parameter:
    """A trainable array and its gradient (same shape, same dtype).

    `backward` overwrites `.grad` in place (it does not accumulate), so the
    arrays may be views into one flat buffer owned by a model or optimizer.
    """

    def __init__(self, value):
        self.value = value
        self.grad = np.zeros_like(value)

    def __repr__(self):
        return f"Parameter(shape={self.value.shape}, dtype={self.value.dtype})"


def he_normal(shape, fan_in, dtype, rng):
    """Kaiming/He normal initialisation, std = sqrt(2 / fan_in).

    Drawn in float64 and cast, so float32 and float64 models of one seed start
    from the same numbers (up to rounding).
    """
    rng = np.random.default_rng(rng)
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def float_dtype(dtype):
    """Checks a parameter dtype: float32 or float64."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def pair(value, name):
    """An int or a pair of ints -> a tuple (vertical, horizontal)."""
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value}")
    return value


def output_size(size, kernel, stride, padding):
    """Number of window positions along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


class Layer:
    """forward(x) -> y caches what backward(dy) -> dx needs."""

    params = ()
    param_names = ()  # the attributes that hold `params`, in order: "weight", "bias"
    _out_shape = _dtype = None  # recorded by forward, checked by backward

    def __repr__(self):
        return f"{type(self).__name__}()"

    def _check_float(self, x, what="input"):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self!r}: {what} must be a numpy array, got {type(x).__name__}")
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{self!r}: {what} must be float32 or float64, got {x.dtype}")

    def _check_dtype(self, x, dtype, what="input"):
        self._check_float(x, what)
        if x.dtype != dtype:
            raise TypeError(
                f"{self!r}: {what} dtype {x.dtype} does not match the layer's parameters "
                f"({dtype}); cast the input or build the layer with dtype={x.dtype}"
            )

    def _check_ndim(self, x, ndim, layout):
        self._check_float(x)
        if x.ndim != ndim:
            raise ValueError(
                f"{self!r}: expected a {ndim}-D input {layout}, got shape {x.shape}"
            )

    def _record(self, out_shape, dtype):
        self._out_shape, self._dtype = tuple(out_shape), dtype
        return self._out_shape

    def _check_grad(self, dy):
        if self._out_shape is None:
            raise RuntimeError(f"{self!r}: backward called before forward")
        self._check_float(dy, "gradient")
        if dy.shape != self._out_shape:
            raise ValueError(
                f"{self!r}: gradient shape {dy.shape} does not match the forward "
                f"output shape {self._out_shape}"
            )
        if dy.dtype != self._dtype:
            raise TypeError(f"{self!r}: gradient dtype {dy.dtype} does not match the forward dtype {self._dtype}")


ALGORITHMS = ("auto", "im2col", "direct")  # the fast backend's rungs; the reference has its loops only


def check_algorithm(layer, algorithm):
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{layer}: algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")


class ConvSpec(Layer):
    """Constructor, parameters and input checks of Conv2D, for both backends."""

    param_names = ("weight", "bias")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 *, dtype=np.float32, rng=None, algorithm="auto"):
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"Conv2D: kernel_size and stride must be >= 1 and padding >= 0, got "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
            )
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError("Conv2D: in_channels and out_channels must be >= 1")
        check_algorithm("Conv2D", algorithm)
        if algorithm == "direct" and self.stride != (1, 1):
            raise ValueError(f"Conv2D: algorithm 'direct' needs stride 1 (its kernels step one position at a time), "
                             f"got stride={self.stride}; use 'im2col' or 'auto'")
        self.algorithm = algorithm
        dtype = float_dtype(dtype)
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        self.weight = Parameter(he_normal((self.out_channels, self.in_channels, kh, kw), fan_in, dtype, rng))
        self.bias = Parameter(np.zeros(self.out_channels, dtype))
        self.params = [self.weight, self.bias]
        self.input_grad = True  # False skips dx (the first layer of a network needs none)
        self._out_shape = None

    def __repr__(self):
        return (f"Conv2D({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding})")

    def _start_forward(self, x):
        """Checks x (N, C, H, W); records and returns the output shape (N, F, OH, OW)."""
        self._check_ndim(x, 4, "(N, C, H, W)")
        self._check_dtype(x, self.weight.value.dtype)
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"{self!r}: expected {self.in_channels} input channels, got shape {x.shape}")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(
                f"{self!r}: padded input {h + 2 * ph}x{w + 2 * pw} is smaller than the kernel {kh}x{kw} "
                f"(input shape {x.shape})"
            )
        return self._record((n, self.out_channels, output_size(h, kh, sh, ph), output_size(w, kw, sw, pw)), x.dtype)


class PoolSpec(Layer):
    """Constructor and input checks of MaxPool2D, for both backends."""

    def __init__(self, kernel_size=2, stride=None, *, algorithm="auto"):
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        if min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise ValueError(f"MaxPool2D: kernel_size and stride must be >= 1, got "
                             f"kernel_size={self.kernel_size}, stride={self.stride}")
        check_algorithm("MaxPool2D", algorithm)
        self.algorithm = algorithm
        self._out_shape = None

    def __repr__(self):
        return f"MaxPool2D(kernel_size={self.kernel_size}, stride={self.stride})"

    def _start_forward(self, x):
        self._check_ndim(x, 4, "(N, C, H, W)")
        n, c, h, w = x.shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        if h < kh or w < kw:
            raise ValueError(f"{self!r}: input {h}x{w} is smaller than the window {kh}x{kw} (shape {x.shape})")
        return self._record((n, c, output_size(h, kh, sh, 0), output_size(w, kw, sw, 0)), x.dtype)


class LinearSpec(Layer):
    """Constructor, parameters and input checks of Linear, for both backends."""

    param_names = ("weight", "bias")

    def __init__(self, in_features, out_features, *, dtype=np.float32, rng=None):
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError("Linear: in_features and out_features must be >= 1")
        dtype = float_dtype(dtype)
        self.weight = Parameter(he_normal((self.out_features, self.in_features), self.in_features, dtype, rng))
        self.bias = Parameter(np.zeros(self.out_features, dtype))
        self.params = [self.weight, self.bias]
        self.input_grad = True
        self._out_shape = None

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features})"

    def _start_forward(self, x):
        self._check_ndim(x, 2, "(N, features)")
        self._check_dtype(x, self.weight.value.dtype)
        if x.shape[1] != self.in_features:
            raise ValueError(f"{self!r}: expected {self.in_features} input features, got shape {x.shape}")
        return self._record((x.shape[0], self.out_features), x.dtype)


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W). One implementation serves both backends:
    it is a view, there is nothing to make faster."""


    def __repr__(self):
        return "Flatten()"

    def forward(self, x):
        self._check_float(x)
        if x.ndim < 2:
            raise ValueError(f"{self!r}: expected an input with a batch axis and at least one more, got shape {x.shape}")
        self._in_shape = x.shape
        y = x.reshape(x.shape[0], -1)
        self._record(y.shape, x.dtype)
        return y

    def backward(self, dy):
        self._check_grad(dy)
        return dy.reshape(self._in_shape)
