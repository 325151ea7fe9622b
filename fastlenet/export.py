"""A trained LeNet-5 out of fastlenet and back: an ONNX graph that takes the raw
MNIST image, and PyTorch's parameter names in a safetensors file, both ways.

PyTorch's LeNet-5 with the same layers, whose `state_dict()` these files fit
(the README gives it in full):

    nn.Sequential(nn.Conv2d(1, 6, 5), nn.MaxPool2d(2), nn.ReLU(),
                  nn.Conv2d(6, 16, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
                  nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

Both libraries lay out a convolution's weight as (out, in, kh, kw), a linear
layer's as (out, in) with y = x W^T + b, and flatten (C, H, W) in that order, so
the tensors cross unchanged: only their names differ.
"""

import json

import numpy as np
from safetensors.numpy import save as safetensors_bytes

from .data import PAD, standardisation
from .datasets import named
from .errors import FastLeNetError, WeightsError
from .models import LeNet5
from .storage import atomic_write, read_safetensors

# fastlenet's name -> the nn.Sequential's (its layer indices)
TORCH_NAMES = {f"{ours}.{kind}": f"{theirs}.{kind}" for ours, theirs in
               (("c1", 0), ("c3", 3), ("f5", 7), ("f6", 9), ("f7", 11)) for kind in ("weight", "bias")}
OPSET = 17  # ONNX Runtime 1.18 and later run it; every op used here is unchanged since opset 13


class ExportError(FastLeNetError):
    """A model that cannot be written in the format asked for."""


def to_torch(model, path):
    """The model's float32 tensors under PyTorch's names, as safetensors.torch.save_file writes them."""
    tensors = {TORCH_NAMES[name]: np.ascontiguousarray(a, np.float32) for name, a in model.state_dict().items()}
    atomic_write(path, safetensors_bytes(tensors, metadata={"format": "pt"}))


def from_torch(path, normalize=False, dataset="mnist"):
    """A float32 LeNet5 from PyTorch's tensors (saved with safetensors.torch.save_file), trained
    on `dataset`. Every name, shape and dtype must fit exactly: nothing is guessed."""
    tensors, _ = read_safetensors(path)
    expected = {theirs: ours for ours, theirs in TORCH_NAMES.items()}
    missing, unknown = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unknown:
        raise WeightsError(f"{path}: not a LeNet-5 state_dict as the README's nn.Sequential names it: "
                           + "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                                         f"unknown {', '.join(unknown)}" if unknown else "") if part))
    model = LeNet5("fast", np.float32)
    model.normalize, model.dataset = normalize, named(dataset).name
    shapes = {name: a.shape for name, a in model.state_dict().items()}
    for theirs, a in sorted(tensors.items()):
        ours = expected[theirs]
        if a.dtype != np.float32:
            raise WeightsError(f"{path}: '{theirs}' is {a.dtype}, expected float32 (model.float() before saving)")
        if a.shape != shapes[ours]:
            raise WeightsError(f"{path}: '{theirs}' has shape {a.shape}, expected {shapes[ours]}")
        if not np.isfinite(a).all():
            raise WeightsError(f"{path}: '{theirs}' holds NaN or infinite values; weights must be finite")
    model.load_state_dict({expected[theirs]: a for theirs, a in tensors.items()})
    return model


def to_onnx(model, path):
    """The model as an ONNX graph (opset OPSET, float32): input "image", uint8 (N, 28, 28), MNIST's
    raw pixels (0 background, 255 ink); output "logits", float32 (N, 10); N dynamic. The
    preprocessing the model was trained with is in the graph: scaling to [0, 1], the 2-pixel
    padding to 32 x 32 and, for a --normalize model, MNIST's mean and std. The model's
    metadata_props name its data set ("dataset") and its classes ("classes", a JSON list)."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install -e \".[onnx]\"") from None
    weights = {name: np.ascontiguousarray(a, np.float32) for name, a in model.state_dict().items()}
    inits = [numpy_helper.from_array(a, name) for name, a in weights.items()]
    mean, std = standardisation(model.normalize)
    inits += [numpy_helper.from_array(np.array(v, np.float32), name)
              for name, v in (("scale", 255.0), ("mean", mean), ("std", std))]
    inits += [numpy_helper.from_array(np.array([1], np.int64), "channel_axis"),
              numpy_helper.from_array(np.array([0, 0, PAD, PAD, 0, 0, PAD, PAD], np.int64), "pads")]
    node = helper.make_node
    nodes = [
        node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        node("Div", ["pixels", "scale"], ["scaled"]),                      # [0, 1]
        node("Unsqueeze", ["scaled", "channel_axis"], ["plane"]),           # (N, 28, 28) -> (N, 1, 28, 28)
        node("Pad", ["plane", "pads"], ["padded"]),                         # -> (N, 1, 32, 32), zeros
        node("Sub", ["padded", "mean"], ["centred"]),                       # then standardised, as data.preprocess
        node("Div", ["centred", "std"], ["x"]),
        *conv_pool_relu("x", "c1", "h2"),                                   # (N, 6, 14, 14)
        *conv_pool_relu("h2", "c3", "h4"),                                  # (N, 16, 5, 5)
        node("Flatten", ["h4"], ["flat"], axis=1),                          # -> (N, 400)
        node("Gemm", ["flat", "f5.weight", "f5.bias"], ["f5"], transB=1), node("Relu", ["f5"], ["h5"]),
        node("Gemm", ["h5", "f6.weight", "f6.bias"], ["f6"], transB=1), node("Relu", ["f6"], ["h6"]),
        node("Gemm", ["h6", "f7.weight", "f7.bias"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "fastlenet_lenet5", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="fastlenet",
                                   doc_string=f"LeNet-5 trained with fastlenet on {named(model.dataset).title}")
    helper.set_model_props(onnx_model, {"dataset": model.dataset, "classes": json.dumps(named(model.dataset).classes)})
    onnx.checker.check_model(onnx_model, full_check=True)
    atomic_write(path, onnx_model.SerializeToString())


def conv_pool_relu(x, conv, out):
    """Conv -> 2x2 max pool -> ReLU: LeNet-5's order."""
    from onnx import helper
    return [helper.make_node("Conv", [x, f"{conv}.weight", f"{conv}.bias"], [f"{conv}_out"], kernel_shape=[5, 5]),
            helper.make_node("MaxPool", [f"{conv}_out"], [f"{conv}_pooled"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Relu", [f"{conv}_pooled"], [out])]
