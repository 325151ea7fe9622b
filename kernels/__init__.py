"""Numba kernels of the fast layers: small pure functions of arrays.

Installed as `fastlenet.kernels`. Every parallel loop is partitioned so that
each output element has exactly one writer, so results do not depend on the
Numba thread count.
"""

from .adam import adam_update
from .col2im import col2im
from .direct import conv_forward, conv_input_grad, conv_weight_grad, gradient_to_planes, interleave
from .im2col import gather_windows
from .pool import (maxpool2x2_backward_interleaved, maxpool2x2_forward, maxpool2x2_forward_interleaved, maxpool_backward,
                   maxpool_forward)
from .relu import relu_backward, relu_forward
from .softmax import softmax_cross_entropy

__all__ = ["adam_update", "col2im", "conv_forward", "conv_input_grad", "conv_weight_grad", "gather_windows",
           "gradient_to_planes", "interleave", "maxpool_forward", "maxpool_backward", "maxpool2x2_forward",
           "maxpool2x2_forward_interleaved", "maxpool2x2_backward_interleaved", "relu_backward", "relu_forward",
           "softmax_cross_entropy"]
