"""Predictions in bounded chunks, accuracy and the confusion matrix."""

import numpy as np

from .data import preprocess
from .workloads import gathered


def softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


CHUNK = 256  # images per forward when predicting


def predict_proba(model, images, chunk=CHUNK, *, indices=None):
    """uint8 images (N, 28, 28) -> class probabilities (N, 10), preprocessed as the
    model's weights expect, `chunk` images at a time so memory stays bounded whatever N.
    With `indices`, those of images[indices], each chunk picked and preprocessed by the
    trainer's batch kernel (the same values), with no copy of the whole subset."""
    count = len(images) if indices is None else len(indices)
    probs = np.empty((count, 10), np.float64)
    for start in range(0, count, chunk):
        if indices is None:
            batch = preprocess(images[start:start + chunk], model.dtype, model.normalize)
        else:
            batch = gathered(images, indices[start:start + chunk], model.dtype, model.normalize)
        probs[start:start + chunk] = softmax(model.forward(batch))
    return probs


def confusion_matrix(labels, predictions, classes=10):
    """counts[true, predicted]."""
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def report(probs, labels):
    """Accuracy, per-class accuracy and the confusion matrix of probabilities against labels."""
    predictions = probs.argmax(axis=1)
    counts = confusion_matrix(labels, predictions)
    per_class = np.diag(counts) / np.maximum(counts.sum(axis=1), 1)
    return {"accuracy": float((predictions == labels).mean()) if len(labels) else float("nan"),
            "per_class_accuracy": per_class.tolist(), "confusion_matrix": counts.tolist()}
