"""Sharing the cores with other processes: how many they use, and the Numba threads that leaves.

Numba's OpenMP workers spin while they wait for the next kernel, which is what makes a
quiet machine's small kernels fast; but a worker spinning on a core that another
process needs slows both, and two 2-thread trainings on two cores collapse (README,
Contention). A run whose thread count was not given watches the cores it may use:
every few steps it reads how much CPU time the machine spent outside this process
(/proc/stat, Linux) and runs on the cores left over. The thread count changes no
result (every kernel's partition is fixed by the shapes), so this costs no
reproducibility.
"""

import os
import time

import numba

LOOK_SECONDS = 0.25  # between two looks at the cores: /proc/stat counts in 10 ms ticks; a look costs ~20 us


def usable_cpus():
    """The CPUs this process may run on (its affinity: taskset, cgroups' cpusets)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def busy_seconds(cpus, stat="/proc/stat"):
    """CPU seconds that the CPUs `cpus` have spent busy (idle, I/O wait and steal
    excluded), from /proc/stat; None where there is none."""
    wanted, total = {f"cpu{c}" for c in cpus}, 0
    try:
        with open(stat) as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] in wanted:
                    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[1:8])
                    total += user + nice + system + irq + softirq
    except (OSError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def own_seconds():
    t = os.times()
    return t.user + t.system


class CoreWatch:
    """Cores of this process's CPUs that other processes used between one look and the next."""

    def __init__(self):
        self.cpus = usable_cpus()
        self.last = self.sample()

    def sample(self):
        return time.perf_counter(), busy_seconds(self.cpus), own_seconds()

    def due(self):
        """Whether LOOK_SECONDS have passed since the last look."""
        return time.perf_counter() - self.last[0] >= LOOK_SECONDS

    def others(self):
        """Average number of this process's CPUs other processes kept busy since the last
        call (None without /proc/stat)."""
        now = self.sample()
        (t0, busy0, own0), (t1, busy1, own1) = self.last, now
        self.last = now
        if busy0 is None or busy1 is None or t1 <= t0:
            return None
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))


def fair_threads(most, others, cores):
    """The Numba threads to run on: the cores the others leave (at least 1, at most `most`)."""
    return max(1, min(most, cores - round(others)))


class CoreSharing:
    """A run's Numba threads following the cores other processes leave: changed in
    `threads` (the run's record of them), in the metrics and said (`say`), up to the
    threads it started with."""

    def __init__(self, threads, say=None):
        self.threads, self.most, self.say, self.watch = threads, threads["numba"], say, CoreWatch()

    def due(self):
        return self.watch.due()

    def look(self, metrics, iteration):
        others = self.watch.others()
        if others is None:
            return
        want = fair_threads(self.most, others, len(self.watch.cpus))
        if want == self.threads["numba"]:
            return
        numba.set_num_threads(want)
        self.threads["numba"] = want
        metrics({"type": "threads", "iteration": iteration, "numba": want, "other_cores": round(others, 2)})
        if self.say:
            self.say(f"other processes keep {others:.1f} of {len(self.watch.cpus)} cores busy: "
                     f"{want} Numba thread{'s' * (want > 1)} from iteration {iteration}")
