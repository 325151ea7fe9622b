"""The training settings: defaults, the one place each is checked, the CLI flags
generated from them, and their round trip through a run's config.json.

Every setting is a field of TrainConfig whose metadata says its flag's help, its
allowed values and whether a resumed run may change it. `check()` is the only
validation a setting gets; it raises SettingsError with one message format:
    --NAME must be ALLOWED, got VALUE
"""

import argparse
import json
import math
import operator
import tomllib
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .core import ALGORITHMS
from .datasets import DATA_DIR_HELP, DATASETS
from .errors import FastLeNetError
from .schedules import LR_SCHEDULES


class SettingsError(FastLeNetError, ValueError):
    """Settings that cannot make a run."""


def setting(default, help, *, minimum=None, above=None, maximum=None, below=None, choices=None, resumable=False,
            metavar=None):
    """A TrainConfig field: value >= minimum (or > above) and <= maximum (or < below).
    `maximum` may be a callable: a limit of this machine."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "above": above, "maximum": maximum,
                                            "below": below, "choices": choices, "resumable": resumable,
                                            "metavar": metavar})


def cores():
    """Threads Numba may run here: the machine's cores, or NUMBA_NUM_THREADS."""
    import numba  # here, not at the top: the CLI builds its flags without loading Numba
    return numba.config.NUMBA_NUM_THREADS


@dataclass
class TrainConfig:
    """The defaults are the spec's (Adam, batch 256, 10 epochs, 1000 validation images, He
    initialisation) with two changes, measured (README, Results): a one-cycle learning rate
    peaking at 6e-3 instead of a constant 1e-3, and random 1-pixel shifts over the first 40 %
    of the epochs. RECIPES["spec"] is the spec's literal setting."""

    epochs: int = setting(10, "passes over the training set", minimum=1, resumable=True)
    batch_size: int = setting(256, "images per step", minimum=1)
    lr: float = setting(6e-3, "learning rate: the peak of onecycle and cosine, the rate of constant (the "
                              "spec: 1e-3)", above=0.0)
    optimizer: str = setting("adam", "adam (the spec) or sgd", choices=("adam", "sgd"))
    momentum: float = setting(0.0, "SGD momentum, in [0, 1)", minimum=0.0, below=1.0)
    seed: int = setting(0, "seeds the weights, the split and the data order", minimum=0)
    backend: str = setting("fast", "fast (Numba kernels) or reference (per-pixel loops)",
                           choices=("fast", "reference"))
    dtype: str = setting("float32", "float32 (training) or float64 (checks)", choices=("float32", "float64"))
    conv: str = setting("auto", "the fast engine's rung for convolutions and pools: auto (direct at stride 1), "
                                "im2col (window view + GEMM) or direct; see the README's ladder", choices=ALGORITHMS)
    threads: int | None = setting(None, "Numba threads (default: all cores)", minimum=1, maximum=cores,
                                  resumable=True)
    blas_threads: int = setting(1, "BLAS threads (default 1: see the README's Threads section)", minimum=1,
                                maximum=cores, resumable=True)
    deterministic: bool = setting(False, "refuse settings whose results depend on thread scheduling "
                                         "(BLAS threads > 1)", resumable=True)
    dataset: str = setting("mnist", "the data set: mnist, fashion-mnist or kmnist (recorded with the run and its "
                                    "weights)", choices=tuple(DATASETS))
    data_dir: str | None = setting(None, DATA_DIR_HELP, resumable=True)
    out: str | None = setting(None, "run directory (default runs/<timestamp>)")
    eval_every: int = setting(100, "validate every N iterations", minimum=1)
    limit_train: int | None = setting(None, "train on the first N training images only", minimum=1)
    val_size: int = setting(1000, "validation images held out of the training set", minimum=0)
    normalize: bool = setting(False, "standardise inputs with MNIST's mean/std (travels with the weights)")
    lr_schedule: str = setting("onecycle", "onecycle (default): linear warm-up to --lr, then cosine to --min-lr; "
                                           "constant (the spec); or cosine decay from --lr to 0 over the run",
                               choices=LR_SCHEDULES)
    warmup_epochs: float = setting(1.0, "onecycle: epochs of linear warm-up from 0 to --lr", minimum=0.0)
    min_lr: float = setting(1e-5, "onecycle: the rate at the last step", minimum=0.0)
    shift: int = setting(1, "augment: move each training image by up to PIXELS (0-4) each way (default 1; the "
                            "spec: 0)", minimum=0, maximum=4, metavar="PIXELS")
    rotate: float = setting(0.0, "augment: rotate each training image by a random angle within +-DEGREES (0-30)",
                            minimum=0.0, maximum=30.0, metavar="DEGREES")
    scale: float = setting(0.0, "augment: scale each training image by a random factor within 1 +- FRACTION "
                                "(0-0.3)", minimum=0.0, maximum=0.3, metavar="FRACTION")
    clean_fraction: float = setting(0.6, "augment: the last FRACTION of the epochs (rounded to whole epochs) "
                                         "train on undistorted images", minimum=0.0, maximum=1.0,
                                    metavar="FRACTION")
    ema: float = setting(0.0, "average the weights, after each step average = DECAY * average + (1 - DECAY) * "
                              "weights (bias-corrected): the average is validated, tested and saved. 0: off",
                         minimum=0.0, below=1.0, metavar="DECAY")
    checkpoint_every: int | None = setting(None, "also checkpoint every N iterations", minimum=1, resumable=True)
    quiet: bool = setting(False, "print only the summary", resumable=True)

    def check(self):
        """Raises SettingsError naming the first setting that cannot be; returns self."""
        for f in fields(self):
            check_value(f, getattr(self, f.name))
        if self.optimizer != "sgd" and self.momentum:
            raise SettingsError(f"--momentum applies to --optimizer sgd only, got --momentum {self.momentum} "
                                f"with --optimizer {self.optimizer}")
        if self.lr_schedule == "onecycle" and not self.min_lr < self.lr:
            raise SettingsError(f"--min-lr must be below --lr with --lr-schedule onecycle, got --min-lr "
                                f"{self.min_lr} and --lr {self.lr}")
        if self.deterministic and self.blas_threads != 1:
            raise SettingsError(f"--deterministic needs --blas-threads 1, got {self.blas_threads}: a multi-threaded "
                                f"BLAS may split its sums differently from run to run")
        return self

    def distorts(self):
        """Whether the training images are distorted (--shift, --rotate or --scale)."""
        return bool(self.shift or self.rotate or self.scale)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values, source="settings"):
        """Settings from JSON/TOML values: an unknown key or a wrong type is a SettingsError naming it."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SettingsError(f"{source}: unknown setting {', '.join(unknown)}; settings are: "
                                f"{', '.join(known)}")
        for name, value in values.items():
            if not fits_type(known[name], value):
                raise SettingsError(f"{source}: {name} must be {type_name(known[name])}, got {value!r}")
        return cls(**{k: float(v) if kind_of(known[k]) is float and v is not None else v
                      for k, v in values.items()})


RECIPES = {  # `fastlenet train --recipe NAME`: settings a new run starts from; flags given override them
    "spec": {"lr_schedule": "constant", "lr": 1e-3, "shift": 0},  # the spec's literal setting
    "default": {},
    # more distortion, for more of the run, at a higher peak rate (measured: README, Results)
    "augmented": {"lr": 1e-2, "shift": 2, "rotate": 10.0, "scale": 0.1, "clean_fraction": 0.3},
}


def from_recipe(name, given=None):
    """The settings of recipe `name` with `given` (flag -> value) on top, checked."""
    if name not in RECIPES:
        raise SettingsError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r}")
    return TrainConfig(**{**RECIPES[name], **(given or {})}).check()


CONFIG_FILE_BYTES = 1 << 20  # a settings file is a few hundred bytes; a run's config.json, its validation indices


def from_file(path, given=None):
    """The settings of a new run from a file, with `given` (flag -> value) on top, checked:
    a run's config.json (its recorded "config", less the folder that run wrote to) or
    settings written by hand, at the top of a JSON or a TOML (.toml) file. An unknown
    setting or a value of the wrong type is a SettingsError naming it."""
    source = f"--config {path}"
    values = read_settings(Path(path), source)
    if isinstance(values.get("config"), dict):  # a run's config.json: its settings, not its folder
        values = {k: v for k, v in values["config"].items() if k != "out"}
    config, given = TrainConfig.from_dict(values, source), given or {}
    for f in fields(TrainConfig):  # the file's own values, named as the file's
        if f.name in values and f.name not in given:
            try:
                check_value(f, values[f.name])
            except SettingsError as e:
                raise SettingsError(f"{source}: {e}") from None
    for name, value in given.items():
        setattr(config, name, value)
    return config.check()


def read_settings(path, source):
    """A settings file's table, read no further than a settings file can be long."""
    if path.exists() and not path.is_file():  # a FIFO would block the read forever
        raise SettingsError(f"{source}: not a regular file (a folder, a FIFO or a device)")
    try:
        with open(path, "rb") as f:
            data = f.read(CONFIG_FILE_BYTES + 1)
    except OSError as e:
        raise SettingsError(f"{source}: cannot read it ({e.strerror})") from None
    if len(data) > CONFIG_FILE_BYTES:
        raise SettingsError(f"{source}: larger than a settings file can be ({CONFIG_FILE_BYTES} bytes)")
    toml = path.suffix == ".toml"
    try:
        values = tomllib.loads(data.decode()) if toml else json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise SettingsError(f"{source}: not valid {'TOML' if toml else 'JSON'} ({e})") from None
    if not isinstance(values, dict):
        raise SettingsError(f"{source}: expected a table of settings, got {type(values).__name__}")
    return values


def flag(name):
    return "--" + name.replace("_", "-")


def check_value(f, value):
    meta = f.metadata
    if value is None and f.default is None:
        return
    if not fits_type(f, value):
        raise SettingsError(f"{flag(f.name)} must be {type_name(f)}, got {value!r}")
    if meta["choices"] and value not in meta["choices"]:
        raise SettingsError(f"{flag(f.name)} must be one of {', '.join(meta['choices'])}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{flag(f.name)} must be a finite number, got {value}")
    if meta["choices"] or kind_of(f) in (str, bool):
        return
    maximum = meta["maximum"]() if callable(meta["maximum"]) else meta["maximum"]
    bounds = [(bound, text, holds) for bound, text, holds in ((meta["minimum"], ">=", operator.ge),
              (meta["above"], ">", operator.gt), (maximum, "<=", operator.le), (meta["below"], "<", operator.lt))
              if bound is not None]
    if not all(holds(value, bound) for bound, _, holds in bounds):
        allowed = " and ".join(f"{text} {bound}" for bound, text, _ in bounds)
        where = " (the cores here, or NUMBA_NUM_THREADS)" if meta["maximum"] is cores else ""
        raise SettingsError(f"{flag(f.name)} must be {allowed}{where}, got {value}")


def kind_of(f):
    """int, float, str or bool: the field's type without its None."""
    return next(t for t in typing.get_args(f.type) or (f.type,) if t is not type(None))


def fits_type(f, value):
    if value is None:
        return f.default is None
    t = kind_of(f)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, t) and (t is bool or not isinstance(value, bool))


def type_name(f):
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind_of(f)]


def add_flags(parser):
    """One flag per setting, from the fields. Defaults are left out (SUPPRESS), so the
    namespace holds exactly the flags given: resume tells a change from a default."""
    for f in fields(TrainConfig):
        meta, kind = f.metadata, kind_of(f)
        default = "" if f.default is None else f" (default {f.default})"
        if kind is bool:
            parser.add_argument(flag(f.name), action="store_true", default=argparse.SUPPRESS, help=meta["help"])
        else:
            parser.add_argument(flag(f.name), type=kind, choices=meta["choices"], default=argparse.SUPPRESS,
                                metavar=meta["metavar"], help=meta["help"] + ("" if "default" in meta["help"]
                                                                               else default))


def given(args):
    """The settings given as flags in an argparse namespace built by add_flags."""
    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def resumed(stored, changes, source):
    """The settings of a resumed run: `stored` (its config.json) with `changes` applied.
    Only resumable settings may change; extending --epochs also needs a schedule that
    does not depend on the run's length."""
    config = TrainConfig.from_dict(stored, source)
    meta = {f.name: f.metadata for f in fields(TrainConfig)}
    # against the settings read, so a setting newer than the run compares with its default
    refused = sorted(flag(k) for k, v in changes.items() if not meta[k]["resumable"] and v != getattr(config, k))
    if refused:
        allowed = ", ".join(flag(k) for k, m in meta.items() if m["resumable"])
        raise SettingsError(f"--resume continues a run with its own settings; it cannot change "
                            f"{', '.join(refused)} (a resume may change only {allowed})")
    if changes.get("epochs", config.epochs) != config.epochs:
        if config.lr_schedule != "constant":
            raise SettingsError(f"--epochs cannot change on resume with --lr-schedule {config.lr_schedule}: "
                                f"its rates depend on the run's length")
        if config.distorts() and config.clean_fraction:
            raise SettingsError(f"--epochs cannot change on resume with --clean-fraction {config.clean_fraction}: "
                                f"which epochs see distorted images depends on the run's length")
    for name, value in changes.items():
        setattr(config, name, value)
    return config.check()
