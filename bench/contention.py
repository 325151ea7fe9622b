"""Training steps when something else wants the cores: the README's contention table.

    python bench/contention.py [--images 16000] [--rounds 2] [--data-dir DIR]

Each scenario runs `fastlenet train` (1 epoch on the first --images training images,
default settings otherwise) and reports the median of its steps (metrics.jsonl) next
to the same run alone, interleaved round by round:

    quiet           one training
    busy loop       one training beside a Python busy loop on one core
    two trainings   two trainings at once, each with its default threads
    sweep 2x2       `fastlenet sweep --workers 2 --threads 2` of two such points (seeds 0, 1)
    mpi 2 ranks     `mpiexec -n 2 ... fastlenet train` (skipped without mpiexec)

Each `fastlenet train` records in its config.json the threads it ran with and why.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY = "import time\nend = time.time() + 600\nwhile time.time() < end: pass\n"


def train_command(out, images, data_dir, *flags):
    return [sys.executable, "-m", "fastlenet", "train", "--epochs", "1", "--limit-train", str(images),
            "--eval-every", "100000", "--quiet", "--out", str(out), *(["--data-dir", data_dir] if data_dir else []),
            *flags]


def median_step_ms(run):
    steps = [json.loads(line)["time_s"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()
             if '"iter"' in line]
    threads = json.loads((Path(run) / "config.json").read_text())["threads"]
    return 1e3 * statistics.median(steps), threads


def run_all(commands):
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands]
    for p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode:
            raise SystemExit(f"failed: {' '.join(p.args)}\n{err}")


def scenario(name, tmp, images, data_dir):
    """-> [(median step ms, threads record)] of the trainings of one scenario."""
    runs = [tmp / f"{name}-{k}" for k in range(2)]
    for r in runs:
        shutil.rmtree(r, ignore_errors=True)
    busy = None
    if name == "quiet":
        run_all([train_command(runs[0], images, data_dir)])
        return [median_step_ms(runs[0])]
    if name == "busy loop":
        busy = subprocess.Popen([sys.executable, "-c", BUSY])
        try:
            time.sleep(0.5)
            run_all([train_command(runs[0], images, data_dir)])
        finally:
            busy.kill()
        return [median_step_ms(runs[0])]
    if name == "two trainings":
        run_all([train_command(r, images, data_dir) for r in runs])
    elif name == "sweep 2x2":
        grid = tmp / "grid.toml"
        grid.write_text(f"[base]\nepochs = 1\nlimit_train = {images}\neval_every = 100000\n[grid]\nseed = [0, 1]\n")
        shutil.rmtree(tmp / "sweep", ignore_errors=True)
        run_all([[sys.executable, "-m", "fastlenet", "sweep", str(grid), "--workers", "2", "--threads", "2",
                  "--out", str(tmp / "sweep"), *(["--data-dir", data_dir] if data_dir else [])]])
        return [median_step_ms(tmp / "sweep" / f"seed-{seed}") for seed in (0, 1)]
    elif name == "mpi 2 ranks":
        mpiexec = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
        if not mpiexec:
            return []
        run_all([[mpiexec, "-n", "2", *train_command(runs[0], images, data_dir)]])
        return [median_step_ms(runs[0])]
    return [median_step_ms(r) for r in runs]


SCENARIOS = ("quiet", "busy loop", "two trainings", "sweep 2x2", "mpi 2 ranks")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    results = {name: [] for name in SCENARIOS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name in SCENARIOS:
                results[name] += scenario(name, Path(tmp), args.images, args.data_dir)
    quiet = statistics.median(ms for ms, _ in results["quiet"])
    print(f"{'scenario':<14} {'median step':>12} {'x quiet':>8}  threads")
    for name, rows in results.items():
        if not rows:
            print(f"{name:<14} skipped")
            continue
        ms = statistics.median(m for m, _ in rows)
        print(f"{name:<14} {ms:9.2f} ms {ms / quiet:8.2f}  {rows[-1][1]}")


if __name__ == "__main__":
    main()
