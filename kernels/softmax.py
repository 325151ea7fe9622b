"""Softmax cross-entropy's forward in one pass per row (NumPy needs about ten
array operations, each a call with its own overhead on a (256, 10) batch)."""

import numpy as np

from .jit import kernel


@kernel()
def softmax_cross_entropy(logits, labels, grad, predicted):
    """The loss and its gradient in one pass per row: returns the sum over i of
    -log softmax(logits[i])[labels[i]] (float64); grad[i] = (softmax(logits[i])
    - onehot(labels[i])) / N, the mean loss's gradient, and predicted[i] = the
    index of the row's largest logit (the first if tied, as np.argmax).
    log-sum-exp around each row's maximum: exp never overflows and log never
    sees 0, so logits of magnitude 1e4 give a finite loss.

    logits, grad: (N, K); labels, predicted: (N,); labels in [0, K), checked by the caller.
    """
    n, k = logits.shape
    one, count = logits.dtype.type(1), logits.dtype.type(n)
    total = 0.0
    for i in range(n):
        row, g = logits[i], grad[i]
        top, best = row[0], 0
        for j in range(1, k):
            if row[j] > top:
                top, best = row[j], j
        norm = 0.0
        for j in range(k):
            norm += np.exp(row[j] - top)
        log_norm = row.dtype.type(np.log(norm))
        for j in range(k):
            g[j] = np.exp(row[j] - top - log_norm)  # the probability, rounded to the dtype first
            g[j] = ((g[j] - one) if j == labels[i] else g[j]) / count
        total += log_norm - (row[labels[i]] - top)
        predicted[i] = best
    return total
