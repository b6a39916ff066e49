"""A bounded queue for the heavy requests (whole-frame detections, fits).

Jobs run in the queue's own worker threads, never in the server's shared
thread pool, so however many detections are asked for, the tiles, listings and
image facts keep being served.  At most ``workers`` jobs run at once and at
most ``waiting`` more wait their turn; a request beyond that is answered at once
with 503 and a ``Retry-After`` estimated from the recent job durations, rather
than held (a page that asked 50 detections used to freeze for 51 s).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import HTTPException

__all__ = ["WorkQueue"]

T = TypeVar("T")


class WorkQueue:
    """At most ``workers`` jobs at once, ``waiting`` more in line, 503 beyond.

    Parameters
    ----------
    name : str
        What the jobs are, for the 503 message ("detection").
    workers : int
        Jobs run at the same time.
    waiting : int
        Jobs that may wait for a free worker.
    """

    def __init__(self, name: str, *, workers: int = 1, waiting: int = 4) -> None:
        if workers < 1 or waiting < 0:
            raise ValueError("workers must be >= 1 and waiting >= 0")
        self.name, self.workers, self.waiting = name, int(workers), int(waiting)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=f"psfkit-{name}")
        self._lock = threading.Lock()
        self._pending = 0  # running + waiting
        self._mean_s = 5.0  # a first guess of a job's duration, replaced by measurements

    @property
    def pending(self) -> int:
        """Jobs running or waiting now."""
        with self._lock:
            return self._pending

    def retry_after(self) -> int:
        """Seconds after which a refused request may find room (whole seconds, 1..600)."""
        with self._lock:
            ahead = self._pending - self.workers + 1
            return int(min(600, max(1, math.ceil(self._mean_s * max(ahead, 1) / self.workers))))

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)``; HTTPException 503 (with Retry-After) when the queue is full."""
        with self._lock:
            full = self._pending >= self.workers + self.waiting
            if not full:
                self._pending += 1
        if full:
            raise HTTPException(503, f"{self.workers + self.waiting} {self.name}s are already running or waiting; "
                                     "try again shortly", headers={"Retry-After": str(self.retry_after())})

        def job() -> T:
            t0 = time.monotonic()
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._pending -= 1
                    self._mean_s = 0.7 * self._mean_s + 0.3 * (time.monotonic() - t0)

        future = self._pool.submit(job)
        future.add_done_callback(self._forget_if_cancelled)
        return future

    def _forget_if_cancelled(self, future: Future[Any]) -> None:
        if future.cancelled():  # withdrawn before it started (the client went away): job() never ran
            with self._lock:
                self._pending -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Queue ``fn(*args)`` and wait for its result without holding a server thread."""
        return await asyncio.wrap_future(self.submit(fn, *args))
