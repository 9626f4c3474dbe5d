"""The wasm runtime and module cache against real wasmtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import wasmtime

from edgeplane.errors import Invalid, NotFound, TaskFailure, TransientTaskFailure
from edgeplane.model import Limits
from edgeplane.modules import FuncSig, ModuleCache, check_call, inspect_module, make_engine
from edgeplane.runtimes import Outcome, RunSpec, WasmRuntime
from wasm_fixtures import digest, math_wasm, memory_wasm, wasi_hello_wasm

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def runtime() -> AsyncIterator[WasmRuntime]:
    rt = WasmRuntime()
    yield rt
    await rt.close()


def call(
    export: str,
    inputs: list[Any] | None = None,
    module: bytes | None = None,
    task_id: str = "t1",
    **fields: Any,
) -> tuple[RunSpec, bytes]:
    data = module if module is not None else math_wasm()
    spec = RunSpec(
        task_id=task_id,
        attempt=1,
        runtime="wasm",
        name=export,
        entrypoint=export,
        artifact=digest(data),
        inputs=inputs or [],
        **fields,
    )
    return spec, data


def wasi(cli_args: list[str], env: dict[str, str] | None = None) -> tuple[RunSpec, bytes]:
    data = wasi_hello_wasm()
    spec = RunSpec(
        task_id="w1",
        attempt=1,
        runtime="wasm",
        name="hello",
        mode="wasi",
        artifact=digest(data),
        cli_args=cli_args,
        env=env or {},
    )
    return spec, data


async def run(rt: WasmRuntime, task: tuple[RunSpec, bytes | None]) -> Outcome:
    """Start, wait, and release as the worker does (the attempt's id may be used again)."""
    handle = await rt.start(*task)
    outcome = await rt.wait(handle)
    await rt.release(handle)
    return outcome


@pytest.mark.parametrize(
    ("export", "inputs", "results"),
    [
        ("add", [2, 3], [5]),
        ("add", ["2", "3"], [5]),
        ("add", [-7, 2.0], [-5]),
        ("add", [2**31 - 1, 1], [-(2**31)]),
        ("add64", [2**40, "1"], [2**40 + 1]),
        ("mul", [1.5, 2], [3.0]),
        ("mul", ["0.5", "4"], [2.0]),
        ("divmod", [7, 2], [3, 1]),
        ("noop", [], []),
    ],
)
async def test_function_results(
    runtime: WasmRuntime, export: str, inputs: list[Any], results: list[Any]
) -> None:
    outcome = await run(runtime, call(export, inputs))
    assert outcome.state == "completed"
    assert outcome.results == results


@pytest.mark.parametrize(
    ("export", "inputs", "field", "words"),
    [
        ("missing", [], "name", "no exported function 'missing'"),
        ("add", [1], "inputs", "takes 2 input(s)"),
        ("add", ["two", 3], "inputs", "must be an i32"),
        ("add", [1.5, 3], "inputs", "not a whole number"),
        ("add", [True, 3], "inputs", "boolean"),
        ("add", [2**32, 3], "inputs", "does not fit"),
        ("mul", [[1], 2], "inputs", "not a number"),
    ],
)
async def test_user_errors_raise_task_failure_from_start(
    runtime: WasmRuntime, export: str, inputs: list[Any], field: str, words: str
) -> None:
    with pytest.raises(TaskFailure) as info:
        await runtime.start(*call(export, inputs))
    assert info.value.field == field
    assert words in info.value.detail


async def test_module_that_does_not_compile(runtime: WasmRuntime) -> None:
    with pytest.raises(TaskFailure, match="does not compile") as info:
        await runtime.start(*call("add", [1, 2], module=b"\0asm not really"))
    assert info.value.field == "file"


async def test_unknown_module_without_bytes_is_transient(runtime: WasmRuntime) -> None:
    spec, _ = call("add", [1, 2], module=b"never seen")
    with pytest.raises(TransientTaskFailure):
        await runtime.start(spec, None)


async def test_wasi_program_output_args_env_and_exit_code(runtime: WasmRuntime) -> None:
    outcome = await run(runtime, wasi(["3", "more"], {"GREETING": "hi there"}))
    assert outcome.state == "failed"
    assert outcome.error == "exit code 3"
    assert outcome.exit_code == 3
    assert outcome.stdout == "hello\nhello\n3\nmore\nGREETING=hi there\n"
    assert outcome.stderr == "oops\n"
    assert outcome.results == {"stdout": outcome.stdout, "exit_code": 3}


async def test_wasi_program_that_returns_exits_zero(runtime: WasmRuntime) -> None:
    outcome = await run(runtime, wasi([]))
    assert outcome.state == "completed"
    assert outcome.results == {"stdout": "hello\nhello\n", "exit_code": 0}
    assert outcome.stderr == "oops\n"


async def test_wasi_proc_exit_zero_completes(runtime: WasmRuntime) -> None:
    outcome = await run(runtime, wasi(["0"]))
    assert outcome.state == "completed"
    assert outcome.exit_code == 0


async def test_wasi_mode_needs_start(runtime: WasmRuntime) -> None:
    spec, data = call("add", [], mode="wasi")
    with pytest.raises(TaskFailure, match="_start") as info:
        await runtime.start(spec, data)
    assert info.value.field == "file"


async def test_function_mode_on_a_module_that_imports_wasi(runtime: WasmRuntime) -> None:
    outcome = await run(runtime, call("answer", module=wasi_hello_wasm()))
    assert outcome.results == [42]


async def test_timeout_interrupts_a_spinning_call(runtime: WasmRuntime) -> None:
    outcome = await run(runtime, call("spin", limits=Limits(timeout_s=0.3)))
    assert outcome.state == "failed"
    assert outcome.error == "timeout after 0.3s"


async def test_fuel_runs_out(runtime: WasmRuntime) -> None:
    outcome = await run(runtime, call("spin", limits=Limits(fuel=10_000)))
    assert outcome.state == "failed"
    assert outcome.error is not None
    assert "out of fuel" in outcome.error


async def test_memory_limit_makes_grow_fail(runtime: WasmRuntime) -> None:
    limited = Limits(memory_mb=1)
    assert (await run(runtime, call("grow", [32], limits=limited))).results == [-1]
    assert (await run(runtime, call("grow", [3], limits=limited))).results == [1]


async def test_memory_limit_below_initial_memory_fails(runtime: WasmRuntime) -> None:
    outcome = await run(runtime, call("noop", module=memory_wasm(32), limits=Limits(memory_mb=1)))
    assert outcome.state == "failed"
    assert outcome.error is not None
    assert outcome.error.startswith("memory limit 1 MB exceeded")


async def test_trap(runtime: WasmRuntime) -> None:
    outcome = await run(runtime, call("trap"))
    assert outcome.state == "failed"
    assert outcome.error == "wasm trap: unreachable"


async def test_division_by_zero_trap(runtime: WasmRuntime) -> None:
    outcome = await run(runtime, call("divmod", [1, 0]))
    assert outcome.error == "wasm trap: integer division by zero"


async def test_stop_really_ends_the_call() -> None:
    """With one thread, a stopped daemon that kept spinning would block the next task."""
    rt = WasmRuntime(max_threads=1)
    try:
        daemon = await rt.start(*call("spin", daemon=True, task_id="daemon"))
        await rt.stop(daemon)
        assert (await rt.wait(daemon)).state == "cancelled"
        assert (await run(rt, call("add", [1, 2], task_id="next"))).results == [3]
    finally:
        await rt.close()


async def test_same_module_is_compiled_once(runtime: WasmRuntime) -> None:
    for task_id in ("a", "b", "c"):
        assert (await run(runtime, call("add", [1, 1], task_id=task_id))).results == [2]
    spec, _ = call("add", [2, 2], task_id="d")
    assert (await run(runtime, (spec, None))).results == [4]
    assert runtime.modules.compiles == 1


def test_cache_is_bounded() -> None:
    cache = ModuleCache(capacity=2)
    modules = [memory_wasm(pages) for pages in (1, 2, 3)]
    for data in modules:
        cache.get(None, data)
    assert digest(modules[0]) not in cache
    assert digest(modules[2]) in cache


@pytest.mark.parametrize(
    ("wanted", "data", "error"),
    [
        ("0" * 64, math_wasm(), Invalid),
        ("../../etc/passwd", math_wasm(), Invalid),
        ("1" * 64, None, NotFound),
    ],
)
def test_cache_rejects_bad_digests(wanted: str, data: bytes | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        ModuleCache().get(wanted, data)


def test_inspect_module_and_check_call() -> None:
    engine = make_engine()
    sigs = inspect_module(engine, math_wasm())
    assert sigs["divmod"] == FuncSig(("i32", "i32"), ("i32", "i32"))
    assert sigs["noop"] == FuncSig((), ())
    assert check_call(sigs, "add", ["0x10", 1], "function") == [16, 1]
    assert check_call(sigs, "add", [0xFFFFFFFF, 0], "function") == [-1, 0]
    assert check_call(inspect_module(engine, wasi_hello_wasm()), "", [], "wasi") == []
    with pytest.raises(Invalid) as info:
        check_call(sigs, "add", [1, 2], "container")
    assert info.value.field == "mode"


def test_inspect_rejects_imports_edgeplane_does_not_provide() -> None:
    data = wasmtime.wat2wasm('(module (import "env" "f" (func)))')
    with pytest.raises(Invalid, match=r"env\.f") as info:
        inspect_module(make_engine(), bytes(data))
    assert info.value.field == "file"


COUNT_WAT = """
(module
  (func (export "count") (param $n i64) (result i64)
    (local $i i64)
    (block $done
      (loop $next
        (br_if $done (i64.ge_u (local.get $i) (local.get $n)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $next)))
    (local.get $i)))
"""


async def test_quick_calls_run_inline_and_long_ones_move_to_a_thread(
    runtime: WasmRuntime,
) -> None:
    module = bytes(wasmtime.wat2wasm(COUNT_WAT))
    runtime.modules.get(digest(module), module)  # compiled already: only calls remain
    submitted: list[object] = []
    submit = runtime._pool.submit

    def counting(fn: Any, /, *args: Any) -> Any:
        submitted.append(fn)
        return submit(fn, *args)

    runtime._pool.submit = counting  # type: ignore[method-assign,assignment]
    quick = await run(runtime, call("count", [10], module=module, task_id="quick"))
    assert quick.state == "completed" and quick.results == [10]
    assert submitted == []
    # Long enough to outlast the one-tick inline budget: trapped, then run again in a
    # thread from scratch, with the same answer.
    n = 300_000_000
    long = await run(runtime, call("count", [n], module=module, task_id="long"))
    assert long.state == "completed" and long.results == [n]
    assert len(submitted) == 1


SPIN_AT_START_WAT = """
(module
  (func $spin (loop $forever (br $forever)))
  (start $spin)
  (func (export "noop")))
"""


async def test_a_start_function_that_spins_leaves_the_loop(runtime: WasmRuntime) -> None:
    """Instantiation runs inline too (a function call without WASI), start function
    included: it is trapped at the first tick like a call, so ``start`` returns while the
    module still spins, in a thread."""
    module = bytes(wasmtime.wat2wasm(SPIN_AT_START_WAT))
    handle = await runtime.start(*call("noop", module=module, daemon=True))
    assert runtime.inspect(handle)["running"]
    await runtime.stop(handle)
    assert (await runtime.wait(handle)).state == "cancelled"


async def test_defaults_apply_to_a_task_without_limits() -> None:
    rt = WasmRuntime(default_memory_mb=1, default_timeout_s=0.3)
    try:
        spun = await run(rt, call("spin", task_id="spin"))
        assert spun.state == "failed"
        assert spun.error is not None
        assert spun.error.startswith("timeout after 0.3s (the worker's default")
        assert "limits.timeout_s" in spun.error
        assert (await run(rt, call("grow", [32], task_id="grow"))).results == [-1]
        big = await run(rt, call("noop", module=memory_wasm(65536), task_id="4GiB"))
        assert big.state == "failed"
        assert big.error is not None
        assert big.error.startswith("memory limit 1 MB exceeded (the worker's default")
        # a task's own limits come first
        own = Limits(memory_mb=4, timeout_s=60)
        assert (await run(rt, call("grow", [32], task_id="own", limits=own))).results == [1]
        # a daemon runs until stopped
        daemon = await rt.start(*call("spin", task_id="daemon", daemon=True))
        timed = await run(rt, call("spin", task_id="after"))  # outlasts the default timeout
        assert timed.state == "failed"
        assert rt.inspect(daemon)["running"]
        await rt.stop(daemon)
        assert (await rt.wait(daemon)).state == "cancelled"
    finally:
        await rt.close()


@pytest.mark.parametrize(
    ("wat", "error"),
    [
        ('(module (memory 1) (memory 1) (func (export "noop")))', "memory count"),
        (
            "(module (table 1 funcref) (table 1 funcref) (table 1 funcref) (table 1 funcref)"
            ' (table 1 funcref) (func (export "noop")))',
            "table count",
        ),
    ],
)
async def test_a_store_holds_one_memory_and_few_tables(
    runtime: WasmRuntime, wat: str, error: str
) -> None:
    """So a task's memory limit bounds all it can allocate."""
    outcome = await run(runtime, call("noop", module=bytes(wasmtime.wat2wasm(wat))))
    assert outcome.state == "failed"
    assert outcome.error is not None and error in outcome.error


async def test_table_growth_is_bounded(runtime: WasmRuntime) -> None:
    module = bytes(
        wasmtime.wat2wasm(
            '(module (table 1 funcref) (func (export "grow") (param i32) (result i32)'
            " (table.grow (ref.null func) (local.get 0))))"
        )
    )
    assert (await run(runtime, call("grow", [1000], module=module))).results == [1]
    many = await run(runtime, call("grow", [2_000_000], module=module, task_id="many"))
    assert many.results == [-1]
