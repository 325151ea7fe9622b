"""The kernels' public entry points: each checks its arrays (kind, dtype, shape,
contiguity, writability) and says in one line what does not fit, then calls the
compiled kernel. The fast layers call the kernels directly: they build the arrays
to the protocol (fastlenet.layout) and pay no checks on the hot path.

A spec lists the arguments: `name` for a scalar, `name:kind[DIMS]` for an array,
kind being float (float32 or float64, the same for every float argument), int32,
int (any integer) or bool; dimensions are named, space-separated, and equal names must have equal
sizes. `:c`
asks for a C-contiguous array, `:out` for a writable one.
"""

import numpy as np


class KernelArgumentError(ValueError):
    """Arrays that do not fit a kernel."""


def parse(spec):
    args = []
    for item in spec.split(","):
        name, *rest = item.strip().split(":")
        if not rest:
            args.append((name, None, None, set()))
            continue
        kind, dims = rest[0].rstrip("]").split("[")
        args.append((name, kind, dims.split(" ") if dims else [], set(rest[1:])))
    return args


def check_kind(where, name, a, kind, float_dtype):
    if kind == "float":
        if a.dtype not in (np.float32, np.float64):
            raise KernelArgumentError(f"{where}: {name} must be float32 or float64, got {a.dtype}")
        if float_dtype is not None and a.dtype != float_dtype:
            raise KernelArgumentError(f"{where}: {name} is {a.dtype}, the other float arrays {float_dtype}")
        return a.dtype
    fits = np.issubdtype(a.dtype, np.integer) if kind == "int" else a.dtype == kind
    if not fits:
        raise KernelArgumentError(f"{where}: {name} must be {kind}, got {a.dtype}")
    return float_dtype


def check(where, params, args):
    if len(args) != len(params):
        raise KernelArgumentError(f"{where}: takes {len(params)} arguments "
                                  f"({', '.join(p[0] for p in params)}), got {len(args)}")
    sizes, float_dtype = {}, None
    for (name, kind, dims, flags), a in zip(params, args):
        if kind is None:
            continue
        if not isinstance(a, np.ndarray):
            raise KernelArgumentError(f"{where}: {name} must be a NumPy array, got {type(a).__name__}")
        if a.ndim != len(dims):
            raise KernelArgumentError(f"{where}: {name} must be {len(dims)}-D ({', '.join(dims)}), "
                                      f"got shape {a.shape}")
        float_dtype = check_kind(where, name, a, kind, float_dtype)
        for dim, size in zip(dims, a.shape):
            if sizes.setdefault(dim, (size, name))[0] != size:
                raise KernelArgumentError(f"{where}: {name} has {dim} = {size}, {sizes[dim][1]} has "
                                          f"{dim} = {sizes[dim][0]}")
        if "c" in flags and not a.flags.c_contiguous:
            raise KernelArgumentError(f"{where}: {name} must be C-contiguous (np.ascontiguousarray)")
        if "out" in flags and not a.flags.writeable:
            raise KernelArgumentError(f"{where}: {name} is written to and must be writable")


def entry(kernel, spec):
    """The checked entry point of `kernel` (a Numba dispatcher, or a plain function
    under NUMBA_DISABLE_JIT), which stays reachable as `.kernel`."""
    params = parse(spec)

    def checked(*args):
        check(kernel.__name__, params, args)
        return kernel(*args)

    checked.__name__, checked.__qualname__ = kernel.__name__, kernel.__name__
    checked.__doc__ = f"{kernel.__name__}({spec}), checked; then:\n\n{kernel.__doc__}"
    checked.kernel, checked.spec = kernel, spec
    return checked
