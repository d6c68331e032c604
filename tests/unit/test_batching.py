"""The batcher: concurrent texts share forward passes, rows come back to their callers."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from flipserve.modeling import Batch
from flipserve.server.batching import Batcher


class Recorder:
    """A stand-in forward pass: each text's "probabilities" encode the text itself."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, texts: list[str]) -> Batch:
        self.calls.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if self.fail_on in texts:
            raise ValueError("boom")
        lengths = np.array([[len(t), 0.0] for t in texts], dtype=np.float32)
        return Batch(
            probs=lengths, embeddings=lengths.copy(), truncated=[len(t) > 9 for t in texts]
        )


async def _run(batcher: Batcher, requests: list[list[str]]) -> list[Batch]:
    collector = asyncio.create_task(batcher.run_forever())
    try:
        return list(await asyncio.gather(*(batcher.submit(r) for r in requests)))
    finally:
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows() -> None:
    run = Recorder()
    batcher = Batcher(run, max_batch_size=8, max_wait_s=0.01)
    requests = [["a" * (i + 1)] for i in range(20)] + [["bb", "c" * 12]]
    results = asyncio.run(_run(batcher, requests))
    for request, result in zip(requests, results, strict=True):
        assert result.probs[:, 0].tolist() == [len(t) for t in request]
        assert result.truncated == [len(t) > 9 for t in request]
    assert sum(len(c) for c in run.calls) == 22
    assert len(run.calls) < 22
    assert max(len(c) for c in run.calls) <= 8
    assert run.threads == {"forward_0"}


def test_length_grouping_puts_similar_lengths_in_one_pass() -> None:
    run = Recorder()
    batcher = Batcher(run, max_batch_size=2, max_wait_s=0.05, group_by_length=True)
    texts = ["x" * 50, "y", "z" * 51, "w" * 2]
    asyncio.run(_run(batcher, [[t] for t in texts]))
    assert sorted(map(sorted, run.calls)) == [["w" * 2, "y"], ["x" * 50, "z" * 51]]


def test_a_failing_pass_fails_only_its_own_requests() -> None:
    run = Recorder(fail_on="bad")
    batcher = Batcher(run, max_batch_size=1, max_wait_s=0.0)

    async def scenario() -> tuple[BaseException | Batch, ...]:
        collector = asyncio.create_task(batcher.run_forever())
        try:
            return tuple(
                await asyncio.gather(
                    batcher.submit(["bad"]), batcher.submit(["good"]), return_exceptions=True
                )
            )
        finally:
            collector.cancel()

    bad, good = asyncio.run(scenario())
    assert isinstance(bad, ValueError)
    assert isinstance(good, Batch) and good.probs[0, 0] == 4


@pytest.mark.parametrize(("quota", "expected"), [("max 100000", 64), ("150000 100000", 2)])
def test_cpu_limit_reads_the_cgroup_quota(tmp_path, monkeypatch, quota: str, expected: int) -> None:
    from flipserve.server import runtime

    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(64)))
    (tmp_path / "cpu.max").write_text(quota + "\n")
    assert runtime.cpu_limit(tmp_path) == expected
