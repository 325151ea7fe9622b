"""Numba kernels of the fast layers: small pure functions of arrays, writing into
the output buffers they are given. Installed as `fastlenet.kernels`.

| layer (fastlenet/fast.py)  | kernel file  | kernels                                        | oracle (reference.py) | tests                  |
|----------------------------|--------------|------------------------------------------------|-----------------------|------------------------|
| Conv2D, stride 1; Linear   | conv.py      | conv_forward, conv_weight_grad, conv_input_grad | Conv2D, Linear        | test_layers, test_model |
|   after a batch-innermost  |              |   (register-blocked with simd.py's vectors)    |                       |                        |
|   input (a 1x1 convolution)|              |                                                |                       |                        |
| Conv2D, layouts            | relayout.py  | interleave, gradient_to_planes                 | -                     | test_kernels           |
| Conv2D, im2col rung        | im2col.py    | gather_windows (the as_strided view's copy)    | Conv2D                | test_algorithms        |
|                            | col2im.py    | col2im (the input gradient's scatter)          |                       | test_kernels           |
| MaxPool2D                  | pool.py      | maxpool_*, maxpool2x2_* (and _interleaved);    | MaxPool2D             | test_kernels, layers   |
|                            |              |   window_max, window_scatter (im2col rung)     |                       |                        |
| ReLU                       | relu.py      | relu_forward, relu_backward                    | ReLU                  | test_layers            |
| SoftmaxCrossEntropy        | softmax.py   | softmax_cross_entropy                          | the NumPy formula     | test_kernels           |
| Adam (optim.py)            | adam.py      | adam_update                                    | NumPy's formula       | test_model             |
| --rotate/--scale (augment) | warp.py      | affine_warp (bilinear resampling)              | a tent-filter sum     | test_augment           |
| the trainer's batches      | batch.py     | gather_batch (pick, scale, pad, shift,         | data.preprocess,      | test_kernels           |
|                            |              |   standardise)                                 |   data.shift_images   |                        |

The names here are checked entry points (checked.py: shapes, dtypes, contiguity
-> a one-line KernelArgumentError); `.kernel` is the compiled kernel, which the
fast layers import from the kernel files and call unchecked. jit.py holds the
Numba options they share and the cache they are kept in (stamped with every kernel
file and the vector width); simd.py the vector type conv.py's
blocks use. Every parallel loop is partitioned so that each output element has
exactly one writer, so results do not depend on the Numba thread count.
"""

from . import adam, batch, col2im as _col2im, conv, im2col, pool, relayout, relu, softmax, warp
from .checked import KernelArgumentError, entry

SPECS = {  # kernel -> its arguments (see checked.py)
    adam.adam_update: "value:float[P], grad:float[P], exp_avg:float[P]:out, exp_avg_sq:float[P]:out, beta1, "
                      "one_minus_beta1, beta2, one_minus_beta2, step_size, sqrt_bias2, eps",
    batch.gather_batch: "images:uint8[M H W], idx:int[N], shifts:int[N TWO], mean, std, out:float[N ONE H2 W2]:out",
    _col2im.col2im: "cols:float[N OH OW KH RUN], stride_h, stride_w, pad_h, pad_w, out:float[N H W C]:c:out",
    conv.conv_forward: "x:float[C R L]:c, w:float[F C KH KW]:c, bias:float[F]:c, row_step, pos_step, col_step, "
                       "out:float[F R2 L2]:c:out",
    conv.conv_weight_grad: "x:float[C R L]:c, dy:float[F R2 L2]:c, row_step, pos_step, col_step, "
                           "dw:float[F C KH KW]:c:out, bias_grad:float[F]:out",
    conv.conv_input_grad: "dy:float[F R2 L2]:c, w:float[F C KH KW]:c, row_step, pos_step, col_step, "
                          "dx:float[C R L]:c:out",
    im2col.gather_windows: "windows:float[N OH OW KH RUN], cols:float[ROWS K1]:c:out",
    relayout.gradient_to_planes: "dy:float[N F OH OW], hp, wp, planes:float[F ONE P]:c:out",
    relayout.interleave: "x:float[N C H W], out:float[C H W N]:out",
    pool.maxpool_forward: "x:float[N C H W], kh, kw, sh, sw, out:float[N C OH OW]:out, argmax:int32[N C OH OW]:out",
    pool.maxpool_backward: "dy:float[N C OH OW], argmax:int32[N C OH OW], out:float[N C H W]:c:out",
    pool.maxpool2x2_forward: "x:float[N C H W], out:float[N C OH OW]:out, argmax:int32[N C OH OW]:out",
    pool.maxpool2x2_forward_interleaved: "x:float[C H W N], out:float[C OH OW N]:out, argmax:int8[C OH OW N]:out",
    pool.window_max: "windows:float[N C OH OW KH KW], out:float[N C OH OW]:out, argmax:int32[N C OH OW]:out",
    pool.window_scatter: "dy:float[N C OH OW], argmax:int32[N C OH OW], kh, kw, stride_h, stride_w, "
                         "out:float[N C H W]:out",
    pool.maxpool2x2_backward_interleaved: "dy:float[C OH OW N], argmax:int8[C OH OW N], out:float[C H W N]:out",
    relu.relu_forward: "x:float[S]:c, out:float[S]:c:out, mask:bool[S]:c:out",
    relu.relu_backward: "dy:float[S], mask:bool[S], dx:float[S]:out",
    softmax.softmax_cross_entropy: "logits:float[N K], labels:int[N], grad:float[N K]:out, predicted:int64[N]:out",
    warp.affine_warp: "x:float[N C H W], inverse:float64[N TWO THREE], fill, out:float[N C OH OW]:out",
}
globals().update({kernel.__name__: entry(kernel, spec) for kernel, spec in SPECS.items()})

__all__ = ["KernelArgumentError"] + sorted(kernel.__name__ for kernel in SPECS)
