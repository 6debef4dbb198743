"""A job run again and again in the background of a worker: the reconciler, the purger.

:class:`PeriodicTask` runs its job, sleeps the interval (with some jitter, so the
workers of a replica set do not move in lockstep) and runs it again; a job that says
there is more to do right away runs again at once. A failing run is logged and retried
after a backed-off pause -- it never ends the loop. :meth:`PeriodicTask.stop` lets the
run in progress finish (bounded), so a job is never cut in the middle of its writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

MAX_FAILURE_PAUSE_S = 60.0
"""The longest pause after failed runs."""


class PeriodicTask:
    """Runs ``job`` every ``interval_s`` until stopped; ``job`` returns whether more work
    is waiting (then it runs again at once)."""

    def __init__(self, name: str, job: Callable[[], Awaitable[bool]], *, interval_s: float) -> None:
        self._name = name
        self._job = job
        self._interval_s = interval_s
        self._stopping = asyncio.Event()
        # Set to end a pause early: by stop(), or by wake() when work has arrived.
        self._nudged = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        """What the task is called in logs."""
        return self._name

    def start(self) -> None:
        """Start running in the background; returns at once."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name=self._name)

    def wake(self) -> None:
        """Run the job now rather than after the pause (work has just arrived)."""
        self._nudged.set()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop after the run in progress (cancelled if it takes longer than ``grace_s``)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        self._nudged.set()
        done, _ = await asyncio.wait({task}, timeout=grace_s)
        if not done:
            logger.warning("%s did not finish its run in %.0f s; cancelling", self._name, grace_s)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            more = False
            self._nudged.clear()
            try:
                more = await self._job()
            except Exception as exc:
                failures += 1
                pause = min(self._interval_s * 2**failures, MAX_FAILURE_PAUSE_S)
                logger.warning(
                    "%s failed (%s: %s); trying again in %.1f s",
                    self._name,
                    type(exc).__name__,
                    exc,
                    pause,
                    extra={"task": self._name},
                )
                await self._pause(pause)
                continue
            failures = 0
            if not more:
                await self._pause(self._interval_s * (0.8 + random.random() * 0.4))  # noqa: S311

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._nudged.wait()
