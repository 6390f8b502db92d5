"""Pinning an API worker to one CPU (serving/worker_cpu.py): which CPU, and every thread of the process."""

import os
import subprocess
import sys

import pytest

from serving.worker_cpu import worker_cpu


def test_workers_take_the_allowed_cpus_in_turn():
    assert [worker_cpu(i, {5, 3}) for i in (1, 2, 3, 4)] == [3, 5, 3, 5]
    assert worker_cpu(1, {7}) == 7


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread affinities are read from /proc")
def test_pinning_covers_threads_started_before_and_after():
    script = """
import os, threading, time
from pathlib import Path
from serving.worker_cpu import pin_worker
stop = threading.Event()
before = threading.Thread(target=stop.wait); before.start()
cpu = pin_worker(2)
after = threading.Thread(target=stop.wait); after.start()
masks = {int(t.name): os.sched_getaffinity(int(t.name)) for t in Path("/proc/self/task").iterdir()}
stop.set(); before.join(); after.join()
print(cpu, len(masks), sorted({tuple(sorted(m)) for m in masks.values()}))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    out = run.stdout.split(" ", 2)
    expected = worker_cpu(2, os.sched_getaffinity(0))
    assert int(out[0]) == expected
    assert int(out[1]) == 3  # the main thread and both others
    assert out[2].strip() == str([(expected,)])
