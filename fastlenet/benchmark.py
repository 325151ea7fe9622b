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
from .peak import measured_peak, pass_flops, rates
from .workloads import LADDER, LAYERS, gradient_like, layer_case, lenet, train_step, training_setup


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
    """{rung: {logits | parameter: largest |rung - reference|}} for the fast rungs:
    the logits and every gradient, same seed and batch, float32."""
    results = {}
    for impl in LADDER:
        model, loss = lenet(impl), SoftmaxCrossEntropy()
        logits = model.forward(x)
        loss.forward(logits, labels)
        model.backward(loss.backward())
        results[impl] = {"logits": logits, **{name: p.grad for name, p in model.named_params.items()}}
    reference = results.pop("reference")
    return {impl: {k: float(np.max(np.abs(a.astype(np.float64) - reference[k]))) for k, a in grads.items()}
            for impl, grads in results.items()}


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

    setups, compile_s = {}, {}
    for impl in LADDER:  # the first step compiles, or loads Numba's disk cache
        start = time.perf_counter()
        setups[impl] = training_setup(impl)
        train_step(*setups[impl], x, labels)
        compile_s[impl] = time.perf_counter() - start

    result = {"batch_size": batch_size, "repeats": repeats, "reference_repeats": reference_repeats,
              "data": source, "threads": thread_settings, "compile_s": compile_s["direct"],
              "first_step_s": compile_s, "numba_cache": kernel_cache_stats()}
    if layers:
        peak, record = measured_peak(thread_settings["numba"])
        result.update(record)
        result["layers"] = layer_ladder(batch_size, repeats, reference_repeats, peak)

    # every rung takes turns (the reference one step at a time), so the speedups compare like with like
    steps = {impl: turns(impl, lambda s=setups[impl]: train_step(*s, x, labels), repeats, reference_repeats)
             for impl in LADDER}
    infers = {impl: turns(impl, lambda m=setups[impl][0]: m.forward(x), repeats, reference_repeats)
              for impl in LADDER}
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
    result["ladder"] = ladder(step_times, infer_times, batch_size)
    fast_step, ref_step = step_times["direct"], step_times["reference"]
    fast_infer, ref_infer = infer_times["direct"], infer_times["reference"]
    result["train_step"] = {"fast_s": fast_step, "im2col_s": step_times["im2col"], "reference_s": ref_step,
                            "speedup": ref_step / fast_step}
    result["inference"] = {"fast_s": fast_infer, "im2col_s": infer_times["im2col"], "reference_s": ref_infer,
                           "fast_images_per_s": batch_size / fast_infer,
                           "im2col_images_per_s": batch_size / infer_times["im2col"],
                           "reference_images_per_s": batch_size / ref_infer, "speedup": ref_infer / fast_infer}
    result["max_abs_diff_by_rung"] = max_abs_diff(x, labels)
    result["max_abs_diff"] = result["max_abs_diff_by_rung"]["direct"]
    if "torch" in step_times:
        result["torch"] = {"version": torch.info["version"], "threads": torch.info["threads"],
                           "train_step_s": step_times["torch"], "ratio": fast_step / step_times["torch"],
                           "inference_images_per_s": batch_size / infer_times["torch"],
                           "inference_ratio": fast_infer / infer_times["torch"]}
    else:
        result["torch_skipped"] = "not compared (--no-torch)" if not with_torch else \
            "not installed (pip install -e \".[compare]\" to compare)"
    result["env"] = environment()
    result["env"]["numba_threading_layer"] = numba.threading_layer()
    return result


def turns(impl, fn, repeats, reference_repeats):
    """A contender for `interleaved`: the reference one call a turn, a fast rung blocks of 5."""
    return reference_turns(fn, reference_repeats) if impl == "reference" else fast_turns(fn, repeats)


def layer_ladder(batch_size, repeats, reference_repeats, peak):
    """{layer: {f"{rung}_{pass}_s": median seconds, f"{rung}_{pass}_gflops" and "..._peak_share" (a
    convolution's and a linear layer's: the share of `peak` FLOP/s), f"{pass}_speedup": reference /
    direct}}: each layer at its place in each rung's LeNet-5, the rungs taking turns per layer and pass."""
    rows = {}
    for name in LAYERS:
        row, passes = {}, {"forward": {}, "backward": {}}
        for impl in LADDER:
            layer, lx = layer_case(name, impl, batch_size)
            flops = dict(zip(("forward", "backward"), pass_flops(layer, lx.shape)))
            dy = gradient_like(layer.forward(lx))
            layer.backward(dy)
            # default arguments bind this rung's layer and arrays
            passes["forward"][impl] = turns(impl, lambda layer=layer, lx=lx: layer.forward(lx), repeats,
                                            reference_repeats)
            passes["backward"][impl] = turns(impl, lambda layer=layer, dy=dy: layer.backward(dy), repeats,
                                             reference_repeats)
        for direction, contenders in passes.items():
            times = interleaved(contenders)
            row.update({f"{impl}_{direction}_s": times[impl] for impl in LADDER})
            for impl in LADDER:
                row.update({f"{impl}_{direction}_{k}": v for k, v in rates(flops[direction], times[impl], peak).items()})
            row[f"fast_{direction}_s"] = times["direct"]  # the names before the ladder, kept for readers of the JSON
            row[f"{direction}_speedup"] = times["reference"] / times["direct"]
        rows[name] = row
    return rows


def ladder(step_times, infer_times, batch_size):
    """The rungs in order, PyTorch last when it ran: seconds per training step, images/s
    in inference, and the step's speedup over the rung before and over the reference."""
    rows, previous = [], None
    for impl in [*LADDER, "torch"]:
        if impl not in step_times:
            continue
        step = step_times[impl]
        rows.append({"rung": impl, "train_step_s": step, "inference_images_per_s": batch_size / infer_times[impl],
                     "speedup_over_previous": None if previous is None else previous / step,
                     "speedup_over_reference": step_times["reference"] / step})
        previous = step
    return rows


def format_bench(r):
    """The human-readable report of run_bench's result."""
    ms = lambda s: f"{s * 1e3:9.3f}"  # noqa: E731
    first = ", ".join(f"{impl} {s:.2f} s" for impl, s in r["first_step_s"].items())
    lines = [f"fastlenet bench: batch {r['batch_size']}, float32, {r['data']} data; medians of {r['repeats']} "
             f"runs (reference: {r['reference_repeats']}), taking turns, after a warm-up",
             f"threads: Numba {r['threads']['numba']}, BLAS {r['threads']['blas']}; first step (Numba compile or "
             f"cache load): {first} ({r['numba_cache']['cache_misses']} compiled, "
             f"{r['numba_cache']['cache_hits']} from cache)", ""]
    if "layers" in r:
        lines.append(f"peak: {r['peak_gflops']:.0f} GFLOP/s ({r['peak_measured_by']}); direct's rate and share of it")
        lines.append(f"{'layer':<14}{'pass':<10}{'reference ms':>13}{'im2col ms':>11}{'direct ms':>11}{'speedup':>9}"
                     f"{'GFLOP/s':>9}{'of peak':>9}")
        for name, row in r["layers"].items():
            for direction in ("forward", "backward"):
                rate = f"direct_{direction}_gflops"
                lines.append(f"{name:<14}{direction:<10}{ms(row[f'reference_{direction}_s']):>13}"
                             f"{ms(row[f'im2col_{direction}_s']):>11}{ms(row[f'direct_{direction}_s']):>11}"
                             f"{row[f'{direction}_speedup']:>8.1f}x"
                             + (f"{row[rate]:>9.1f}{row[f'direct_{direction}_peak_share']:>9.1%}" if rate in row else ""))
        lines.append("")
    lines.append(f"{'the ladder':<12}{'step ms':>10}{'vs previous':>13}{'vs reference':>14}{'inference img/s':>17}")
    for row in r["ladder"]:
        previous = "" if row["speedup_over_previous"] is None else f"{row['speedup_over_previous']:.2f}x"
        name = f"PyTorch {r['torch']['version']}" if row["rung"] == "torch" else row["rung"]
        lines.append(f"{name:<12}{ms(row['train_step_s']):>10}{previous:>13}{row['speedup_over_reference']:>13.1f}x"
                     f"{row['inference_images_per_s']:>17,.0f}")
    lines.append("(a training step: forward + backward + Adam; direct is the fast backend's default here)")
    if "torch" in r:
        tt = r["torch"]
        lines.append(f"PyTorch ({tt['threads']} threads) ran in a child process, interleaved: fastlenet / PyTorch "
                     f"step time = {tt['ratio']:.2f}, inference time = {tt['inference_ratio']:.2f}")
    else:
        lines.append(f"PyTorch: {r['torch_skipped']}")
    for impl, diffs in r["max_abs_diff_by_rung"].items():
        worst = max(diffs.items(), key=lambda kv: kv[1])
        lines.append(f"{impl} vs reference on this batch: max |difference| {worst[1]:.2e} ({worst[0]}); "
                     f"logits {diffs['logits']:.2e}")
    e = r["env"]
    lines.append(f"env: {e['cpu']}, {e['cores']} cores; Python {e['python']}, NumPy {e['numpy']}, Numba {e['numba']} "
                 f"({e['numba_threading_layer']}), llvmlite {e['llvmlite']}; BLAS "
                 + ", ".join(f"{b['library']} {b['version']} ({b['threads']} threads)" for b in e["blas"]))
    return "\n".join(lines)
