"""`fastlenet bench`: what the fast engine buys on this machine, measured.

Per-layer forward/backward, a whole training step and inference, fast vs
reference (and PyTorch when installed), interleaved so that a noisy machine
slows every contender alike; medians of repeats after a warm-up; and, in the
same run, the largest difference between fast and reference results.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np

from .compiling import kernel_cache_stats
from .data import FILES, load_mnist, locate, preprocess, search_dirs
from .env import environment, hold_freed_memory, set_threads
from .losses import SoftmaxCrossEntropy
from .models import LeNet5
from .workloads import LAYERS, gradient_like, layer_case, train_step, training_setup


def timed_block(fn, settle=True):
    """fn -> run_block(k): k timed calls, after one untimed call when `settle` (so that
    another contender's pool, still spinning, has settled; a call of a second needs none)."""
    def run_block(k):
        if settle:
            fn()
        times = []
        for _ in range(k):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return times
    return run_block


def fast_turns(fn, runs):
    """A contender for `interleaved` that takes blocks of 5 calls, each after a settling call."""
    return timed_block(fn), runs, 5


def reference_turns(fn, runs):
    """A contender that takes one call a turn: a reference call lasts long enough to need no settling."""
    return timed_block(fn, settle=False), runs, 1


def interleaved(contenders):
    """{name: (run_block, runs, block)} -> {name: median seconds}: the contenders take
    turns, a block of runs each, until each has its runs, so that they share the
    machine's noise."""
    times = {name: [] for name in contenders}
    while any(len(times[name]) < runs for name, (_, runs, _) in contenders.items()):
        for name, (run_block, runs, block) in contenders.items():
            if len(times[name]) < runs:
                times[name] += run_block(min(block, runs - len(times[name])))
    return {name: float(np.median(t)) for name, t in times.items()}


def raw_mnist(n, data_dir=None):
    """n uint8 training images and labels: real MNIST when the files are on disk
    (never downloads), else random pixels, and which of the two it is."""
    if all(locate(name, search_dirs(data_dir)) for name in FILES):
        data = load_mnist(data_dir, download_missing=False)
        return data.train_images[:n], data.train_labels[:n].astype(np.int64), "MNIST"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), np.uint8), rng.integers(0, 10, n), "synthetic (MNIST not found)"


def mnist_batch(batch, data_dir=None):
    images, labels, source = raw_mnist(batch, data_dir)
    return preprocess(images), labels, source


def max_abs_diff(x, labels):
    """Largest |fast - reference| over logits and every gradient, same seed and batch, float32."""
    results = {}
    for backend in ("fast", "reference"):
        model, loss = LeNet5(backend, seed=0), SoftmaxCrossEntropy()
        logits = model.forward(x)
        loss.forward(logits, labels)
        model.backward(loss.backward())
        results[backend] = {"logits": logits, **{name: p.grad for name, p in model.named_params.items()}}
    return {k: float(np.max(np.abs(results["fast"][k].astype(np.float64) - results["reference"][k])))
            for k in results["fast"]}


class TorchPeer:
    """PyTorch's LeNet-5 in a child process (see fastlenet.torch_peer), or unavailable."""

    def __init__(self, x, labels, threads):
        self.proc = None
        if importlib.util.find_spec("torch") is None:
            return
        self.dir = tempfile.TemporaryDirectory()
        paths = [os.path.join(self.dir.name, name) for name in ("x.npy", "labels.npy")]
        np.save(paths[0], x)
        np.save(paths[1], labels)
        self.proc = subprocess.Popen([sys.executable, "-m", "fastlenet.torch_peer", *paths, str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self.proc.stdout.readline())

    def block(self, what):
        def run_block(k):
            self.proc.stdin.write(f"{what} {k}\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())
        return run_block

    def close(self):
        if self.proc:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self.dir.cleanup()


def run_bench(batch_size=256, threads=None, blas_threads=1, repeats=20, reference_repeats=3, data_dir=None,
              layers=True, with_torch=True):
    thread_settings = set_threads(threads, blas_threads)
    hold_freed_memory()
    x, labels, source = mnist_batch(batch_size, data_dir)

    start = time.perf_counter()
    fast_model, fast_opt, fast_loss = training_setup("fast")
    train_step(fast_model, fast_opt, fast_loss, x, labels)  # compiles, or loads Numba's disk cache
    compile_s = time.perf_counter() - start
    ref_model, ref_opt, ref_loss = training_setup("reference")

    result = {"batch_size": batch_size, "repeats": repeats, "reference_repeats": reference_repeats,
              "data": source, "threads": thread_settings, "compile_s": compile_s, "numba_cache": kernel_cache_stats()}

    if layers:
        result["layers"] = {}
        for name in LAYERS:
            row, passes = {}, {"forward": {}, "backward": {}}
            for backend, turns, n in (("fast", fast_turns, repeats), ("reference", reference_turns, reference_repeats)):
                layer, lx = layer_case(name, backend, batch_size)
                dy = gradient_like(layer.forward(lx))
                layer.backward(dy)
                # default arguments bind this backend's layer and arrays
                passes["forward"][backend] = turns(lambda layer=layer, lx=lx: layer.forward(lx), n)
                passes["backward"][backend] = turns(lambda layer=layer, dy=dy: layer.backward(dy), n)
            for direction, contenders in passes.items():  # fast and reference take turns, as for the step
                times = interleaved(contenders)
                row[f"fast_{direction}_s"], row[f"reference_{direction}_s"] = times["fast"], times["reference"]
                row[f"{direction}_speedup"] = times["reference"] / times["fast"]
            result["layers"][name] = row

    # the reference takes turns too, one step at a time, so that the speedup compares like with like
    steps = {"fast": fast_turns(lambda: train_step(fast_model, fast_opt, fast_loss, x, labels), repeats),
             "reference": reference_turns(lambda: train_step(ref_model, ref_opt, ref_loss, x, labels),
                                          reference_repeats)}
    infers = {"fast": fast_turns(lambda: fast_model.forward(x), repeats),
              "reference": reference_turns(lambda: ref_model.forward(x), reference_repeats)}
    torch = TorchPeer(x, labels, thread_settings["numba"]) if with_torch else None
    try:
        if torch and torch.proc:
            torch.block("step")(2)  # warm-up
            torch.block("infer")(2)
            steps["torch"], infers["torch"] = (torch.block("step"), repeats, 5), (torch.block("infer"), repeats, 5)
        step_times, infer_times = interleaved(steps), interleaved(infers)
    finally:
        if torch:
            torch.close()
    ref_step, ref_infer = step_times["reference"], infer_times["reference"]

    result["train_step"] = {"fast_s": step_times["fast"], "reference_s": ref_step,
                            "speedup": ref_step / step_times["fast"]}
    result["inference"] = {"fast_s": infer_times["fast"], "reference_s": ref_infer,
                           "fast_images_per_s": batch_size / infer_times["fast"],
                           "reference_images_per_s": batch_size / ref_infer, "speedup": ref_infer / infer_times["fast"]}
    result["max_abs_diff"] = max_abs_diff(x, labels)
    if "torch" in step_times:
        result["torch"] = {"version": torch.info["version"], "threads": torch.info["threads"],
                           "train_step_s": step_times["torch"], "ratio": step_times["fast"] / step_times["torch"],
                           "inference_images_per_s": batch_size / infer_times["torch"],
                           "inference_ratio": infer_times["fast"] / infer_times["torch"]}
    else:
        result["torch_skipped"] = "not compared (--no-torch)" if not with_torch else \
            "not installed (pip install -e \".[compare]\" to compare)"
    result["env"] = environment()
    result["env"]["numba_threading_layer"] = numba.threading_layer()
    return result


def format_bench(r):
    """The human-readable report of run_bench's result."""
    ms = lambda s: f"{s * 1e3:9.3f}"  # noqa: E731
    lines = [f"fastlenet bench: batch {r['batch_size']}, float32, {r['data']} data; medians of {r['repeats']} "
             f"runs (reference: {r['reference_repeats']}), taking turns, after a warm-up",
             f"threads: Numba {r['threads']['numba']}, BLAS {r['threads']['blas']}; first step (Numba compile or "
             f"cache load): {r['compile_s']:.2f} s ({r['numba_cache']['cache_misses']} compiled, "
             f"{r['numba_cache']['cache_hits']} from cache)", ""]
    if "layers" in r:
        lines.append(f"{'layer':<14}{'pass':<10}{'reference ms':>13}{'fast ms':>10}{'speedup':>9}")
        for name, row in r["layers"].items():
            for direction in ("forward", "backward"):
                lines.append(f"{name:<14}{direction:<10}{ms(row[f'reference_{direction}_s']):>13}"
                             f"{ms(row[f'fast_{direction}_s']):>10}{row[f'{direction}_speedup']:>8.1f}x")
        lines.append("")
    t, i = r["train_step"], r["inference"]
    lines += [f"training step (forward + backward + Adam): reference {ms(t['reference_s'])} ms, "
              f"fast {ms(t['fast_s'])} ms -> {t['speedup']:.1f}x",
              f"inference: reference {i['reference_images_per_s']:,.0f} images/s, fast {i['fast_images_per_s']:,.0f} "
              f"images/s -> {i['speedup']:.1f}x"]
    if "torch" in r:
        tt = r["torch"]
        lines.append(f"PyTorch {tt['version']} ({tt['threads']} threads), interleaved: step {ms(tt['train_step_s'])} ms, "
                     f"inference {tt['inference_images_per_s']:,.0f} images/s; fastlenet / PyTorch step time = "
                     f"{tt['ratio']:.2f}")
    else:
        lines.append(f"PyTorch: {r['torch_skipped']}")
    worst = max(r["max_abs_diff"].items(), key=lambda kv: kv[1])
    lines.append(f"fast vs reference on this batch: max |difference| {worst[1]:.2e} ({worst[0]}); "
                 f"logits {r['max_abs_diff']['logits']:.2e}")
    e = r["env"]
    lines.append(f"env: {e['cpu']}, {e['cores']} cores; Python {e['python']}, NumPy {e['numpy']}, Numba {e['numba']} "
                 f"({e['numba_threading_layer']}), llvmlite {e['llvmlite']}; BLAS "
                 + ", ".join(f"{b['library']} {b['version']} ({b['threads']} threads)" for b in e["blas"]))
    return "\n".join(lines)
