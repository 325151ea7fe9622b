"""Drop-in speed: the README's loop in a fresh process without any set-up call,
beside the same step in a process set up as `fastlenet train` sets it up. One
group per batch size, `impl` = readme-loop | trainer-step; each round of one
is preceded (untimed) by a round of the other and a pause in which that one's
thread pool falls idle, so the two share the machine's noise but not its cores.
A round is ~30 ms of steps, so that waking a worker counts for little.

    pytest bench/test_bench_dropin.py --benchmark-only --benchmark-group-by=group
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("dropin_worker.py")
MODES = {"readme-loop": "readme", "trainer-step": "trainer"}
STEPS_PER_ROUND = {1: 128, 32: 32, 256: 8}
IDLE_S = 0.05  # Numba's OpenMP workers spin for a while after a kernel before they sleep


class Worker:
    def __init__(self, mode):
        self.process = subprocess.Popen([sys.executable, str(WORKER), mode], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self, batch, steps):
        self.process.stdin.write(f"{batch} {steps}\n")
        if self.process.stdout.readline() != "ok\n":
            raise RuntimeError(f"the drop-in worker stopped (exit status {self.process.poll()})")

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def workers():
    started = {impl: Worker(mode) for impl, mode in MODES.items()}
    yield started
    for worker in started.values():
        worker.close()


@pytest.mark.parametrize("batch", [1, 32, 256])
@pytest.mark.parametrize("impl", list(MODES))
def test_dropin_step(benchmark, workers, impl, batch):
    benchmark.group = f"dropin-step-{batch}"
    steps = STEPS_PER_ROUND[batch]
    other = workers["trainer-step" if impl == "readme-loop" else "readme-loop"]
    mine = workers[impl]
    for worker in (mine, other):
        worker.run(batch, steps)  # builds the model; Numba loads its cache
    benchmark.extra_info["steps_per_round"] = steps

    def other_round_then_idle():
        other.run(batch, steps)
        time.sleep(IDLE_S)
    benchmark.pedantic(mine.run, args=(batch, steps), setup=other_round_then_idle, rounds=20, iterations=1)
