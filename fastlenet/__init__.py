"""fastlenet: LeNet-5 for MNIST from scratch in NumPy and Numba.

`fastlenet.reference` holds the per-pixel loop layers (the oracle),
`fastlenet.layers` the fast ones with the same interface.
"""

__version__ = "0.1.0"

__all__ = ["set_threads", "__version__"]


def __getattr__(name):
    """set_threads, imported on first use: `import fastlenet` (and the CLI's start) stays
    free of Numba, so an early Ctrl-C or --help is instant."""
    if name == "set_threads":
        from .env import set_threads
        return set_threads
    raise AttributeError(f"module 'fastlenet' has no attribute {name!r}")
