"""Errors a user can cause and fix: the CLI prints them as one line."""


class FastLeNetError(Exception):
    """Base of the errors about a user's files, data or settings."""


class DataError(FastLeNetError, ValueError):
    """An MNIST/IDX file is missing, corrupt, truncated or not genuine."""


class WeightsError(FastLeNetError, ValueError):
    """A weights or checkpoint file is unreadable, unsafe or of another model."""
