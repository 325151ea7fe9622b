"""The Numba options the kernels share, and the on-disk cache they are kept in, set in one place.

Numba keys a cached kernel on its signature, its own bytecode, the CPU (name and
features) and its own file's contents. That misses two things a kernel here
depends on: the helpers it inlines from other files (conv.py's vectors come from
simd.py) and the vector width simd.py chose (the host's, or FASTLENET_VECTOR_BYTES).
So every kernel's cache is stamped with a digest of all the kernel files and the
width, and kept in files of its own per width: an edit to any kernel file
recompiles them all, and kernels of two widths sit side by side.
"""

import hashlib
from pathlib import Path

from numba import njit
from numba.core.caching import CompileResultCacheImpl, FunctionCache

from .simd import BYTES


def sources_digest(folder=Path(__file__).parent, width=BYTES):
    """SHA-256 of every kernel file in `folder` (name and contents) and the vector width."""
    h = hashlib.sha256(f"vector bytes {width};".encode())
    for path in sorted(folder.glob("*.py")):
        h.update(f"{path.name}:{path.stat().st_size};".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


DIGEST = sources_digest()


class _Stamped:
    """A Numba cache locator whose stamp is also DIGEST, and whose files name the width."""

    def get_source_stamp(self):
        return super().get_source_stamp(), DIGEST

    def get_disambiguator(self):
        return f"{super().get_disambiguator()}-v{BYTES}"


class _KernelCacheImpl(CompileResultCacheImpl):
    _locator_classes = [type(f"Stamped{c.__name__}", (_Stamped, c), {})
                        for c in CompileResultCacheImpl._locator_classes]


class KernelCache(FunctionCache):
    _impl_class = _KernelCacheImpl


def kernel(parallel=False, fastmath=False):
    """Decorator for a kernel called from the layers: compiled on first call and cached
    on disk (so later processes load it; KernelCache), with prange loops run on Numba's
    pool when `parallel`. `fastmath` takes LLVM's flags (a set, e.g. {"reassoc"}) for the
    few reductions that may be reordered."""
    def decorate(function):
        dispatcher = njit(parallel=parallel, fastmath=fastmath)(function)
        # what njit(cache=True) does (Dispatcher.enable_caching), with the stamped cache
        dispatcher._cache = KernelCache(function)
        return dispatcher
    return decorate
