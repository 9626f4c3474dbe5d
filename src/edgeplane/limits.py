"""Every bound on input in one place (docs/limits.md): a task's ``limits`` (their ranges,
checked by :class:`edgeplane.model.Limits`, and what a wasm task gets when it gives none),
then everything else a request carries (sizes, depths, number ranges; the pydantic types
made of them are in ``edgeplane.model.bounds``). Plain constants, so the settings, the CLI
and the API can use them without importing the models."""

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
#: The most memory a wasm task may ask for on a worker (``--wasm-max-memory-mb``): the
#: workers of ``edgeplane up`` run wasm in the control plane's process, whose memory a
#: task must never be able to take.
DEFAULT_WASM_MAX_MEMORY_MB = 1024
DEFAULT_WASM_TIMEOUT_S = 60.0

# --- free-form JSON (metadata, inputs) ---------------------------------------------------
#: Nesting of one free-form value: objects and arrays inside each other.
MAX_DEPTH = 32
#: Values (objects, arrays and scalars together) in one free-form value.
MAX_NODES = 10_000
#: Items of one array, keys of one object, characters of one key or string.
MAX_ITEMS = 1_000
MAX_KEYS = 1_000
MAX_KEY = 256
MAX_STRING = 1_048_576
#: Integers a free-form value may hold: what a 64-bit column or reader (orjson) carries.
MIN_INT = -(2**63)
MAX_INT = 2**63 - 1

# --- named strings ------------------------------------------------------------------------
#: Names and references: task, job, workflow, service and cluster names, ids, exports.
MAX_NAME = 256
#: One command-line argument or environment value (Linux takes 128 KiB per argument).
MAX_ARG = 65_536
#: Arguments of one command (or ``cli_args``) and variables of one ``env``.
MAX_ARGS = 1_024
#: Labels of one constraint set, and the length of a label's key or value.
MAX_LABELS = 64
#: A cron expression, an IANA timezone name, an image reference.
MAX_CRON = 256
MAX_TIMEZONE = 64
MAX_URL = 2_048

# --- numbers -----------------------------------------------------------------------------
#: Extra attempts of a task (-1: forever).
MAX_RETRIES = 1_000
MAX_PRIORITY = 100
#: Tasks in one batch request.
MAX_BATCH = 1_000
#: Tasks of one job or workflow (``Settings.max_workflow_tasks`` may lower it), services of
#: one application.
MAX_RUN_TASKS = 10_000
MAX_SERVICES = 1_000
MAX_REPLICAS = 10_000
#: Cores a task or a service may ask for (memory: ``MAX_MEMORY_MB`` above).
MAX_CPUS = 4_096.0
#: Pages of every list: ``limit`` items from ``offset`` (an offset past 2^63 broke SQL).
MAX_LIMIT = 1_000
MAX_OFFSET = 1_000_000_000
#: A list's paging cursor (``GET /tasks``): a time and an id of at most ``MAX_NAME``
#: characters, each up to 4 bytes in UTF-8 and JSON-escaped, then base64.
MAX_CURSOR = 16 * MAX_NAME
#: Longest a request may hold its answer (``?wait=``), in seconds.
MAX_WAIT_S = 60.0
#: Half the earth's circumference: a geo radius past it covers everything anyway.
MAX_RADIUS_KM = 20_038.0

# --- YAML (spec files, application descriptors) ------------------------------------------
#: Bytes of one YAML document (parsing YAML costs about 1 s a MB in pure Python).
MAX_YAML_BYTES = 1_048_576
#: Aliases (``*name``) one YAML document may use: expanding a few nested aliases is how a
#: few hundred bytes become gigabytes ("billion laughs").
MAX_YAML_ALIASES = 64
#: Answers a control plane holds open at once (long polls), by default (setting
#: ``max_held_answers``; ``manager/holds.py``). A manager's open files bound its
#: connections anyway (a soft limit of 1,024 is common on small machines), and its store
#: and broker need some of them.
DEFAULT_HELD_ANSWERS = 1000
