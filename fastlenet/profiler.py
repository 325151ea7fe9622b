"""`fastlenet profile`: where a training step's time goes, layer by layer.

Timers are attached to a model's layers only while profiling, by wrapping
their methods on the instance, so an unprofiled model runs untouched code.
"""

import cProfile
import json
import time
from collections import defaultdict

import numpy as np

from .benchmark import raw_mnist
from .env import hold_freed_memory, set_threads
from .peak import measured_peak, pass_flops, rates
from .workloads import gathered, train_step, training_setup


class Recorder:
    """Collects (name, start, duration) spans, one per layer pass per step."""

    def __init__(self):
        self.spans = []
        self.origin = time.perf_counter()

    def timed(self, name, fn):
        def wrapper(*args):
            start = time.perf_counter()
            out = fn(*args)
            self.spans.append((name, start - self.origin, time.perf_counter() - start))
            return out
        return wrapper

    def instrument(self, model, optimizer, loss):
        for name, layer in zip(model.layer_names, model.layers):
            layer.forward = self.timed(f"{name}.forward", layer.forward)
            layer.backward = self.timed(f"{name}.backward", layer.backward)
        optimizer.step = self.timed("optimizer.step", optimizer.step)
        loss.forward = self.timed("loss.forward", loss.forward)
        loss.backward = self.timed("loss.backward", loss.backward)

    def chrome_trace(self):
        """Trace-event JSON (Perfetto, chrome://tracing): complete events in microseconds."""
        return {"traceEvents": [{"name": name, "ph": "X", "ts": start * 1e6, "dur": dur * 1e6, "pid": 1, "tid": 1,
                                 "cat": name.split(".")[-1]} for name, start, dur in self.spans],
                "displayTimeUnit": "ms"}


def profile_training(steps=50, batch_size=256, backend="fast", threads=None, blas_threads=1, data_dir=None,
                     trace=None, cprofile=None, warmup=3, conv="auto"):
    thread_settings = set_threads(threads, blas_threads)
    hold_freed_memory()
    images, labels, source = raw_mnist(batch_size * 8, data_dir)
    model, optimizer, loss = training_setup(conv if backend == "fast" and conv != "auto" else backend)
    rng = np.random.default_rng(0)

    def batch():
        idx = rng.integers(0, len(images), batch_size)
        return gathered(images, idx, np.float32, False), labels[idx]  # as the trainer loads a batch

    def step(recorder=None):
        t0 = time.perf_counter()
        x, y = batch()
        if recorder:
            recorder.spans.append(("data", t0 - recorder.origin, time.perf_counter() - t0))
        train_step(model, optimizer, loss, x, y)

    for _ in range(warmup):  # compile, fill caches
        step()
    shapes, a = {}, batch()[0]  # each layer's input shape, for its floating-point work
    for name, layer in zip(model.layer_names, model.layers):
        shapes[name], a = a.shape, layer.forward(a)
    peak, peak_record = measured_peak(thread_settings["numba"])
    recorder = Recorder()
    recorder.instrument(model, optimizer, loss)
    profiler = cProfile.Profile() if cprofile else None
    wall = time.perf_counter()
    if profiler:
        profiler.enable()
    for _ in range(steps):
        s0 = time.perf_counter()
        step(recorder)
        recorder.spans.append(("step", s0 - recorder.origin, time.perf_counter() - s0))
    if profiler:
        profiler.disable()
        profiler.dump_stats(cprofile)
    wall = time.perf_counter() - wall
    if trace:
        with open(trace, "w") as f:
            json.dump(recorder.chrome_trace(), f)

    totals = defaultdict(float)
    for name, _, dur in recorder.spans:
        totals[name] += dur
    step_ms = 1e3 * totals.pop("step") / steps
    rows = []
    for name, layer in zip(model.layer_names, model.layers):
        fwd, bwd = (1e3 * totals.get(f"{name}.{p}", 0.0) / steps for p in ("forward", "backward"))
        row = {"name": name, "forward_ms": fwd, "backward_ms": bwd}
        for direction, flops, ms in zip(("forward", "backward"), pass_flops(layer, shapes[name]), (fwd, bwd)):
            row.update({f"{direction}_{k}": v for k, v in rates(flops, ms / 1e3, peak).items()})
        rows.append(row)
    rows.append({"name": "loss", "forward_ms": 1e3 * totals["loss.forward"] / steps,
                 "backward_ms": 1e3 * totals["loss.backward"] / steps})
    rows.append({"name": "optimizer", "forward_ms": 0.0, "backward_ms": 1e3 * totals["optimizer.step"] / steps})
    rows.append({"name": "data", "forward_ms": 1e3 * totals["data"] / steps, "backward_ms": 0.0})
    for row in rows:
        row["share"] = (row["forward_ms"] + row["backward_ms"]) / step_ms
    return {"backend": backend, "conv": conv, "steps": steps, "batch_size": batch_size, "data": source,
            "threads": thread_settings, "step_ms": step_ms, "wall_s": wall, "rows": rows, **peak_record}


def format_profile(p):
    rung = f" ({p['conv']} rung)" if p["backend"] == "fast" else ""
    lines = [f"fastlenet profile: {p['backend']} backend{rung}, {p['steps']} steps of batch {p['batch_size']} "
             f"({p['data']}), Numba {p['threads']['numba']} / BLAS {p['threads']['blas']} threads",
             f"peak: {p['peak_gflops']:.0f} GFLOP/s ({p['peak_measured_by']}); GFLOP/s and % of it per pass",
             f"{'part':<12}{'forward ms':>12}{'backward ms':>13}{'share':>8}{'forward':>18}{'backward':>18}"]
    for row in p["rows"]:
        lines.append(f"{row['name']:<12}{row['forward_ms']:>12.3f}{row['backward_ms']:>13.3f}{row['share']:>8.1%}"
                     + "".join(f"{row[f'{d}_gflops']:>9.1f} {row[f'{d}_peak_share']:>7.1%}" if f"{d}_gflops" in row
                               else " " * 18 for d in ("forward", "backward")).rstrip())
    covered = sum(r["share"] for r in p["rows"])
    lines.append(f"{'step':<12}{p['step_ms']:>25.3f} ms  (timed parts cover {covered:.1%}; the rest is Python glue)")
    return "\n".join(lines)
