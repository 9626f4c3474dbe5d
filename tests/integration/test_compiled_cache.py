"""The on-disk cache of compiled wasm (``modules.ModuleCache``): keyed by digest and engine,
every entry checked before wasmtime deserialises it, anything wrong rebuilt."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edgeplane.modules import ENGINE_SETTINGS, FuncSig, ModuleCache, engine_key, make_engine
from wasm_fixtures import digest, math_wasm


def entry_of(cache_dir: Path, data: bytes) -> Path:
    (found,) = cache_dir.glob(f"{digest(data)}-*.cwasm")
    return found


def test_a_new_cache_deserialises_instead_of_compiling(tmp_path: Path) -> None:
    data = math_wasm()
    first = ModuleCache(cache_dir=tmp_path)
    first.get(digest(data), data)
    assert entry_of(tmp_path, data).name == f"{digest(data)}-{engine_key()}.cwasm"
    second = ModuleCache(cache_dir=tmp_path)
    entry = second.get(digest(data))
    assert (second.compiles, second.loads, second.rejected) == (0, 1, 0)
    assert entry.exports["add"] == FuncSig(("i32", "i32"), ("i32",))


def test_the_key_names_engine_settings_and_version() -> None:
    assert engine_key() == engine_key(ENGINE_SETTINGS)
    assert engine_key() != engine_key((("consume_fuel", False), ("epoch_interruption", True)))
    assert engine_key() != engine_key(())


@pytest.mark.parametrize(
    "damage",
    [
        lambda body: b"garbage",
        lambda body: body[: len(body) // 2],  # truncated
        lambda body: body[:40] + bytes([body[40] ^ 1]) + body[41:],  # one bit flipped
        lambda body: b"",
    ],
    ids=["garbage", "truncated", "bitflip", "empty"],
)
def test_damaged_entry_is_removed_and_rebuilt(tmp_path: Path, damage: object) -> None:
    data = math_wasm()
    ModuleCache(cache_dir=tmp_path).get(digest(data), data)
    path = entry_of(tmp_path, data)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    cache = ModuleCache(cache_dir=tmp_path)
    assert cache.get(digest(data), data).exports["add"].params == ("i32", "i32")
    assert (cache.compiles, cache.loads, cache.rejected) == (1, 0, 1)
    # rebuilt: the next process loads it again
    again = ModuleCache(cache_dir=tmp_path)
    again.get(digest(data))
    assert (again.compiles, again.loads) == (0, 1)


def test_damaged_entry_without_bytes_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    data = math_wasm()
    ModuleCache(cache_dir=tmp_path).get(digest(data), data)
    entry_of(tmp_path, data).write_bytes(b"\0" * 100)
    cache = ModuleCache(cache_dir=tmp_path)
    with pytest.raises(Exception, match="not cached"):
        cache.get(digest(data))
    assert not list(tmp_path.glob("*.cwasm"))


def test_entry_from_another_directory_is_not_trusted(tmp_path: Path) -> None:
    """A valid serialisation made under another key (copied in, or forged by someone who
    could write the file but not read the key) is never deserialised."""
    data = math_wasm()
    ModuleCache(cache_dir=tmp_path / "a").get(digest(data), data)
    ModuleCache(cache_dir=tmp_path / "b")  # its own key
    foreign = entry_of(tmp_path / "a", data)
    (tmp_path / "b" / foreign.name).write_bytes(foreign.read_bytes())
    cache = ModuleCache(cache_dir=tmp_path / "b")
    cache.get(digest(data), data)
    assert (cache.compiles, cache.loads, cache.rejected) == (1, 0, 1)


def test_directory_and_key_are_private(tmp_path: Path) -> None:
    ModuleCache(cache_dir=tmp_path / "c")
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "c" / "key").stat().st_mode) == 0o600


def test_a_directory_others_may_write_is_not_used(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    data = math_wasm()
    cache = ModuleCache(cache_dir=shared)
    assert cache.cache_dir is None
    cache.get(digest(data), data)
    assert not list(shared.iterdir())


def test_an_engine_of_unknown_settings_stays_in_memory(tmp_path: Path) -> None:
    data = math_wasm()
    cache = ModuleCache(make_engine(), cache_dir=tmp_path / "m")
    cache.get(digest(data), data)
    assert cache.cache_dir is None
    assert not (tmp_path / "m").exists()


def test_entries_of_other_engines_and_leftovers_are_swept(tmp_path: Path) -> None:
    data = math_wasm()
    ModuleCache(cache_dir=tmp_path).get(digest(data), data)
    old = tmp_path / f"{digest(data)}.cwasm"  # an earlier version's name
    other = tmp_path / f"{digest(data)}-0123456789abcdef.cwasm"  # another wasmtime
    tmp = tmp_path / f"{digest(data)}-{engine_key()}.123.456.tmp"
    for path in (old, other, tmp):
        path.write_bytes(b"x")
    cache = ModuleCache(cache_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["key", f"{digest(data)}-{engine_key()}.cwasm"]
    )
    cache.get(digest(data))
    assert (cache.compiles, cache.loads) == (0, 1)
