"""An exponential moving average of the weights (`--ema DECAY`)."""

import numpy as np

from .optim import load_buffers


class WeightAverage:
    """After every optimizer step, for each parameter:

        shadow = decay * shadow + (1 - decay) * value,   shadow starting at 0

    and the average is shadow / (1 - decay^steps): the bias correction Adam applies
    to its moments, without which the first few hundred steps' average would be
    pulled towards the zero it started from. `buffers` names the arrays a
    checkpoint stores (as an optimizer's); `steps` is its one scalar.
    """

    buffers = ("shadow",)

    def __init__(self, params, decay):
        if not 0 < decay < 1:
            raise ValueError(f"WeightAverage: decay must be in (0, 1), got {decay}")
        self.params, self.decay = list(params), float(decay)
        self.shadow = [np.zeros_like(p.value) for p in self.params]
        self.steps = 0

    def update(self):
        self.steps += 1
        keep = self.decay
        for p, shadow in zip(self.params, self.shadow):
            shadow *= keep  # Python floats: float32 stays float32
            shadow += (1 - keep) * p.value

    def copy_to(self, model):
        """Writes the bias-corrected average into `model`'s parameters (same shapes)."""
        if not self.steps:
            raise ValueError("WeightAverage: no step was averaged yet")
        correction = 1 - self.decay ** self.steps
        for p, shadow in zip(model.params, self.shadow):
            np.divide(shadow, correction, out=p.value)

    def state_dict(self):
        return {"decay": self.decay, "steps": self.steps, "shadow": [s.copy() for s in self.shadow]}

    def load_state_dict(self, state):
        self.shadow = load_buffers("WeightAverage", "shadow", self.params, state["shadow"])
        self.decay, self.steps = float(state["decay"]), int(state["steps"])
