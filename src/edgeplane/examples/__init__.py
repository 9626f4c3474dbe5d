"""Small example modules written into the data dir by ``edgeplane up`` for a first task."""

from __future__ import annotations

from pathlib import Path

import wasmtime

EXAMPLES: dict[str, str] = {
    "add.wasm": """
(module
  (func (export "add") (param i32 i32) (result i32)
    local.get 0 local.get 1 i32.add)
  (func (export "mul") (param i32 i32) (result i32)
    local.get 0 local.get 1 i32.mul)
  (func (export "noop")))
""",
    "hello.wasm": """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wasi\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
""",
}


def write_examples(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, source in EXAMPLES.items():
        path = directory / name
        if not path.exists():
            path.write_bytes(wasmtime.wat2wasm(source))
        written[name] = path
    return written
