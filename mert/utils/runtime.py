"""The process's compute environment: the C allocator's settings and how much CPU compute the machine really has.

Two things a training or probing process on a CPU needs to know, neither of which changes any result:

- :func:`tune_allocator`: glibc's ``malloc`` hands every block above ``M_MMAP_THRESHOLD`` (dynamic, 128 KiB to
  32 MiB) to its own ``mmap`` and returns it to the kernel on ``free``; a training step that allocates the same
  20-MB logits, gradients and conv activations every step then pays a page fault for every 4-KiB page of them,
  every step. On the 2-vCPU machines this project is measured on, that was 30-40 thousand faults and 130-160 ms
  of kernel time per ``mert-small`` step. Raising the mmap and trim thresholds keeps freed blocks in the heap for
  reuse: after the first steps no page faults at all, 486 instead of 614 ms of CPU per step (1 thread), for a heap
  that holds a few more copies of the largest temporaries (``mert-small``: peak RSS 1231 MB instead of 1151; the
  heap stops growing after a few steps, tested). This is the in-process form of the PyTorch CPU performance guide's
  advice to run under jemalloc/tcmalloc ("reduce page faults"); the arithmetic is untouched.
- :func:`cpu_compute`: cores in this process's affinity mask, and dense float32 matmul throughput measured with 1
  thread, with all of them, and with one single-threaded process per core at once. Virtual machines often have
  cores that share one FPU (SMT siblings, or a noisy host): two "cores" that multiply no faster than one. Process
  parallelism for probes and labelling is sized from this measurement, not from ``os.cpu_count()``.

And one that does: :func:`intra_op_threads`. Float sums split over a different number of threads round differently,
and a probe's verdict can move with them (the demo's instrument probe of one network: 0.843 from features extracted
on 1 thread, 0.800 from the same network's features extracted on 2); it fixes the count for a block, safely when
several probes run in threads of one process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import multiprocessing as mp
import os
import threading
import time
from dataclasses import asdict, dataclass
from functools import lru_cache

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""glibc ``mallopt`` parameter numbers (``malloc.h``)."""
MMAP_THRESHOLD = 1 << 30
"""Blocks below 1 GiB come from the heap and are reused after ``free`` (glibc's default: 128 KiB, adapting up to
32 MiB)."""
TRIM_THRESHOLD = 2 << 30
"""Free memory at the top of the heap kept for reuse before it is returned to the kernel (default 128 KiB)."""

MAX_PROBE_PROCS = 16
"""At most this many processes measure the process-parallel throughput (each one imports torch)."""

_TUNED: bool | None = None
_THREADS_LOCK = threading.Lock()
_THREADS = {"users": 0, "before": 0, "n": 0}


@contextlib.contextmanager
def intra_op_threads(n: int):
    """Run the block with ``n`` torch intra-op threads (``n <= 0``: leave the count alone).

    ``torch.set_num_threads`` is process-wide, so probes running in threads of one process (the pipeline's probe
    waves) must not each set and restore it: one would restore the count while another is still computing, and
    that one's features (float sums split over another number of threads) would change with the timing. Here the
    first block to enter sets the count, later ones share it, and the last to leave restores the count from
    before. A block asking for another count while one is active gets the active one (logged).
    """
    if n <= 0:
        yield
        return
    import torch

    with _THREADS_LOCK:
        if _THREADS["users"] == 0:
            _THREADS.update(before=torch.get_num_threads(), n=n)
            torch.set_num_threads(n)
        elif _THREADS["n"] != n:
            log.warning("intra_op_threads(%d): %d thread(s) already set by a concurrent block; keeping %d", n,
                        _THREADS["n"], _THREADS["n"])  # fmt: skip
        _THREADS["users"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS["users"] -= 1
            if _THREADS["users"] == 0:
                torch.set_num_threads(_THREADS["before"])


def tune_allocator() -> bool:
    """Make glibc keep freed large blocks for reuse (see the module docstring); idempotent, process-wide.

    ``MERT_TUNE_MALLOC=0`` turns it off. Call it early in a process that trains or probes; blocks freed before
    the call are unaffected. It changes neither results nor peak memory in use, only what the heap keeps.

    Returns:
        True if glibc accepted both settings; False on another C library (musl, macOS) or when turned off.
    """
    global _TUNED
    if _TUNED is not None:
        return _TUNED
    _TUNED = False
    if os.environ.get("MERT_TUNE_MALLOC", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no glibc mallopt here: the allocator keeps its defaults")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD - 1))
    _TUNED = ok
    return ok


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, as ``taskset``/cgroups set it), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class CPUCompute:
    """Measured float32 matmul throughput of this machine (see :func:`cpu_compute`).

    Attributes:
        cores: usable cores (:func:`usable_cores`).
        gflops_1: GFLOP/s of one thread.
        gflops_threads: GFLOP/s of one process with ``cores`` threads.
        gflops_procs: GFLOP/s summed over ``cores`` single-threaded processes running at once.
    """

    cores: int
    gflops_1: float
    gflops_threads: float
    gflops_procs: float

    @property
    def effective_cores(self) -> float:
        """How many single threads' worth of matmul the machine gives when every core works (>= 1)."""
        return max(1.0, max(self.gflops_threads, self.gflops_procs) / max(self.gflops_1, 1e-9))

    def parallel_jobs(self, cap: int | None = None, gain: float = 1.25) -> int:
        """Single-threaded jobs worth running at once: 1 unless ``cores`` processes together give at least
        ``gain`` x one thread's throughput, else the rounded number of effective cores (at most ``cores``, ``cap``).
        """
        n = 1 if self.gflops_procs < gain * self.gflops_1 else round(self.gflops_procs / self.gflops_1)
        n = max(1, min(n, self.cores))
        return min(n, cap) if cap else n

    def describe(self) -> str:
        return (
            f"{self.cores} cores; float32 matmul {self.gflops_1:.0f} GFLOP/s on 1 thread, "
            f"{self.gflops_threads:.0f} on {self.cores} threads, {self.gflops_procs:.0f} in {self.cores} processes "
            f"(~{self.effective_cores:.1f} cores' worth)"
        )


def _sgemm_gflops(threads: int, seconds: float) -> float:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        n = 512 if threads == 1 else 1024  # big enough for the threads to share the work
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        for _ in range(3):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while (dt := time.perf_counter() - t0) < seconds:
            a @ b
            reps += 1
        return 2.0 * n**3 * reps / dt / 1e9
    finally:
        torch.set_num_threads(before)


def _proc_worker(seconds: float, barrier, q) -> None:
    import torch

    torch.set_num_threads(1)
    _sgemm_gflops(1, 0.02)  # warm up outside the timed window
    barrier.wait(timeout=120)  # every process has imported torch: they measure at the same time
    q.put(_sgemm_gflops(1, seconds))


def _procs_gflops(n: int, seconds: float) -> float:
    """Summed GFLOP/s of ``n`` single-threaded processes measuring at once (spawned: no forked OpenMP state)."""
    ctx = mp.get_context("spawn")
    barrier, q = ctx.Barrier(n), ctx.Queue()
    ps = [ctx.Process(target=_proc_worker, args=(seconds, barrier, q), daemon=True) for _ in range(n)]
    for p in ps:
        p.start()
    try:
        return sum(q.get(timeout=180) for _ in ps)
    finally:
        for p in ps:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


@lru_cache(maxsize=1)
def cpu_compute(seconds: float = 0.25) -> CPUCompute:
    """Measure this machine's matmul throughput now (about ``3 * seconds`` plus spawning one process per core that
    imports torch: 2-5 s; cached per process). It measures what is available at the moment: other work on the
    machine lowers it, which is what sizing parallel jobs needs.

    ``MERT_CPU_COMPUTE`` (a JSON object of :class:`CPUCompute`'s fields) skips the measurement, e.g. for tests.
    """
    env = os.environ.get("MERT_CPU_COMPUTE")
    if env:
        return CPUCompute(**json.loads(env))
    cores = usable_cores()
    one = _sgemm_gflops(1, seconds)
    threads = _sgemm_gflops(cores, seconds) if cores > 1 else one
    procs = _procs_gflops(min(cores, MAX_PROBE_PROCS), seconds) if cores > 1 else one
    out = CPUCompute(cores, one, threads, procs)
    log.debug("cpu compute: %s", json.dumps(asdict(out)))
    return out
