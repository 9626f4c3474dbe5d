"""Numbers about a task's ``limits``: their ranges (checked by :class:`edgeplane.model.Limits`)
and what a wasm task gets when it gives none. Plain constants, so the settings and the CLI
can use them without importing the models."""

from __future__ import annotations

#: Upper bounds of each field of ``limits``: what the runtimes can apply, kept sane.
MAX_TIMEOUT_S = 365 * 24 * 3600.0
#: wasmtime's fuel is a u64; 2**53 also stays exact as a JSON number in any client
MAX_FUEL = 2**53
#: 1 TiB (a container's memory.max in bytes must fit cgroups' int64 too)
MAX_MEMORY_MB = 1024 * 1024
#: cgroup v1's cpu.shares range, which runc maps onto v2's cpu.weight
MAX_CPU_SHARES = 262_144
#: Linux's highest pid_max
MAX_PIDS = 4_194_304

#: What a wasm task may use when its ``limits`` say nothing: linear memory, and running
#: time for a task that is not a daemon (a worker runs it in its own process, and a
#: worker of ``edgeplane up`` in the control plane's). Operators raise them with
#: ``--wasm-memory-mb`` / ``--wasm-timeout-s``; a task's own limits take precedence.
DEFAULT_WASM_MEMORY_MB = 64
DEFAULT_WASM_TIMEOUT_S = 60.0
