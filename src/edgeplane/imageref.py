"""Container image references as tasks name them: ``name[:tag]``, a directory in a worker's
image dir.

Neutral ground: admission refuses a bad reference before a task is stored, and the
container runtime (``runtimes/images.py``) refuses it again on the worker, both with the
same rule, without the control plane importing the runtimes.
"""

from __future__ import annotations

import re

DEFAULT_TAG = "latest"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
NAME_RULE = "a directory name in the worker's image dir, optionally with :tag (no '/' or '..')"


def split_ref(text: str) -> tuple[str, str] | None:
    """``name[:tag]`` as ``(name, tag)``, or None when it is not a plain name in the dir."""
    name, _, tag = text.partition(":")
    tag = tag or DEFAULT_TAG
    if ".." in name or not _NAME.fullmatch(name) or not _TAG.fullmatch(tag):
        return None
    return name, tag
