"""The catalog cache: stale lists served while synth is away, refreshes backed off and shared."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.catalog import _Cached


async def settle() -> None:
    """Let the tasks just created (and the fetch they start) run up to their first wait."""
    for _ in range(3):
        await asyncio.sleep(0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fetch:
    """Answers 1, 2, 3, … or fails while `failing`; can be held to keep a fetch in flight."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> int:
        self.calls += 1
        await self.gate.wait()
        if self.failing:
            raise ConnectionError("synth unavailable")
        return self.calls


async def test_a_failed_refresh_serves_the_old_value_and_backs_off() -> None:
    clock, fetch = Clock(), Fetch()
    cache = _Cached(fetch, ttl=60, retry_after=5, clock=clock)
    assert await cache.get() == 1
    clock.now += 61
    fetch.failing = True
    assert await cache.get() == 1
    assert fetch.calls == 2
    for _ in range(10):
        assert await cache.get() == 1  # within the back-off: synth is not asked
    assert fetch.calls == 2
    clock.now += 6
    fetch.failing = False
    assert await cache.get() == 3
    assert await cache.get() == 3


async def test_callers_do_not_queue_behind_a_slow_refresh() -> None:
    clock, fetch = Clock(), Fetch()
    cache = _Cached(fetch, ttl=60, retry_after=5, clock=clock)
    assert await cache.get() == 1
    clock.now += 61
    fetch.gate.clear()
    refreshing = asyncio.create_task(cache.get())
    await settle()
    assert fetch.calls == 2
    assert await asyncio.wait_for(cache.get(), timeout=1) == 1  # stale, at once
    fetch.gate.set()
    assert await refreshing == 2
    assert fetch.calls == 2


async def test_with_nothing_cached_concurrent_callers_share_one_failing_fetch() -> None:
    fetch = Fetch()
    fetch.failing = True
    fetch.gate.clear()
    cache = _Cached(fetch, ttl=60, retry_after=5, clock=Clock())
    callers = [asyncio.create_task(cache.get()) for _ in range(5)]
    await settle()
    fetch.gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    assert fetch.calls == 1
    fetch.failing = False
    assert await cache.get() == 2  # nothing to serve meanwhile, so no back-off


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch() -> None:
    fetch = Fetch()
    fetch.gate.clear()
    cache = _Cached(fetch, ttl=60, retry_after=5, clock=Clock())
    first = asyncio.create_task(cache.get())
    second = asyncio.create_task(cache.get())
    await settle()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    fetch.gate.set()
    assert await second == 1
    assert fetch.calls == 1
