"""A network as layers run one after another, on either backend."""

import numpy as np

from .policy import engine_pass


class Sequential:
    """Layers in order: forward runs them first to last, backward last to first.

    `Sequential(("conv", Conv2D(...)), ("pool", MaxPool2D(2)), ...)` names each
    layer (bare layers are named by position: "0", "1", ...); a layer is also
    an attribute (`net.conv`). Parameters are named "<layer>.weight",
    "<layer>.bias". The fast layers hand each other their memory layout (a
    large batch innermost) as they would in any hand-written loop: the
    container adds no copy.
    """

    def __init__(self, *layers):
        named = [item if isinstance(item, tuple) else (str(i), item) for i, item in enumerate(layers)]
        names = [name for name, _ in named]
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self).__name__}: layer names must differ, got {names}")
        for name, layer in named:
            if not (callable(getattr(layer, "forward", None)) and callable(getattr(layer, "backward", None))):
                raise TypeError(f"{type(self).__name__}: layer {name!r} has no forward/backward: {layer!r}")
        self.layer_names, self.layers = names, [layer for _, layer in named]
        self.named_params = {f"{name}.{kind}": getattr(layer, kind)
                             for name, layer in named for kind in getattr(layer, "param_names", ())}
        self.params = list(self.named_params.values())

    def __getattr__(self, name):
        named = self.__dict__.get("layer_names", ())
        if name in named:
            return self.__dict__["layers"][named.index(name)]
        raise AttributeError(f"{type(self).__name__!r} has no attribute or layer {name!r}")

    def __repr__(self):
        inner = ", ".join(f"{name}={layer!r}" for name, layer in zip(self.layer_names, self.layers))
        return f"{type(self).__name__}({inner})"

    @engine_pass
    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    @engine_pass
    def backward(self, dy):
        """Fills every parameter's .grad from the output's gradient dy; returns
        the input's gradient (None when the first layer computes none)."""
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def state_dict(self):
        return {name: p.value.copy() for name, p in self.named_params.items()}

    def load_state_dict(self, state):
        """Copies weights in; names, shapes and dtypes must match exactly."""
        owner = type(self).__name__
        missing = sorted(set(self.named_params) - set(state))
        unexpected = sorted(set(state) - set(self.named_params))
        if missing or unexpected:
            raise ValueError(f"{owner}.load_state_dict: not a state of this network: "
                             f"missing {missing}, unexpected {unexpected}")
        for name, p in self.named_params.items():
            value = np.asarray(state[name])
            if value.shape != p.value.shape:
                raise ValueError(f"{owner}.load_state_dict: '{name}' has shape {value.shape}, expected {p.value.shape}")
            if value.dtype != p.value.dtype:
                raise TypeError(f"{owner}.load_state_dict: '{name}' is {value.dtype}, the model is {p.value.dtype}")
        for name, p in self.named_params.items():
            p.value[...] = state[name]
