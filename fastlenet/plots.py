"""The figures of a run, as PNG files (matplotlib, no display needed)."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .storage import atomic_write  # noqa: E402


def _save(fig, path):
    """Rendered in memory, then written atomically (a full disk names the file)."""
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, png.getvalue())


def loss_curve(iterations, losses, path):
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(iterations, losses, lw=0.8, label="batch loss")
    if len(losses) >= 20:
        k = max(len(losses) // 50, 5)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(iterations[k - 1:], smooth, lw=1.6, label=f"mean of {k}")
    ax.set(xlabel="iteration", ylabel="cross-entropy loss", yscale="log", title="Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def accuracy_curve(iterations, accuracies, path):
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(iterations, 100 * np.asarray(accuracies), marker=".", lw=1)
    ax.set(xlabel="iteration", ylabel="validation accuracy (%)", title="Validation accuracy")
    if len(accuracies):
        ax.set_ylim(max(0.0, 100 * min(accuracies) - 1), 100)
    ax.grid(alpha=0.3)
    _save(fig, path)


def confusion(counts, path, classes=tuple("0123456789")):
    counts = np.asarray(counts)
    fig, ax = plt.subplots(figsize=(6.4 + 0.1 * max(map(len, classes)), 5.6))
    im = ax.imshow(np.log1p(counts), cmap="Blues")
    for (t, p), v in np.ndenumerate(counts):
        if v:
            ax.text(p, t, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > counts.max() / 3 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true",
           title=f"Test confusion matrix ({np.trace(counts)}/{counts.sum()} right)")
    long_names = max(map(len, classes)) > 2
    ax.set_xticklabels(classes, rotation=45 if long_names else 0, ha="right" if long_names else "center")
    ax.set_yticklabels(classes)
    fig.colorbar(im, ax=ax, label="log(1 + count)")
    _save(fig, path)


def misclassified(images, labels, probs, path, classes=tuple("0123456789"), limit=36):
    """A grid of wrongly classified images: true class, top-2 predictions with probabilities."""
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels)[:limit]
    cols = 6
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, i in zip(np.ravel(axes), wrong):
        top = np.argsort(probs[i])[::-1][:2]
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"true {classes[labels[i]]}\n{classes[top[0]]}: {probs[i, top[0]]:.0%}  "
                     f"{classes[top[1]]}: {probs[i, top[1]]:.0%}", fontsize=7)
    fig.suptitle(f"Misclassified test images ({len(wrong)} shown): true class, top-2 predictions", fontsize=9)
    _save(fig, path)


def sweep(rows, path):
    """Test accuracy and seconds per epoch of every point of a sweep."""
    names = [r["point"] for r in rows]
    fig, (acc, speed) = plt.subplots(1, 2, figsize=(11, max(3.0, 0.35 * len(rows) + 1.5)))
    y = np.arange(len(rows))
    acc.barh(y, [100 * r["test_accuracy"] for r in rows], color="tab:blue")
    acc.set(yticks=y, yticklabels=names, xlabel="test accuracy (%)", title="Test accuracy")
    low = min(100 * r["test_accuracy"] for r in rows)
    acc.set_xlim(max(0.0, low - 1), 100)
    speed.barh(y, [r["seconds_per_epoch"] for r in rows], color="tab:orange")
    speed.set(yticks=y, yticklabels=[], xlabel="seconds per epoch", title="Speed")
    for ax in (acc, speed):
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    _save(fig, path)
