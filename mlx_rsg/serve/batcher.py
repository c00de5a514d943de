"""Micro-batching: requests for the same run and task that arrive close together are scored in
one forward, which costs about as much as one of them alone while the device is busy.

The HTTP side `submit`s jobs from any thread; one thread (the server's main thread, the only one
that ever runs the model) takes them with `next_batch`: the oldest job, every queued job of the
same run and task, then whatever of theirs arrives within `window_s`, up to `max_units` units.
Jobs of other runs or tasks wait, in order, for the next batch. A job bigger than `max_units` is
a batch of its own.
"""

from __future__ import annotations

import collections
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Job:
    run: str
    task: str
    records: list  # parsed records, with the request's own idx
    units: int  # what the model classifies for them (MuSeRC: one per answer)
    done: Callable[[Any], None]  # called once, on the scoring thread: the rows or an exception

    @property
    def key(self) -> tuple[str, str]:
        return self.run, self.task


class MicroBatcher:
    def __init__(self, window_s: float, max_units: int):
        self.window_s, self.max_units = window_s, max(1, max_units)
        self._queue: queue.Queue[Job] = queue.Queue()
        self._held: collections.deque[Job] = collections.deque()  # taken, for a later batch
        self.batches = self.jobs = 0  # handed out so far (GET /health)

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def pending(self) -> int:
        return self._queue.qsize() + len(self._held)

    def next_batch(self, timeout: float) -> list[Job]:
        """The next batch (jobs of one run and task), or [] if none came within `timeout`."""
        if self._held:
            first = self._held.popleft()
        else:
            try:
                first = self._queue.get(timeout=timeout)
            except queue.Empty:
                return []
        batch, units = [first], first.units
        held, self._held = self._held, collections.deque()
        for job in held:  # jobs that waited through an earlier batch come first
            units = self._add(batch, units, job)
        deadline = time.monotonic() + self.window_s
        while units < self.max_units:
            try:  # what is queued already, then what arrives before the deadline
                job = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            units = self._add(batch, units, job)
        self.batches, self.jobs = self.batches + 1, self.jobs + len(batch)
        return batch

    def _add(self, batch: list[Job], units: int, job: Job) -> int:
        if job.key == batch[0].key and units + job.units <= self.max_units:
            batch.append(job)
            return units + job.units
        self._held.append(job)
        return units
