"""The README, run as a new user would: every ```bash block in order, in a fresh HOME,
with the YAML files it writes (a ```yaml block whose first line is ``# NAME``) and its
```python blocks. Where the README says ``edgeplane up``, `up` starts in the background
(another terminal, for a person) and the block goes on once it is up; a later
``edgeplane up`` replaces the one before (Ctrl-C, then the new command). A worker, manager
or root the README runs beside it also runs in the background until the test ends.

What the test changes, and only this: ``127.0.0.1:7070``/``:7070`` become a free port
(``EDGEPLANE_PORT``), ``pip install .`` is a no-op (edgeplane is installed in the test's
venv already) and ``edgeplane`` is this interpreter's ``python -m edgeplane``. A block that
cannot run here says so in the README, visibly, with
``<!-- readme-test: skip (REASON) -->`` on the line before it; the test prints them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeplane.transport import free_port
from faults.procs import wait_until

pytestmark = pytest.mark.timeout(300)

README = Path(__file__).resolve().parents[2] / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")
#: What the reader types when the README asks for a password.
PASSWORD = "correct horse battery staple"
#: Seconds one block may take (the README's slowest block waits for an application).
BLOCK_TIMEOUT_S = 150


@dataclass(frozen=True, slots=True)
class Block:
    lang: str
    line: int
    text: str
    skip: str | None


def blocks(text: str) -> list[Block]:
    found: list[Block] = []
    lines = text.splitlines()
    skip: str | None = None
    i = 0
    while i < len(lines):
        marker = SKIP.search(lines[i])
        fence = FENCE.match(lines[i])
        if marker:
            skip = marker["reason"]
        elif fence and fence["lang"]:
            start = i
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            found.append(Block(fence["lang"], start + 1, "\n".join(body) + "\n", skip))
            skip = None
        elif lines[i].strip():
            skip = None if not lines[i].lstrip().startswith("<!--") else skip
        i += 1
    return found


def _prelude(python: str, log: Path) -> str:
    """Shell functions standing in for the commands the test replaces (see module doc)."""
    py, out = shlex.quote(python), shlex.quote(str(log))
    return f"""
set -euo pipefail
pip() {{ echo "(readme test: edgeplane is already installed)"; }}
edgeplane() {{
  case "${{1:-}} ${{2:-}}" in
    "up "*) shift ;;
    "worker -"*|"manager -"*|"root -"*)  # a process that runs until stopped: beside, too
      setsid {py} -m edgeplane "$@" >>{out} 2>&1 </dev/null &
      echo $! >> "$HOME/bg.pids"
      return ;;
    *) {py} -m edgeplane "$@"; return ;;
  esac
  if [ -f "$HOME/up.pid" ]; then
    kill -TERM "$(cat "$HOME/up.pid")" 2>/dev/null || true
    while kill -0 "$(cat "$HOME/up.pid")" 2>/dev/null; do sleep 0.1; done
  fi
  local before
  before=$(grep -c 'edgeplane is up' {out} 2>/dev/null || true)
  setsid {py} -m edgeplane up "$@" >>{out} 2>&1 </dev/null &
  echo $! > "$HOME/up.pid"
  for _ in $(seq 600); do
    kill -0 "$(cat "$HOME/up.pid")" 2>/dev/null || {{ echo "edgeplane up exited" >&2; return 1; }}
    [ "$(grep -c 'edgeplane is up' {out} 2>/dev/null || true)" -gt "${{before:-0}}" ] && return
    sleep 0.1
  done
  echo "edgeplane up did not come up" >&2; return 1
}}
"""


def _localize(text: str, port: int) -> str:
    return text.replace(":7070", f":{port}")


def test_readme_runs_as_written(tmp_path: Path) -> None:
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    port = free_port()
    log = tmp_path / "up.log"
    env = {
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "EDGEPLANE_PORT": str(port),
        # this tree's code, whatever the directory a block runs in
        "PYTHONPATH": str(README.parent / "src"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }
    prelude = _prelude(sys.executable, log)
    skipped: list[str] = []
    ran = 0
    found = blocks(README.read_text())
    # The files the README writes come first: a reader creates them as they read on.
    for block in found:
        if block.lang == "yaml" and block.skip is None:
            name = block.text.splitlines()[0].lstrip("# ").split()[0]
            (work / name).write_text(block.text)
    try:
        for block in found:
            where = f"README.md:{block.line} ({block.lang})"
            if block.skip is not None:
                skipped.append(f"{where}: {block.skip}")
                continue
            if block.lang == "python":
                script = work / f"readme_{block.line}.py"
                script.write_text(_localize(block.text, port))
                argv = [sys.executable, str(script)]
            elif block.lang == "bash":
                argv = ["bash", "-c", prelude + _localize(block.text, port)]
            else:
                continue
            print(f"--- {where}", flush=True)
            try:
                done = subprocess.run(
                    argv,
                    cwd=work,
                    env=env,
                    input=PASSWORD + "\n",  # what a person types at a prompt
                    capture_output=True,
                    text=True,
                    timeout=BLOCK_TIMEOUT_S,
                    check=False,
                    start_new_session=True,
                )
            except subprocess.TimeoutExpired as exc:
                raise AssertionError(f"{where} did not end in {BLOCK_TIMEOUT_S}s: {exc}") from None
            print(done.stdout, done.stderr, sep="\n", flush=True)
            ran += 1
            assert done.returncode == 0, (
                f"{where} failed (exit {done.returncode}):\n{block.text}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}\n"
                f"up log (tail):\n{_tail(log)}"
            )
    finally:
        _stop_up(home)
    print(f"ran {ran} README blocks; skipped {len(skipped)}:")
    for line in skipped:
        print(f"  {line}")
    assert ran > 0


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stop_up(home: Path) -> None:
    """Stop what the README started and left running (`up`, a worker beside it)."""
    pids = [
        int(line)
        for name in ("up.pid", "bg.pids")
        if (home / name).exists()
        for line in (home / name).read_text().split()
    ]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    for pid in pids:
        wait_until(lambda pid=pid: not _alive(pid), f"process {pid} to stop", timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_skip_markers_are_parsed() -> None:
    text = (
        "intro\n<!-- readme-test: skip (needs three machines) -->\n```bash\nfoo\n```\n"
        "```bash\nbar\n```\n"
    )
    found = blocks(text)
    assert [(b.text, b.skip) for b in found] == [
        ("foo\n", "needs three machines"),
        ("bar\n", None),
    ]
    assert shutil.which("bash")
