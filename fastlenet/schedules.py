"""Learning-rate schedules: pure functions of the step, so a resumed run needs no state."""

import math

LR_SCHEDULES = ("constant", "cosine")


def learning_rate(config, iteration, total):
    """The rate for step `iteration` (0-based) of `total`: --lr throughout, or cosine
    decay from --lr towards 0 over the run."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * iteration / total))
    return config.lr
