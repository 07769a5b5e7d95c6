"""Ordered parallel map on threads, for work that releases the GIL (polars, numpy, hashing).

In: a function and an iterable. Out: ``(item, result)`` pairs in input order, with a
bounded number of items in flight.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import polars as pl

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[tuple[T, R]]:
    """``(item, function(item))`` in the order of ``items``, computed on a thread pool.

    For functions that release the GIL (polars, numpy, hashing). At most
    ``2 * workers`` items are in flight, so memory stays bounded. ``workers``
    defaults to polars' thread pool size (which follows ``POLARS_MAX_THREADS``); with
    one worker everything runs in the calling thread.
    """
    workers = workers or pl.thread_pool_size()
    if workers <= 1:
        for item in items:
            yield item, function(item)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pairforge-parse") as pool:
        window: deque[tuple[T, Future[R]]] = deque()
        try:
            for item in items:
                window.append((item, pool.submit(function, item)))
                if len(window) >= 2 * workers:
                    first, future = window.popleft()
                    yield first, future.result()
        except GeneratorExit:  # the consumer stopped early
            for _, future in window:
                future.cancel()
            raise
        except Exception:
            # ``items`` raised (a truncated archive): what was read before the break
            # still comes out, then the error goes on.
            while window:
                first, future = window.popleft()
                yield first, future.result()
            raise
        while window:
            first, future = window.popleft()
            yield first, future.result()
