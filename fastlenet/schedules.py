"""Learning-rate schedules: pure functions of the step, so a resumed run needs no state."""

import math

LR_SCHEDULES = ("constant", "cosine", "onecycle")


def learning_rate(config, iteration, total, steps_per_epoch=None):
    """The rate for step `iteration` (0-based) of `total`:
    - constant: --lr throughout (the spec);
    - cosine: from --lr towards 0 over the run;
    - onecycle: linear warm-up over --warmup-epochs (steps_per_epoch steps each),
      lr/W, 2 lr/W ... lr, then cosine from --lr to --min-lr, reached at the last step."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * iteration / total))
    if config.lr_schedule == "onecycle":
        warmup = min(round(config.warmup_epochs * (steps_per_epoch or total)), total - 1)
        if iteration < warmup:
            return config.lr * (iteration + 1) / warmup
        peak = max(warmup - 1, 0)  # the warm-up's last step, or the first without one
        progress = (iteration - peak) / max(total - 1 - peak, 1)
        return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr
