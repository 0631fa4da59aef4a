"""mert.utils.runtime: the allocator setting (page faults per step) and the machine's measured compute."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mert.utils.runtime import CPUCompute, cpu_compute, usable_cores

FAULTS = """
import resource, sys, torch
from mert.utils.runtime import tune_allocator
print(tune_allocator(), file=sys.stderr)
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
def steps(n):
    for _ in range(n):
        a = torch.ones(16 * 2**20)  # 64 MiB, freed at once: what a training step does with its temporaries
        del a
steps(30)  # the heap grows to hold a few such blocks, then stops
r0, m0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, rss_mb()
steps(30)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 30, rss_mb() - m0)
"""


def _faults(tune: bool) -> tuple[float, float]:
    """(page faults per 64-MiB allocation, RSS growth in MB over 30 of them), in a fresh process."""
    env = {**os.environ, "MERT_TUNE_MALLOC": "1" if tune else "0"}
    r = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    faults, growth = map(float, r.stdout.split())
    return faults, growth


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_allocator_reuses_large_blocks_instead_of_faulting_them_in():
    (untuned, _), (tuned, growth) = _faults(False), _faults(True)
    assert untuned > 10_000  # glibc maps and unmaps every 64-MiB block: a fault per 4-KiB page, every time
    assert tuned < 0.01 * untuned  # kept in the heap and reused
    assert growth < 1.0  # and the heap does not keep growing


def test_parallel_jobs_follows_the_measured_throughput():
    smt = CPUCompute(cores=2, gflops_1=70.0, gflops_threads=63.0, gflops_procs=72.0)  # two "cores", one FPU
    assert smt.parallel_jobs() == 1 and smt.effective_cores == pytest.approx(72 / 70)
    real = CPUCompute(cores=16, gflops_1=70.0, gflops_threads=800.0, gflops_procs=1050.0)
    assert real.parallel_jobs() == 15 and real.parallel_jobs(cap=4) == 4
    two = CPUCompute(cores=2, gflops_1=70.0, gflops_threads=130.0, gflops_procs=138.0)
    assert two.parallel_jobs() == 2 and "2 cores" in two.describe()


def test_cpu_compute_measures_this_machine_or_reads_the_override(monkeypatch):
    monkeypatch.delenv("MERT_CPU_COMPUTE", raising=False)  # tests/conftest.py sets a fixed one
    cpu_compute.cache_clear()
    m = cpu_compute(seconds=0.05)
    assert m.cores == usable_cores() and min(m.gflops_1, m.gflops_threads, m.gflops_procs) > 0
    assert 1 <= m.parallel_jobs() <= m.cores
    cpu_compute.cache_clear()
    fixed = {"cores": 4, "gflops_1": 10.0, "gflops_threads": 40.0, "gflops_procs": 40.0}
    monkeypatch.setenv("MERT_CPU_COMPUTE", json.dumps(fixed))
    assert cpu_compute() == CPUCompute(**fixed)
    cpu_compute.cache_clear()


def test_intra_op_threads_is_shared_by_concurrent_blocks_and_restored_by_the_last():
    """The old per-block set/restore let the first probe to finish restore the count under a running one."""
    import threading

    import torch

    from mert.utils.runtime import intra_op_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
        seen = {}

        def a():
            with intra_op_threads(1):
                a_in.set()
                b_in.wait(10)
            a_out.set()

        def b():
            a_in.wait(10)
            with intra_op_threads(1):
                b_in.set()
                a_out.wait(10)  # a has left: b still computes with 1 thread
                seen["b after a left"] = torch.get_num_threads()

        ts = [threading.Thread(target=f) for f in (a, b)]
        [t.start() for t in ts]
        [t.join(20) for t in ts]
        assert seen == {"b after a left": 1}
        assert torch.get_num_threads() == 2  # the last one out restored the count from before
        with intra_op_threads(0):  # 0: the count is left alone
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
