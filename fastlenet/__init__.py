"""fastlenet: LeNet-5 for MNIST from scratch in NumPy and Numba.

`fastlenet.reference` holds the per-pixel loop layers (the oracle),
`fastlenet.layers` the fast ones with the same interface.
"""

__version__ = "0.1.0"

from .env import set_threads  # noqa: E402

__all__ = ["set_threads", "__version__"]
