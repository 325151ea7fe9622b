"""The end of a run: final evaluation, weights, figures and the summary's numbers.
Reads the trainer's results; nothing here feeds back into training."""

import numpy as np

from . import plots
from .compiling import kernel_cache_stats
from .datasets import named
from .evaluation import predict_proba, report
from .storage import WEIGHTS_NAME, save_model


def smoothed_crossing(losses, threshold=0.1, window=20):
    """First iteration (1-based) at which the mean loss of the last `window` iterations is <= threshold."""
    if len(losses) < window:
        return None
    means = np.convolve(losses, np.ones(window) / window, mode="valid")
    hits = np.flatnonzero(means <= threshold)
    return int(hits[0] + window) if len(hits) else None


def finish(trainer, run, compile_s):
    """Saves the weights and the figures of a finished run; returns its summary."""
    data, model = trainer.data, trainer.evaluated_model()
    save_model(run.path / WEIGHTS_NAME, model)
    metrics = run.metrics()
    iters = [m for m in metrics if m["type"] == "iter"]
    evals = [m for m in metrics if m["type"] == "eval"]
    losses = np.array([m["loss"] for m in iters])
    test_probs = predict_proba(model, data.test_images)
    test = report(test_probs, data.test_labels)
    train_probs = predict_proba(model, data.train_images, indices=trainer.train_idx)
    figures(run.path, iters, evals, test, data, test_probs, named(data.dataset).classes)
    train_seconds = float(sum(trainer.epoch_seconds))
    summary = {
        "test_accuracy": test["accuracy"],
        "validation_accuracy": evals[-1]["val_accuracy"] if evals else None,
        "train_accuracy": float((train_probs.argmax(axis=1) == data.train_labels[trainer.train_idx]).mean()),
        "per_class_test_accuracy": test["per_class_accuracy"],
        "final_loss": float(losses[-20:].mean()) if len(losses) else None,
        "iterations_to_loss_0.1": smoothed_crossing(losses),
        "iterations": trainer.iteration,
        "epochs": trainer.epoch,
        "seconds_per_epoch": train_seconds / max(len(trainer.epoch_seconds), 1),
        "epoch_seconds": trainer.epoch_seconds,
        "train_images_per_s": len(trainer.train_idx) * trainer.epoch / train_seconds if train_seconds else None,
        **epoch_costs(trainer.epoch_compute_seconds, trainer.epoch_wall_seconds),
        "numba_compile_s": compile_s,
        "numba_cache": kernel_cache_stats(),
        "dataset": data.dataset,
        "backend": trainer.config.backend,
        "threads": trainer.threads,
    }
    if trainer.average:  # what the average gained
        live = predict_proba(trainer.model, data.test_images).argmax(axis=1)
        summary["test_accuracy_without_ema"] = float((live == data.test_labels).mean())
    return summary


def epoch_costs(compute, wall):
    """What the trainer adds to the steps' compute (forward, backward, optimizer): batches,
    distortions, validation, records, progress. Over the epochs timed (a run resumed from an
    older checkpoint has fewer)."""
    if not compute:
        return {"compute_seconds_per_epoch": None, "wall_seconds_per_epoch": None, "epoch_over_compute": None}
    return {"compute_seconds_per_epoch": sum(compute) / len(compute), "wall_seconds_per_epoch": sum(wall) / len(wall),
            "epoch_over_compute": sum(wall) / sum(compute)}


def figures(folder, iters, evals, test, data, test_probs, classes):
    plots.loss_curve(np.array([m["iteration"] for m in iters]), np.array([m["loss"] for m in iters]),
                     folder / "loss.png")
    plots.accuracy_curve([m["iteration"] for m in evals], [m["val_accuracy"] for m in evals],
                         folder / "val_accuracy.png")
    plots.confusion(test["confusion_matrix"], folder / "confusion_matrix.png", classes)
    plots.misclassified(data.test_images, data.test_labels, test_probs, folder / "misclassified.png", classes)
