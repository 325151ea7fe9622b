"""Numba kernels of the fast layers: small pure functions of arrays, writing into
the output buffers they are given. Installed as `fastlenet.kernels`.

| layer (fastlenet/fast.py)  | kernel file  | kernels                                        | oracle (reference.py) | tests                  |
|----------------------------|--------------|------------------------------------------------|-----------------------|------------------------|
| Conv2D, stride 1; Linear   | conv.py      | conv_forward, conv_weight_grad, conv_input_grad | Conv2D, Linear        | test_layers, test_model |
|   after a batch-innermost  |              |   (register-blocked with simd.py's vectors)    |                       |                        |
|   input (a 1x1 convolution)|              |                                                |                       |                        |
| Conv2D, layouts            | relayout.py  | interleave, gradient_to_planes                 | -                     | test_kernels           |
| Conv2D, other strides      | im2col.py    | gather_windows (the as_strided view's copy)    | Conv2D                | test_layers            |
|                            | col2im.py    | col2im (the input gradient's scatter)          |                       | test_kernels           |
| MaxPool2D                  | pool.py      | maxpool_*, maxpool2x2_* (and _interleaved)     | MaxPool2D             | test_kernels, layers   |
| ReLU                       | relu.py      | relu_forward, relu_backward                    | ReLU                  | test_layers            |
| SoftmaxCrossEntropy        | softmax.py   | softmax_cross_entropy                          | the NumPy formula     | test_kernels           |
| Adam (optim.py)            | adam.py      | adam_update                                    | NumPy's formula       | test_model             |

jit.py holds the Numba options they share; simd.py the vector type conv.py's
blocks use. Every parallel loop is partitioned so that each output element has
exactly one writer, so results do not depend on the Numba thread count.
"""

from .adam import adam_update
from .col2im import col2im
from .conv import conv_forward, conv_input_grad, conv_weight_grad
from .im2col import gather_windows
from .pool import (maxpool2x2_backward_interleaved, maxpool2x2_forward, maxpool2x2_forward_interleaved, maxpool_backward,
                   maxpool_forward)
from .relayout import gradient_to_planes, interleave
from .relu import relu_backward, relu_forward
from .softmax import softmax_cross_entropy

__all__ = ["adam_update", "col2im", "conv_forward", "conv_input_grad", "conv_weight_grad", "gather_windows",
           "gradient_to_planes", "interleave", "maxpool_forward", "maxpool_backward", "maxpool2x2_forward",
           "maxpool2x2_forward_interleaved", "maxpool2x2_backward_interleaved", "relu_backward", "relu_forward",
           "softmax_cross_entropy"]
