"""Read the next item while the current one computes (host-device overlap for loading).

:func:`prefetch` runs ``load(item)`` on one background thread, ``depth`` items ahead of the caller, and yields the
items in their order with the loaded value or the exception the load raised, so a bad file still fails only its
own item. At most ``depth`` loaded items wait in memory.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
V = TypeVar("V")


@dataclass(frozen=True)
class Loaded(Generic[T, V]):
    """One item's load.

    Attributes:
        item: the item, as given.
        value: what ``load`` returned (``None`` when it raised).
        error: the exception ``load`` raised, or ``None``.
        seconds: how long ``load`` ran (wall clock, on the loading thread).
    """

    item: T
    value: V | None
    error: Exception | None
    seconds: float


def _timed(load: Callable[[T], V], item: T) -> tuple[V | None, Exception | None, float]:
    start = time.perf_counter()
    try:
        return load(item), None, time.perf_counter() - start
    except Exception as err:  # noqa: BLE001 - handed to the caller with its item
        return None, err, time.perf_counter() - start


def prefetch(items: Iterable[T], load: Callable[[T], V], depth: int = 1) -> Iterator[Loaded[T, V]]:
    """``Loaded`` records of ``items`` in order, each loaded on a background thread ``depth`` items ahead.

    ``depth=0`` loads inline (no thread). Stopping the iteration early (or an exception in the caller) waits for
    the load in flight and starts no other.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be an integer >= 0, got {depth!r}")
    if depth == 0:
        for item in items:
            yield Loaded(item, *_timed(load, item))
        return
    source = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medrecon-load") as pool:
        queue: deque[tuple[Any, Future]] = deque()

        def start_next() -> None:
            for item in source:
                queue.append((item, pool.submit(_timed, load, item)))
                return

        for _ in range(depth + 1):  # the current item plus depth ahead
            start_next()
        while queue:
            item, future = queue.popleft()
            start_next()
            yield Loaded(item, *future.result())
