"""Following a running attempt's stdout and stderr for its manager (``task logs
--follow``): only while asked (``task.logs.follow``, renewed while someone follows), one
polling loop for the whole worker that runs only while something is followed.

Chunks go on the ``events`` leaf at the events' QoS, so the last one (read when the
attempt ends) reaches the manager before the attempt's final event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeplane import clock as clocks
from edgeplane.protocol import LogChunk, LogChunks
from edgeplane.protocol.messages import MAX_LOG_CHUNK

log = logging.getLogger(__name__)

#: seconds between reads of the followed files
POLL_S = 0.2
#: characters read from one stream per poll: a chatty task is followed, not mirrored
MAX_READ = 4 * MAX_LOG_CHUNK

Publish = Callable[[LogChunks], Awaitable[None]]


@dataclass
class _Tail:
    attempt: int
    files: dict[str, Path]
    until: float
    #: bytes read so far per stream (the offset a chunk carries is in characters)
    positions: dict[str, int] = field(default_factory=dict)
    chars: dict[str, int] = field(default_factory=dict)


class Tails:
    def __init__(self, publish: Publish, clock: clocks.Clock) -> None:
        self._publish = publish
        self._clock = clock
        self._tails: dict[str, _Tail] = {}
        self._loop: asyncio.Task[None] | None = None

    def follow(self, task_id: str, attempt: int, files: dict[str, Path], follow_s: float) -> None:
        if follow_s <= 0 or not files:
            self._tails.pop(task_id, None)
            return
        until = self._clock.monotonic() + follow_s
        tail = self._tails.get(task_id)
        if tail is not None and tail.attempt == attempt:
            tail.until = until
        else:
            self._tails[task_id] = _Tail(attempt, files, until)
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run(), name="worker-log-tails")

    def following(self, task_id: str) -> bool:
        return task_id in self._tails

    async def last(self, task_id: str, attempt: int) -> None:
        """The attempt ended: send what it printed since the last poll, stop following."""
        tail = self._tails.get(task_id)
        if tail is None or tail.attempt != attempt:
            return
        del self._tails[task_id]
        await self._send(task_id, tail)

    async def close(self) -> None:
        self._tails.clear()
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    async def _run(self) -> None:
        while self._tails:
            now = self._clock.monotonic()
            for task_id, tail in list(self._tails.items()):
                if now > tail.until:
                    self._tails.pop(task_id, None)
                    continue
                try:
                    await self._send(task_id, tail)
                except Exception:  # a bad read must not end the others' following
                    log.exception("log follow failed", extra={"task_id": task_id})
            await asyncio.sleep(POLL_S)

    async def _send(self, task_id: str, tail: _Tail) -> None:
        chunks = await asyncio.to_thread(_read, task_id, tail)
        if chunks:
            await self._publish(LogChunks(chunks=chunks))


def _read(task_id: str, tail: _Tail) -> list[LogChunk]:
    chunks = []
    for stream, path in tail.files.items():
        start = tail.positions.get(stream, 0)
        try:
            with path.open("rb") as handle:
                handle.seek(start)
                data = handle.read(MAX_READ)
        except OSError:
            continue
        # a cut in the middle of a UTF-8 sequence waits for the rest in the next read
        text = data.decode("utf-8", errors="ignore")
        used = len(text.encode("utf-8"))
        if not text:
            continue
        tail.positions[stream] = start + used
        offset = tail.chars.get(stream, 0)
        tail.chars[stream] = offset + len(text)
        for i in range(0, len(text), MAX_LOG_CHUNK):
            piece = text[i : i + MAX_LOG_CHUNK]
            chunks.append(
                LogChunk(
                    task_id=task_id,
                    attempt=tail.attempt,
                    stream=stream,
                    offset=offset + i,
                    data=piece,
                )
            )
    return chunks
