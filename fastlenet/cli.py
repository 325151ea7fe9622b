"""The `fastlenet` command: train, evaluate, predict, data (and bench, profile)."""

import argparse
import sys

from . import __version__
from .errors import FastLeNetError


class PredictFailed(FastLeNetError):
    """Some images of a predict call could not be read: each was reported on its own line."""

    reported = True


def progress_bar(**kwargs):
    from tqdm import tqdm
    return tqdm(leave=False, dynamic_ncols=True, **kwargs)


def add_data_dir(p):
    from .datasets import DATA_DIR_HELP
    p.add_argument("--data-dir", help=DATA_DIR_HELP)


def add_dataset(p, what, default=None):
    from .datasets import DATASETS
    p.add_argument("--dataset", choices=list(DATASETS), default=default, help=what)


def add_train(sub):
    from .settings import RECIPES, add_flags
    t = sub.add_parser("train", help="train LeNet-5 (defaults and recipes: README, Results)")
    add_flags(t)
    t.add_argument("--recipe", choices=list(RECIPES), help="start from a measured recipe (README, Results): spec "
                                                          "(constant 1e-3), default, augmented; flags override it")
    t.add_argument("--config", metavar="FILE", help="start a new run from the settings in FILE: a run's "
                                                   "config.json, or JSON / TOML written by hand; flags override them")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run (flags given change its settings "
                                                       "where a resume may: see --epochs, --threads ...)")
    t.add_argument("--overwrite", action="store_true", help="replace the run in --out (once the new one can start)")
    t.add_argument("--compare-reference", action="store_true",
                   help="time 3 reference-backend steps on this run's first batches; record the speedup")


def build_parser():
    from .core import ALGORITHMS
    parser = argparse.ArgumentParser(prog="fastlenet", description="LeNet-5 on MNIST in NumPy + Numba.")
    parser.add_argument("--version", action="version", version=f"fastlenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)

    e = sub.add_parser("evaluate", help="test accuracy, per-class accuracy, confusion matrix")
    e.add_argument("weights", metavar="RUN_DIR_OR_WEIGHTS")
    add_dataset(e, "the test set to use (default: the one the weights were trained on; another is refused)")
    add_data_dir(e)
    e.add_argument("--json", action="store_true")

    p = sub.add_parser("predict", help="classify images (PNG/JPEG) of digits, or of the classes of the data "
                                       "set the weights were trained on")
    p.add_argument("weights", metavar="RUN_DIR_OR_WEIGHTS")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    add_dataset(p, "the classes expected (default: the weights' data set; another is refused)")
    p.add_argument("--json", action="store_true")

    x = sub.add_parser("export", help="a trained model as ONNX (the raw 28x28 image in) or as PyTorch's "
                                      "state_dict in safetensors (README, Interop)")
    x.add_argument("weights", metavar="RUN_DIR_OR_WEIGHTS")
    x.add_argument("--format", choices=["onnx", "torch"], required=True)
    x.add_argument("-o", "--output", required=True, metavar="FILE")

    m = sub.add_parser("import", help="PyTorch's LeNet-5 weights (safetensors.torch.save_file of the README's "
                                      "nn.Sequential) as fastlenet weights")
    m.add_argument("torch_weights", metavar="TORCH.safetensors")
    m.add_argument("-o", "--output", required=True, metavar="FILE")
    m.add_argument("--normalize", action="store_true", help="the model was trained on inputs standardised with "
                                                            "MNIST's mean and std (as fastlenet train --normalize)")
    add_dataset(m, "the data set the model was trained on (default mnist)", "mnist")

    a = sub.add_parser("data", help="where a data set is; verify it; download it with --download")
    add_dataset(a, "the data set (default mnist)", "mnist")
    add_data_dir(a)
    a.add_argument("--download", action="store_true")

    b = sub.add_parser("bench", help="fast vs reference (and PyTorch when installed): speed and agreement")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--threads", type=int, help="Numba (and PyTorch) threads (default: all cores)")
    b.add_argument("--blas-threads", type=int, default=1)
    b.add_argument("--repeats", type=int, default=20, help="timed runs per fast measurement (median)")
    b.add_argument("--reference-repeats", type=int, default=3, help="timed runs per reference measurement")
    b.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    b.add_argument("--no-torch", action="store_true", help="do not compare with PyTorch even if installed")
    b.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    add_data_dir(b)

    w = sub.add_parser("sweep", help="train every point of a grid (TOML) through a process or MPI pool")
    w.add_argument("grid", metavar="GRID.toml")
    w.add_argument("--out", help="sweep directory (default sweeps/<grid name>)")
    w.add_argument("--workers", type=int, default=2, help="points trained at once")
    w.add_argument("--threads", type=int, default=1, help="Numba threads per point (default 1)")
    w.add_argument("--overwrite", action="store_true",
                   help="run again the points whose folders hold a run of other settings")
    w.add_argument("--executor", choices=["process", "mpi"], default="process",
                   help="mpi: mpi4py's MPIPoolExecutor, under mpiexec ... python -m mpi4py.futures")
    add_data_dir(w)

    f = sub.add_parser("profile", help="per-layer time of training steps")
    f.add_argument("--steps", type=int, default=50)
    f.add_argument("--batch-size", type=int, default=256)
    f.add_argument("--backend", choices=["fast", "reference"], default="fast")
    f.add_argument("--conv", choices=ALGORITHMS, default="auto", help="the fast backend's rung for convolutions "
                                                                      "and pools (the README's ladder)")
    f.add_argument("--threads", type=int)
    f.add_argument("--blas-threads", type=int, default=1)
    f.add_argument("--trace", metavar="FILE", help="write a Chrome trace-event JSON (Perfetto, chrome://tracing)")
    f.add_argument("--cprofile", metavar="FILE", help="write a cProfile dump of the same steps")
    f.add_argument("--json", action="store_true")
    add_data_dir(f)
    return parser


def cmd_train(args):
    from .env import hold_freed_memory
    from .settings import SettingsError, from_file, from_recipe, given
    from .train import train
    changes = given(args)
    hold_freed_memory()  # process-wide, so the entry point sets it (see env.py)
    starts = [f"--{name}" for name in ("recipe", "config") if getattr(args, name)]
    if args.resume and starts:
        raise SettingsError(f"{starts[0]} starts a new run; --resume {args.resume} continues with its own settings")
    if len(starts) == 2:
        raise SettingsError("--recipe and --config are two starting points for a run; give one (flags override either)")
    if args.resume:
        summary = train(resume=args.resume, changes=changes, progress=progress_bar,
                        compare_reference=args.compare_reference)
    else:
        config = from_file(args.config, changes) if args.config else from_recipe(args.recipe or "default", changes)
        summary = train(config, overwrite=args.overwrite, progress=progress_bar, compare_reference=args.compare_reference)
    if summary is None:  # an MPI rank other than 0: rank 0 reports
        return
    validation = summary["validation_accuracy"]
    print(f"test accuracy {summary['test_accuracy']:.2%}  validation "
          f"{'-' if validation is None else f'{validation:.2%}'}  train {summary['train_accuracy']:.2%}  |  "
          f"{summary['seconds_per_epoch']:.2f} s/epoch, {summary['train_images_per_s']:,.0f} images/s, "
          f"compile {summary['numba_compile_s']:.2f} s  |  run: {summary['run_dir']}")
    if "speedup_vs_reference" in summary:
        print(f"fast step {summary['fast_step_s'] * 1e3:.1f} ms (median) vs reference "
              f"{summary['reference_step_s'] * 1e3:.0f} ms: {summary['speedup_vs_reference']:.0f}x")


def cmd_export(args):
    from .export import to_onnx, to_torch
    from .storage import load_model, weights_path
    model = load_model(weights_path(args.weights))
    (to_onnx if args.format == "onnx" else to_torch)(model, args.output)
    print(f"wrote {args.output} ({args.format})")


def cmd_import(args):
    from .export import from_torch
    from .storage import save_model
    save_model(args.output, from_torch(args.torch_weights, args.normalize, args.dataset))
    print(f"wrote {args.output} (fastlenet weights: fastlenet evaluate / predict read it)")


def trained_on(model, asked, weights):
    """The Dataset the model classifies; a DataError if the command asked for another."""
    from .datasets import named
    from .errors import DataError
    ds = named(model.dataset)
    if asked and asked != ds.name:
        raise DataError(f"{weights} was trained on {ds.title}; its classes are not {named(asked).title}'s, so "
                        f"--dataset {asked} would measure nothing (leave --dataset out, or give {ds.name})")
    return ds


def cmd_evaluate(args):
    from .data import load_mnist
    from .evaluation import predict_proba, report
    from .storage import json_text, load_model, weights_path
    model = load_model(weights_path(args.weights))
    ds = trained_on(model, args.dataset, args.weights)
    data = load_mnist(args.data_dir, progress=progress_bar, test_only=True, dataset=ds.name)
    result = {"dataset": ds.name, "classes": list(ds.classes),
              **report(predict_proba(model, data.test_images), data.test_labels)}
    if args.json:
        print(json_text(result))
        return
    print(f"{ds.title} test accuracy: {result['accuracy']:.2%} ({len(data.test_labels)} images)\n")
    names = [str(t) if name == str(t) else f"{t} {name}" for t, name in enumerate(ds.classes)]
    width = max(9, *map(len, names))
    corner = "true\\pred"
    print(f"{corner:>{width}} " + " ".join(f"{p:>5}" for p in range(10)) + "   accuracy")
    for name, row, acc in zip(names, result["confusion_matrix"], result["per_class_accuracy"]):
        print(f"{name:>{width}} " + " ".join(f"{v:>5}" for v in row) + f"   {acc:7.2%}")


def cmd_predict(args):
    """Each image's top digits; an image that cannot be read is reported on its own line
    (and in --json) without stopping the others, and makes the exit status 1."""
    from .data import preprocess
    from .evaluation import softmax
    from .predict import ImageError, load_grayscale, mnist_style, top_classes
    from .storage import json_text, load_model, weights_path
    model = load_model(weights_path(args.weights))
    ds = trained_on(model, args.dataset, args.weights)
    results = []
    for path in args.images:
        try:
            image = mnist_style(load_grayscale(path), path, ds.fit, ds.centre)
        except ImageError as e:
            results.append({"image": path, "error": str(e)})
            continue
        probs = softmax(model.forward(preprocess(image[None], model.dtype, model.normalize)))[0]
        results.append({"image": path, "top": top_classes(probs, ds.classes)})
    if args.json:
        print(json_text(results))
    for r in results:
        if "error" in r:
            print(f"fastlenet: error: {r['error']}", file=sys.stderr)
        elif not args.json:
            print(f"{r['image']}: " + ", ".join(f"{t['class']} ({t['probability']:.1%})" for t in r["top"]))
    if any("error" in r for r in results):
        raise PredictFailed("images could not be read")


def cmd_data(args):
    from .data import find_or_download, read_idx, search_dirs
    from .datasets import named
    ds = named(args.dataset)
    print(f"{ds.title}: searched, in order: " + ", ".join(map(str, search_dirs(args.data_dir, ds.name))))
    paths = find_or_download(args.data_dir, download_missing=args.download, progress=progress_bar, dataset=ds.name)
    for name, path in paths.items():
        array = read_idx(path, *ds.files[name], ds.title)
        print(f"ok  {path}  {'x'.join(map(str, array.shape))}  genuine (checksum verified)")


def positive(threads=None, blas_threads=1, **values):
    """The counts a command takes are >= 1; thread counts are checked as training's are."""
    from .settings import TrainConfig
    TrainConfig(threads=threads, blas_threads=blas_threads).check()
    for name, value in values.items():
        if value is not None and value < 1:
            raise FastLeNetError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def cmd_bench(args):
    from .benchmark import format_bench, run_bench
    from .storage import write_json
    positive(batch_size=args.batch_size, repeats=args.repeats, reference_repeats=args.reference_repeats,
             threads=args.threads, blas_threads=args.blas_threads)
    result = run_bench(args.batch_size, args.threads, args.blas_threads, args.repeats, args.reference_repeats,
                       args.data_dir, layers=not args.no_layers, with_torch=not args.no_torch)
    print(format_bench(result))
    if args.json:
        write_json(args.json, result)


def cmd_profile(args):
    from .profiler import format_profile, profile_training
    from .storage import json_text
    positive(steps=args.steps, batch_size=args.batch_size, threads=args.threads, blas_threads=args.blas_threads)
    result = profile_training(args.steps, args.batch_size, args.backend, args.threads, args.blas_threads,
                              args.data_dir, args.trace, args.cprofile, conv=args.conv)
    print(json_text(result) if args.json else format_profile(result))


def cmd_sweep(args):
    from .sweep import SweepError, run_sweep
    positive(workers=args.workers, threads=args.threads)
    rows = run_sweep(args.grid, args.out, args.workers, args.executor, args.data_dir, args.threads,
                     overwrite=args.overwrite)
    width = max(len(r["point"]) for r in rows)
    print(f"{'point':<{width}}  test acc  s/epoch  iters to loss 0.1")
    for r in rows:
        if r["status"] == "failed":
            print(f"{r['point']:<{width}}  failed: {r['error']}")
            continue
        print(f"{r['point']:<{width}}  {r['test_accuracy']:8.2%}  {r['seconds_per_epoch']:7.2f}  "
              f"{r['iterations_to_loss_0.1'] if r['iterations_to_loss_0.1'] is not None else '-':>17}")
    failed = sum(r["status"] == "failed" for r in rows)
    if failed:
        raise SweepError(f"{failed} of {len(rows)} points failed (summary.csv has their errors)")


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "evaluate": cmd_evaluate, "predict": cmd_predict, "data": cmd_data,
            "bench": cmd_bench, "profile": cmd_profile, "export": cmd_export, "import": cmd_import}


ANNOUNCES_COMPILES = {"train", "evaluate", "predict", "bench", "profile"}  # the commands that run kernels here


def run_command(args):
    """The command; the ones that run kernels in this process say when Numba compiles them
    (a machine's first run), unless quiet, and only on MPI's rank 0."""
    if args.command not in ANNOUNCES_COMPILES or getattr(args, "quiet", False):
        return COMMANDS[args.command](args)
    from .compiling import announced, to_stderr
    from .distributed import world
    with announced(to_stderr if world().rank == 0 else lambda message: None):
        return COMMANDS[args.command](args)


def main(argv=None):
    from .interrupt import ctrl_c_outside_fragile_code
    try:
        with ctrl_c_outside_fragile_code():
            run_command(build_parser().parse_args(argv))
    except FastLeNetError as e:
        if getattr(e, "reported", False):
            return 1
        return fail(f"fastlenet: error: {e}", getattr(e, "exit_code", 1))
    except OSError as e:
        return fail(f"fastlenet: error: {e.filename or ''}: {e.strerror or e}", 1)
    except KeyboardInterrupt:
        return fail("fastlenet: interrupted", 130)
    return 0


def fail(message, code):
    """Prints the one-line error; under MPI, ends every rank (the others would wait forever)."""
    print(message, file=sys.stderr)
    from .distributed import world
    comm = world()
    if comm.size > 1:
        comm.abort(code)
    return code
