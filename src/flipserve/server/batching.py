"""Dynamic batching: texts from concurrent requests share forward passes.

Every text a request brings becomes one queued item with a future. A
collector task takes what is queued, waits a little for more when the
server is busy, and hands the lot to a single worker thread, so the event
loop never runs the model and only one forward pass runs at a time (torch
already spreads one pass over the pod's cores).

Padding makes a batch cost as much as its longest text times its size, so
with ``group_by_length`` the worker sorts what it got by length and runs
chunks of similar texts, instead of padding a tweet to an email's length.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from flipserve.modeling import Batch

log = logging.getLogger(__name__)

# A collected group may hold this many forward passes' worth of texts, so
# length grouping has material to sort; more would delay the first answers.
_GROUPS_PER_COLLECT = 4


@dataclass
class _Item:
    text: str
    future: asyncio.Future[tuple[int, Batch]] = field(repr=False)


class Batcher:
    """Coalesce single texts into batched ``run`` calls on one worker thread."""

    def __init__(
        self,
        run: Callable[[list[str]], Batch],
        max_batch_size: int,
        max_wait_s: float,
        group_by_length: bool = True,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait_s = max(0.0, max_wait_s)
        self.group_by_length = group_by_length
        self._on_batch = on_batch or (lambda n: None)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._last_batch = 1

    async def submit(self, texts: list[str]) -> Batch:
        """Run ``texts`` (possibly batched with others'); rows come back in input order."""
        loop = asyncio.get_running_loop()
        items = [_Item(t, loop.create_future()) for t in texts]
        for item in items:
            self._queue.put_nowait(item)
        rows = await asyncio.gather(*(i.future for i in items))
        return Batch(
            probs=np.stack([b.probs[r] for r, b in rows]),
            embeddings=np.stack([b.embeddings[r] for r, b in rows]),
            truncated=[b.truncated[r] for r, b in rows],
        )

    async def run_forever(self) -> None:
        """The collector loop; cancel it to stop (queued items are failed)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                items = await self._collect(loop)
                await loop.run_in_executor(self._executor, self._forward, loop, items)
        finally:
            self._fail_queued()
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[_Item]:
        items = [await self._queue.get()]
        # Waiting only pays when requests overlap: at low load (the last batch
        # was a single text) the first text goes at once, so a lone caller
        # pays no batching delay.
        wait = self.max_wait_s if self._last_batch > 1 else 0.0
        deadline = loop.time() + wait
        while len(items) < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        limit = self.max_batch_size * (_GROUPS_PER_COLLECT if self.group_by_length else 1)
        while len(items) < limit and not self._queue.empty():
            items.append(self._queue.get_nowait())
        self._last_batch = len(items)
        return items

    def _forward(self, loop: asyncio.AbstractEventLoop, items: list[_Item]) -> None:
        """Worker thread: run ``items`` in chunks, resolving each chunk's futures as it finishes."""
        if self.group_by_length:
            items = sorted(items, key=lambda i: len(i.text))
        for start in range(0, len(items), self.max_batch_size):
            chunk = items[start : start + self.max_batch_size]
            try:
                batch = self._run([i.text for i in chunk])
            except Exception as e:  # one bad chunk must not stop the worker
                log.exception("forward pass over %d texts failed", len(chunk))
                for item in chunk:
                    loop.call_soon_threadsafe(_set_exception, item.future, e)
                continue
            self._on_batch(len(chunk))
            for row, item in enumerate(chunk):
                loop.call_soon_threadsafe(_set_result, item.future, (row, batch))

    def _fail_queued(self) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.cancel()


def _set_result(future: asyncio.Future[tuple[int, Batch]], value: tuple[int, Batch]) -> None:
    if not future.done():  # the caller may have gone away
        future.set_result(value)


def _set_exception(future: asyncio.Future[tuple[int, Batch]], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
