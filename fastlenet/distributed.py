"""Data-parallel training over MPI (mpi4py), or a single process.

Launch: mpiexec -n K python -m mpi4py -m fastlenet train ...
(`python -m mpi4py` turns an exception on one rank into an abort of the whole
job instead of a hang). Every rank holds the whole model, takes its slice of
each global batch, and the gradients are summed with one allreduce per step
over a single flat buffer; every rank then applies the same optimizer step.
"""

import hashlib
import os
import sys
import time

import numpy as np

from .errors import FastLeNetError

MPI_LAUNCH_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")  # MPICH/Hydra, Open MPI, PMIx (Slurm)


class SingleProcess:
    rank, size, local_size = 0, 1, 1

    def allreduce(self, buffer):
        return buffer

    def bcast(self, obj):
        return obj

    def abort(self, code):
        sys.exit(code)


class MPIProcesses:
    """COMM_WORLD of mpi4py."""

    def __init__(self):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_size = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()  # ranks on this machine

    def allreduce(self, buffer):
        """Sums buffer over the ranks, in place; every rank gets the same bits."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        return buffer

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


def launched_by_mpi():
    return "mpi4py" in sys.modules or any(v in os.environ for v in MPI_LAUNCH_VARS)


def world():
    """MPIProcesses when this process runs under an MPI launcher with mpi4py installed,
    else SingleProcess."""
    if not launched_by_mpi():
        return SingleProcess()
    try:
        comm = MPIProcesses()
    except ImportError:
        return SingleProcess()
    return comm if comm.size > 1 else SingleProcess()


class GradientExchange:
    """Sums weighted gradients and a few scalars over the ranks: one allreduce of one flat buffer."""

    def __init__(self, comm, params, extras=3):
        self.comm, self.params = comm, params
        sizes = [p.grad.size for p in params]
        self.offsets = np.cumsum([0] + sizes)
        self.buffer = np.empty(self.offsets[-1] + extras, params[0].grad.dtype)
        self.seconds, self.calls = 0.0, 0  # time spent in the allreduce itself

    def __call__(self, weight, *scalars):
        """grads <- sum over ranks of weight * grads; returns the summed scalars."""
        n = self.offsets[-1]
        for p, lo, hi in zip(self.params, self.offsets[:-1], self.offsets[1:]):
            np.multiply(p.grad.ravel(), weight, out=self.buffer[lo:hi])
        self.buffer[n:] = scalars
        start = time.perf_counter()
        self.comm.allreduce(self.buffer)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        for p, lo, hi in zip(self.params, self.offsets[:-1], self.offsets[1:]):
            p.grad[...] = self.buffer[lo:hi].reshape(p.grad.shape)
        return [float(v) for v in self.buffer[n:]]


def check_replicas(comm, params):
    """Every rank must hold the same weights, bit for bit; raises on any that does not."""
    if comm.size == 1:
        return
    digest = hashlib.sha256(b"".join(p.value.tobytes() for p in params)).hexdigest()
    if comm.bcast(digest) != digest:
        raise FastLeNetError(f"rank {comm.rank}: weights differ from rank 0's after training")
