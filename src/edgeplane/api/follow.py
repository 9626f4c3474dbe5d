"""``GET /tasks/{id}/logs?follow=true``: a task's output as a server-sent event stream.

While the task runs on a worker of this manager, the worker is asked to send what it
prints (``task.logs.follow``, for :data:`FOLLOW_S` seconds, renewed while the stream is
open: a closed stream costs the worker nothing after that). Events::

    event: stdout | stderr     data: the text, one ``data:`` line per line
    event: gap                 data: {"lost": N}  (chunks dropped: the reader was slow)
    event: end                 data: {"state": ..., "exit_code": ...}

Output printed before anyone followed comes first (the worker reads its files from the
start). A task that ended before its worker was asked, and any at a root (whose
clusters do not stream), gets its stored stdout and stderr at its end instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson

from edgeplane.manager import Manager
from edgeplane.manager.follow import Follower
from edgeplane.model import Task
from edgeplane.protocol import LogChunk

#: seconds a worker sends output per request; asked again at half of it
FOLLOW_S = 30.0
#: seconds one stream lasts at most (a client follows on with a new request)
MAX_STREAM_S = 3600.0
#: seconds between checks of the task's state and comments that keep proxies from
#: closing a quiet stream
TICK_S = 1.0


def event(name: str, text: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in text.split("\n"))
    return f"event: {name}\n{lines}\n".encode()


async def follow_logs(manager: Manager, task: Task, follower: Follower) -> AsyncIterator[bytes]:
    task_id = task.id
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAX_STREAM_S
    asked: tuple[int, str] | None = None
    renew_at = 0.0
    streamed: set[str] = set()
    lost = 0
    ended = asyncio.ensure_future(manager.wait(task_id, MAX_STREAM_S))
    try:
        yield b": following\n\n"
        while True:
            current = ended.result() if ended.done() else await manager.get(task_id)
            now = loop.time()
            if (
                not manager.root
                and current.state == "running"
                and current.worker_id is not None
                and ((current.attempt, current.worker_id) != asked or now >= renew_at)
            ):
                await manager.follow_logs(task_id, current.attempt, current.worker_id, FOLLOW_S)
                asked, renew_at = (current.attempt, current.worker_id), now + FOLLOW_S / 2
            chunk: LogChunk | None = None
            if current.terminal:  # every chunk came before the end: take what is queued
                with contextlib.suppress(asyncio.QueueEmpty):
                    chunk = follower.queue.get_nowait()
            else:
                getter = asyncio.ensure_future(follower.queue.get())
                await asyncio.wait({getter, ended}, timeout=TICK_S, return_when="FIRST_COMPLETED")
                if getter.done():
                    chunk = getter.result()
                else:
                    getter.cancel()
            if follower.lost > lost:
                yield event("gap", orjson.dumps({"lost": follower.lost - lost}).decode())
                lost = follower.lost
            if chunk is not None:
                if asked is None or chunk.attempt == asked[0]:
                    streamed.add(chunk.stream)
                    yield event(chunk.stream, chunk.data)
                continue
            if current.terminal:
                for stream, text in (("stdout", current.stdout), ("stderr", current.stderr)):
                    if stream not in streamed and text:
                        yield event(stream, text)
                end = {"state": current.state, "exit_code": current.exit_code}
                yield event("end", orjson.dumps(end).decode())
                return
            if loop.time() > deadline:
                yield event("end", orjson.dumps({"state": current.state}).decode())
                return
            yield b": tick\n\n"
    finally:
        ended.cancel()
        manager.log_followers.remove(task_id, follower)
