"""Requests of the event loop answered in batches by a blocking function on a few threads.

A request that finds a thread free goes at once, as a batch of one (no timer, no added wait). Requests that arrive
while every thread is busy queue, and the next free thread takes them together (at most `max_batch`). The work
a batch shares — the hand-off between the event loop and a thread, one feature read, Triton calls in flight together,
one commit of the request log (`serving.engine.Engine.recommend_many`) — is then paid per batch, not per request,
which is how the API's CPU per request falls as its load rises. Triton's dynamic batcher does the same with its
model instances.
"""

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import Generic, TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")


class RequestBatcher(Generic[Item, Answer]):
    """`await submit(item)` answers `item` by `run(batch)` (on `executor`, at most `threads` batches at once), where
    `run` returns one answer or exception per item, in order. Used from one event loop (its state needs no lock)."""

    def __init__(self, run: Callable[[list[Item]], Sequence[Answer | BaseException]], executor: Executor,
                 threads: int, max_batch: int) -> None:
        if threads < 1 or max_batch < 1:
            raise ValueError(f"threads ({threads}) and max_batch ({max_batch}) must be at least 1")
        self.run, self.executor, self.threads, self.max_batch = run, executor, threads, max_batch
        self._queue: list[tuple[Item, asyncio.Future]] = []
        self._running = 0
        self.batches = 0  # batches run so far, and the requests they held: for tests and benchmarks
        self.requests = 0

    async def submit(self, item: Item) -> Answer:
        """The answer to `item` (its exception raised here)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((item, future))
        self._dispatch(loop)
        return await future

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a batch on each free thread while requests wait."""
        while self._queue and self._running < self.threads:
            batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            batch = [(item, future) for item, future in batch if not future.cancelled()]  # the caller went away
            if not batch:
                continue
            self._running += 1
            self.batches += 1
            self.requests += len(batch)
            done = loop.run_in_executor(self.executor, self.run, [item for item, _ in batch])
            done.add_done_callback(partial(self._settle, loop, batch))

    def _settle(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Item, asyncio.Future]],
                done: asyncio.Future) -> None:
        """Hand each request its answer, then start the next batch."""
        self._running -= 1
        try:
            answers = list(done.result())
            if len(answers) != len(batch):
                raise RuntimeError(f"the batch function answered {len(answers)} of {len(batch)} requests")
        except BaseException as err:  # noqa: BLE001 - every request of the batch gets the error
            answers = [err] * len(batch)
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.cancelled():
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        self._dispatch(loop)
