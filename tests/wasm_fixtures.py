"""Small wasm modules for tests, written in WAT and compiled with ``wasmtime.wat2wasm``."""

from __future__ import annotations

import hashlib
from functools import cache

import wasmtime

MATH_WAT = """
(module
  (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32)
    local.get 0 local.get 1 i32.add)
  (func (export "add64") (param i64 i64) (result i64)
    local.get 0 local.get 1 i64.add)
  (func (export "mul") (param f64 f64) (result f64)
    local.get 0 local.get 1 f64.mul)
  (func (export "divmod") (param i32 i32) (result i32 i32)
    local.get 0 local.get 1 i32.div_s
    local.get 0 local.get 1 i32.rem_s)
  (func (export "noop"))
  (func (export "spin")
    (loop $forever (br $forever)))
  (func (export "trap")
    unreachable)
  (func (export "grow") (param i32) (result i32)
    local.get 0 memory.grow))
"""

# stdout: "hello", then argv and environ one entry per line; stderr: "oops".
# Exits with the number in argv[1] (through proc_exit) when there is one.
WASI_HELLO_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get"
    (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get"
    (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hello\\n")
  (data (i32.const 72) "oops\\n")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $lines (param $ptr i32) (param $len i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $ptr) (local.get $end)))
        (if (i32.eqz (i32.load8_u (local.get $ptr)))
          (then (i32.store8 (local.get $ptr) (i32.const 10))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
        (br $next))))
  (func $number (param $ptr i32) (result i32)
    (local $n i32) (local $digit i32)
    (block $done
      (loop $next
        (local.set $digit (i32.sub (i32.load8_u (local.get $ptr)) (i32.const 48)))
        (br_if $done (i32.gt_u (local.get $digit) (i32.const 9)))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (local.get $digit)))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
        (br $next)))
    (local.get $n))
  (func (export "_start")
    (call $write (i32.const 1) (i32.const 64) (i32.const 6))
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 1024) (i32.const 2048)))
    (call $lines (i32.const 2048) (i32.load (i32.const 20)))
    (call $write (i32.const 1) (i32.const 2048) (i32.load (i32.const 20)))
    (drop (call $environ_sizes_get (i32.const 24) (i32.const 28)))
    (drop (call $environ_get (i32.const 8192) (i32.const 16384)))
    (call $lines (i32.const 16384) (i32.load (i32.const 28)))
    (call $write (i32.const 1) (i32.const 16384) (i32.load (i32.const 28)))
    (call $write (i32.const 2) (i32.const 72) (i32.const 5))
    (if (i32.gt_u (i32.load (i32.const 16)) (i32.const 1))
      (then (call $proc_exit (call $number (i32.load (i32.const 1028)))))))
  (func (export "answer") (result i32)
    (i32.const 42)))
"""


@cache
def math_wasm() -> bytes:
    """Exports add, add64, mul (f64), divmod (two results), noop, spin, trap, grow."""
    return bytes(wasmtime.wat2wasm(MATH_WAT))


def add_wasm() -> bytes:
    """A module exporting ``add`` (the math module)."""
    return math_wasm()


def trap_wasm() -> bytes:
    """A module exporting ``trap``, which hits ``unreachable`` (the math module)."""
    return math_wasm()


def spin_wasm() -> bytes:
    """A module exporting ``spin``, an endless loop (the math module)."""
    return math_wasm()


@cache
def wasi_hello_wasm() -> bytes:
    """A WASI command (see WASI_HELLO_WAT) that also exports ``answer() -> 42``."""
    return bytes(wasmtime.wat2wasm(WASI_HELLO_WAT))


@cache
def memory_wasm(pages: int) -> bytes:
    """A module whose memory starts at ``pages`` 64 KiB pages; exports ``noop``."""
    return bytes(
        wasmtime.wat2wasm(f'(module (memory (export "memory") {pages}) (func (export "noop")))')
    )


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if not n:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _section(kind: int, payload: bytes) -> bytes:
    return bytes([kind]) + _leb(len(payload)) + payload


@cache
def big_wasm(size: int, terms: int = 200) -> bytes:
    """A valid module of about ``size`` bytes that takes seconds to compile: as many
    functions as fit, each summing ``terms`` constants (``1 + 1000 + 1001 + …``). Exports
    the first as ``f0`` (no parameters, one i32 result: :func:`big_wasm_result`).
    Written as binary: wat2wasm on megabytes of text would take longer than the test."""
    ops = bytearray(b"\x41" + _leb(1))  # i32.const 1
    for k in range(terms):
        ops += b"\x41" + _leb(1000 + k) + b"\x6a"  # i32.const; i32.add
    body = b"\x00" + bytes(ops) + b"\x0b"  # no locals … end
    entry = _leb(len(body)) + body
    count = max(1, size // len(entry))
    name = b"f0"
    return b"".join(
        [
            b"\x00asm\x01\x00\x00\x00",
            _section(1, _leb(1) + b"\x60\x00\x01\x7f"),  # type 0: () -> i32
            _section(3, _leb(count) + b"\x00" * count),  # every function of type 0
            _section(7, _leb(1) + _leb(len(name)) + name + b"\x00" + _leb(0)),
            _section(10, _leb(count) + entry * count),
        ]
    )


def big_wasm_result(terms: int = 200) -> int:
    """What ``f0`` of :func:`big_wasm` returns."""
    return 1 + sum(1000 + k for k in range(terms))
