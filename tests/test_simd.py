"""Vectors as wide as the CPU's: the width chosen, forced, correct at every width
(compiled and as Python), and the on-disk cache kept apart per width, per CPU and per
edit of any kernel file."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from fastlenet.kernels import jit, simd

TESTS = Path(__file__).parent
JIT = not numba.config.DISABLE_JIT


@pytest.mark.parametrize("features, width", [
    ("+avx,+avx2,+avx512f,+fma", 64),
    ("+avx,+avx2,-avx512f,+fma", 32),   # AVX2 EPYC; also AVX-512 turned off with NUMBA_CPU_FEATURES
    ("+avx,-avx2,+sse4.2", 32),
    ("+sse4.2,+sse2,-avx", 16),
    ("+neon,+fp-armv8", 16),
    ("", 16),
])
def test_the_width_is_the_cpus_register(features, width):
    assert simd.host_vector_bytes(features) == width


def test_the_host_width_is_what_numba_compiles_for():
    flags = os.environ.get("FASTLENET_VECTOR_BYTES")
    assert simd.BYTES == (int(flags) if flags else simd.host_vector_bytes())
    assert simd.host_vector_bytes() in simd.WIDTHS


@pytest.mark.parametrize("value", ["48", "avx512", "-32", "0"])
def test_a_forced_width_must_be_a_register_size(monkeypatch, value):
    monkeypatch.setenv("FASTLENET_VECTOR_BYTES", value)
    with pytest.raises(ValueError, match=f"FASTLENET_VECTOR_BYTES must be one of 16, 32, 64 \\(bytes per "
                                         f"vector\\), got '{value}'"):
        simd.vector_bytes()
    monkeypatch.setenv("FASTLENET_VECTOR_BYTES", "16")
    assert simd.vector_bytes() == 16


def test_a_forced_width_that_cannot_be_is_one_line_from_the_cli(tmp_path):
    env = dict(os.environ, FASTLENET_VECTOR_BYTES="48")
    result = subprocess.run([sys.executable, "-m", "fastlenet", "train", "--epochs", "1", "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1 and not (tmp_path / "r").exists()
    assert result.stderr.strip().splitlines() == ["fastlenet: error: FASTLENET_VECTOR_BYTES must be one of 16, 32, 64 "
                                                  "(bytes per vector), got '48'"]


# The convolution (and Linear's 1x1 path) against the reference, in float32 and float64,
# on both row layouts: rows shorter and longer than a block of every width
WIDTH_CASES = "conv_fast_matches_reference or conv_on_a_batch_innermost or linear_gradients"


@pytest.mark.skipif(not JIT, reason="compiled kernels: as Python, test_every_width_as_python")
@pytest.mark.parametrize("width", simd.WIDTHS)
def test_every_width_compiled(width):
    """test_layers' convolution cases in a process whose kernels are compiled at `width`
    (a width wider than the CPU's registers runs too: LLVM splits the vectors). This
    process's own width is the one every other test runs at."""
    if width == simd.BYTES:
        pytest.skip(f"{width} bytes is this process's width: the whole suite checks it")
    env = dict(os.environ, FASTLENET_VECTOR_BYTES=str(width))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                             str(TESTS / "test_layers.py"), "-k", WIDTH_CASES], capture_output=True, text=True,
                            env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


@pytest.mark.skipif(JIT, reason="the kernels as Python (NUMBA_DISABLE_JIT): compiled, test_every_width_compiled")
@pytest.mark.parametrize("width", simd.WIDTHS)
def test_every_width_as_python(width, monkeypatch):
    """As Python, lanes() reads BYTES when called: every width in this process."""
    import test_layers
    from fastlenet import fast
    monkeypatch.setattr(simd, "BYTES", width)
    assert simd.lanes(np.zeros(1, np.float32)) == width // 4
    for rows_from, layout in ((10**9, "planes"), (0, "interleaved")):
        monkeypatch.setattr(fast.RowLayout, "ROWS_FROM", rows_from)
        for case in test_layers.CONV_CASES[:5]:
            for dtype in (np.float32, np.float64):
                test_layers.test_conv_fast_matches_reference(case, dtype, layout)
    for direct_weight_grad in (0, 1 << 40):
        test_layers.test_linear_gradients_on_a_batch_innermost_input(direct_weight_grad)


PROBE = """
import numpy as np
from fastlenet.compiling import kernel_cache_stats
from fastlenet.kernels import conv, simd
x = np.arange(120, dtype=np.float32).reshape(1, 3, 40)
out = np.zeros((2, 2, 40), np.float32)
conv.conv_forward(x, np.ones((2, 1, 2, 2), np.float32), np.zeros(2, np.float32), 1, 0, 1, out)
stats = kernel_cache_stats()
print(simd.BYTES, stats["cache_hits"], stats["cache_misses"], float(out[1, 1, 3]))
"""


def probe(cache, **env):
    """(width, cache hits, cache misses, a result) of a fresh process compiling one kernel."""
    env = {k: v for k, v in os.environ.items() if k not in ("FASTLENET_VECTOR_BYTES", "NUMBA_CPU_FEATURES")} | env
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                            env=env | {"NUMBA_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    width, hits, misses, value = result.stdout.split()
    return int(width), int(hits), int(misses), float(value)


@pytest.mark.skipif(not JIT, reason="the on-disk cache of compiled kernels")
def test_the_cache_is_kept_apart_per_width_and_per_cpu(tmp_path):
    cache = tmp_path / "numba"
    first = probe(cache, FASTLENET_VECTOR_BYTES="32")
    assert first[:3] == (32, 0, 1)
    assert probe(cache, FASTLENET_VECTOR_BYTES="64")[:3] == (64, 0, 1)  # not handed the 32-byte kernel
    assert probe(cache, FASTLENET_VECTOR_BYTES="32")[:3] == (32, 1, 0)  # and each width keeps its own
    assert probe(cache, FASTLENET_VECTOR_BYTES="64")[:3] == (64, 1, 0)
    names = sorted(p.name for p in cache.rglob("conv.conv_forward-*.nbi"))
    assert len(names) == 2 and "-v32." in names[0] and "-v64." in names[1]
    # another CPU: the host's features without AVX-512 (Numba keys its cache on the CPU's features)
    from numba.core.registry import cpu_target
    features = cpu_target.target_context.codegen().magic_tuple()[2]
    if "+avx512f" in features:
        no512 = ",".join("-" + f[1:] if f.startswith("+avx512") else f for f in features.split(","))
        width, hits, misses, _ = probe(cache, NUMBA_CPU_FEATURES=no512, FASTLENET_VECTOR_BYTES="32")
        assert (width, hits, misses) == (32, 0, 1)
        assert probe(cache, NUMBA_CPU_FEATURES=no512)[:3] == (32, 1, 0)  # the width follows the CPU
    assert {probe(cache, FASTLENET_VECTOR_BYTES=str(w))[3] for w in simd.WIDTHS} == {first[3]}


def test_an_edit_to_any_kernel_file_is_a_new_stamp(tmp_path):
    """Numba checks a kernel's own file only; the stamp covers the helpers it inlines
    from other files (conv.py's vectors, simd.py) and the width."""
    folder = tmp_path / "kernels"
    shutil.copytree(Path(jit.__file__).parent, folder, ignore=shutil.ignore_patterns("__pycache__"))
    stamp = jit.sources_digest(folder, 32)
    assert stamp == jit.sources_digest(folder, 32) and stamp != jit.sources_digest(folder, 64)
    (folder / "simd.py").write_text((folder / "simd.py").read_text() + "\n# an edit\n")
    assert jit.sources_digest(folder, 32) != stamp
    assert jit.DIGEST == jit.sources_digest(Path(jit.__file__).parent, simd.BYTES)
