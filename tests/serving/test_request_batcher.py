"""serving.request_batcher: requests that queue while the threads are busy go together, in order, each with its own
answer or error; a request that finds a thread free goes at once."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.request_batcher import RequestBatcher


def _run(coroutine):
    return asyncio.run(coroutine)


def test_requests_that_queue_behind_a_busy_thread_go_in_one_batch():
    release, started, seen = threading.Event(), threading.Event(), []

    def run(batch: list[int]) -> list[int | BaseException]:
        seen.append(batch)
        if batch == [0]:
            started.set()
            release.wait(5)
        return [ValueError(f"item {i}") if i == 3 else i * 10 for i in batch]

    async def main():
        with ThreadPoolExecutor(max_workers=1) as pool:
            batcher = RequestBatcher(run, pool, threads=1, max_batch=4)
            first = asyncio.ensure_future(batcher.submit(0))
            await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
            rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 7)]
            await asyncio.sleep(0)
            release.set()
            answers = await asyncio.gather(first, *rest, return_exceptions=True)
            return batcher, answers

    batcher, answers = _run(main())
    assert seen == [[0], [1, 2, 3, 4], [5, 6]]  # alone at once, then the queue in batches of at most 4, in order
    assert answers[:3] == [0, 10, 20] and answers[4:] == [40, 50, 60]
    assert isinstance(answers[3], ValueError) and str(answers[3]) == "item 3"  # its own error, the others answered
    assert (batcher.batches, batcher.requests) == (3, 7)


def test_a_failed_batch_fails_each_of_its_requests_and_the_next_batch_runs():
    calls = []

    def run(batch: list[int]) -> list[int]:
        calls.append(batch)
        if len(calls) == 1:
            raise RuntimeError("engine down")
        return batch[:-1]  # one answer short (each of these goes alone: the thread is free)

    async def main():
        with ThreadPoolExecutor(max_workers=1) as pool:
            batcher = RequestBatcher(run, pool, threads=1, max_batch=8)
            first = await asyncio.gather(batcher.submit(1), return_exceptions=True)
            second = await asyncio.gather(batcher.submit(2), batcher.submit(3), return_exceptions=True)
            return first, second

    first, second = _run(main())
    assert isinstance(first[0], RuntimeError) and "engine down" in str(first[0])
    assert all(isinstance(e, RuntimeError) and "answered 0 of 1" in str(e) for e in second)


def test_a_request_whose_caller_left_is_not_run():
    release, started, seen = threading.Event(), threading.Event(), []

    def run(batch):
        seen.append(batch)
        started.set()
        release.wait(5)
        return batch

    async def main():
        with ThreadPoolExecutor(max_workers=1) as pool:
            batcher = RequestBatcher(run, pool, threads=1, max_batch=8)
            first = asyncio.ensure_future(batcher.submit("a"))
            await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
            gone, kept = asyncio.ensure_future(batcher.submit("gone")), asyncio.ensure_future(batcher.submit("b"))
            await asyncio.sleep(0)
            gone.cancel()
            release.set()
            return await first, await kept

    assert _run(main()) == ("a", "b")
    assert seen == [["a"], ["b"]]


@pytest.mark.parametrize(("threads", "max_batch"), [(0, 4), (2, 0)])
def test_sizes_below_one_are_refused(threads, max_batch):
    with pytest.raises(ValueError, match="at least 1"):
        RequestBatcher(lambda batch: batch, ThreadPoolExecutor(1), threads=threads, max_batch=max_batch)
