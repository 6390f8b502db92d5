"""One API worker process on one CPU (`serving.pin_workers`).

A worker runs Python under one GIL, so it uses about one core however many threads it has; left to float, its
event loop, engine threads and gRPC threads hand work to each other across cores, and each hand-off lands on a
core whose caches hold another thread's data. Pinning every thread of the worker to one CPU keeps them on one
core's caches (measured in README.md, "One worker on one CPU"). Only where the API's cores are its own: a host
that runs little else, or a pod with exclusive cores (Kubernetes' static CPU manager policy, a Guaranteed pod).
"""

import logging
import os
from pathlib import Path

log = logging.getLogger("recsys.api")


def worker_cpu(worker_index: int, allowed: set[int]) -> int:
    """The CPU of worker `worker_index` (1-based, as BentoML numbers them): the i-th of the allowed CPUs, cycling."""
    cpus = sorted(allowed)
    return cpus[(max(worker_index, 1) - 1) % len(cpus)]


def pin_worker(worker_index: int | None) -> int | None:
    """Pin every thread of this process (and so every thread it starts later) to this worker's CPU; returns the
    CPU, or None where the platform cannot set affinities (a warning says so)."""
    if not hasattr(os, "sched_setaffinity"):
        log.warning("serving.pin_workers is set, but this platform cannot pin threads to a CPU: not pinned")
        return None
    cpu = worker_cpu(worker_index or 1, os.sched_getaffinity(0))
    for task in Path("/proc/self/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), {cpu})
        except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            continue
    log.info("API worker %s pinned to CPU %d", worker_index or 1, cpu)
    return cpu
