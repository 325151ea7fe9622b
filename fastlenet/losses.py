"""Softmax cross-entropy, fused: the gradient of the pair is (softmax - onehot) / N."""

import numpy as np

from .kernels.softmax import softmax_cross_entropy


class SoftmaxCrossEntropy:
    """forward(logits (N, K), labels (N,) ints) -> mean loss; backward() -> dlogits (N, K),
    computed by the forward's pass (the same array for every backward of one forward).
    After forward, `predicted` (N,) is each row's class: logits.argmax(axis=1)."""

    def __init__(self):
        self._grad, self.predicted = None, None

    def forward(self, logits, labels):
        if not isinstance(logits, np.ndarray) or logits.dtype not in (np.float32, np.float64):
            raise TypeError(f"SoftmaxCrossEntropy: logits must be a float32/float64 array, got "
                            f"{getattr(logits, 'dtype', type(logits).__name__)}")
        labels = np.asarray(labels)
        if logits.ndim != 2 or labels.shape != (logits.shape[0],):
            raise ValueError(f"SoftmaxCrossEntropy: expected logits (N, K) and labels (N,), got "
                             f"{logits.shape} and {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"SoftmaxCrossEntropy: labels must be integers, got {labels.dtype}")
        n, k = logits.shape
        if n and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"SoftmaxCrossEntropy: labels must lie in [0, {k}), got {labels.min()}..{labels.max()}")
        logits = np.ascontiguousarray(logits)  # a fast Linear's batch-innermost output: one layout, one compiled kernel
        self._grad, self.predicted = np.empty_like(logits), np.empty(n, np.int64)
        total = softmax_cross_entropy(logits, labels, self._grad, self.predicted)
        return total / n if n else float("nan")

    def backward(self):
        if self._grad is None:
            raise RuntimeError("SoftmaxCrossEntropy: backward called before forward")
        return self._grad
