"""Free capacity per worker, consumed as a plan assigns, so one plan never over-commits.

A zero cpu or memory request means "no request": it fits even a worker whose free amount
is zero or negative (over-committed by tasks already running).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from edgeplane.scheduling.snapshot import WorkerView

CPU_SLACK = 1e-9
"""Cores a request may exceed the free cpu by: float sums drift (0.1 + 0.2 > 0.3), and
without slack three 0.1-core tasks would not fit on 0.3 free cores."""

_free_slots = attrgetter("free_slots")
_free_cpu = attrgetter("free_cpu")
_free_memory = attrgetter("free_memory_mb")


class Capacity:
    """Parallel lists indexed by ring position; mutated only through :meth:`take`."""

    def __init__(self, ring: Sequence[WorkerView]) -> None:
        self.slots: list[int] = list(map(_free_slots, ring))
        self.cpu: list[float] = list(map(_free_cpu, ring))
        self.memory: list[int] = list(map(_free_memory, ring))

    def take(self, pos: int, cpu: float, memory_mb: int) -> None:
        self.slots[pos] -= 1
        self.cpu[pos] -= cpu
        self.memory[pos] -= memory_mb

    def fitting(self, positions: Sequence[int], cpu: float, memory_mb: int) -> list[int]:
        """The workers of ``positions`` with a free slot and room for the request."""
        slots, free_cpu, free_memory = self.slots, self.cpu, self.memory
        found = [pos for pos in positions if slots[pos] > 0]
        if cpu > 0:
            floor = cpu - CPU_SLACK
            found = [pos for pos in found if free_cpu[pos] >= floor]
        if memory_mb > 0:
            found = [pos for pos in found if free_memory[pos] >= memory_mb]
        return found

    def shortage(
        self,
        eligible: Sequence[int],
        cpu: float,
        memory_mb: int,
        *,
        pinned: str | None,
    ) -> str:
        """Why no worker in ``eligible`` (statically matching, non-empty) can take a task.

        A missing resource is named first: waiting for a slot is only the answer when
        some eligible worker would have the cpu and memory.
        """
        who = f"pinned worker {pinned}" if pinned is not None else None
        floor = cpu - CPU_SLACK
        cpu_ok = [pos for pos in eligible if cpu <= 0 or self.cpu[pos] >= floor]
        memory_ok = [pos for pos in eligible if memory_mb <= 0 or self.memory[pos] >= memory_mb]
        if not set(cpu_ok) & set(memory_ok):
            cores = f"{cpu:g} CPU"
            memory = f"{memory_mb} MB memory"
            if not cpu_ok and not memory_ok:
                need = f"{cores} and {memory}"
            elif not memory_ok:
                need = memory
            elif not cpu_ok:
                need = cores
            else:
                need = f"both {cores} and {memory}"
            if who is not None:
                return f"{who} does not have {need} free"
            return f"no eligible worker has {need} free"
        if who is not None:
            return f"{who} is busy"
        return "all eligible workers are busy"
