"""The one YAML loader: PyYAML's safe loader with bounds on size, depth and aliases.

YAML aliases (``*name``) repeat a whole subtree by reference: a 556-byte document of nine
nested aliases stands for a billion values, which the safe loader builds in no time as
shared objects and everything after it (validation, JSON) expands: 89 s and 1.9 GB on the
server, a crash in the CLI. This loader counts every value as it would be once aliases are
expanded and stops at the first one past the bound, before anything is built; it also
refuses an alias inside its own anchor (a cycle) and nesting past the bound (PyYAML
composes recursively). Every refusal is an :class:`Invalid` with where it is: a 422 at
the API, exit code 2 in the CLI. Bounds: ``edgeplane.model.bounds`` (docs/limits.md).
"""

from __future__ import annotations

import contextlib
from functools import cache
from typing import Any

from edgeplane.errors import Invalid
from edgeplane.limits import MAX_DEPTH, MAX_NODES, MAX_YAML_ALIASES, MAX_YAML_BYTES

#: Nesting a whole document may have: a free-form value's own depth below a few levels of
#: the spec around it (``services[0].metadata``).
MAX_YAML_DEPTH = MAX_DEPTH + 8
#: Values of a whole document once its aliases are expanded (a spec holds many tasks).
MAX_YAML_VALUES = 10 * MAX_NODES


class _Refused(Exception):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def load(text: str | bytes, where: str = "YAML", *, libyaml: bool = True) -> Any:
    """The document in ``text``; ``where`` starts every error message (a file name)."""
    import yaml  # here: importing it costs every process 0.7 MB of RSS

    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_YAML_BYTES:
        raise Invalid(
            f"{where}: {size} bytes of YAML is over the {MAX_YAML_BYTES // 1024} KiB limit "
            "(use JSON for bigger documents)",
            field="body",
        )
    loader = _loader(libyaml)(text)
    try:
        return loader.get_single_data()
    except _Refused as exc:
        at = f" at line {exc.line + 1}" if exc.line is not None else ""
        raise Invalid(f"{where}: refused{at}: {exc.message}", field="body") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise Invalid(
            f"{where}: bad YAML{at}: {exc.problem or exc.context}", field="body"
        ) from None
    except yaml.YAMLError as exc:
        raise Invalid(f"{where}: bad YAML: {exc}", field="body") from None
    finally:
        loader.dispose()


@cache
def _loader(libyaml: bool = True) -> Any:
    """The loader class: PyYAML's composer (which the bounds hook into) over libyaml's
    parser, four times faster than PyYAML's own, unless ``libyaml`` is off or missing."""
    import yaml
    from yaml.composer import Composer
    from yaml.constructor import SafeConstructor
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.resolver import Resolver
    from yaml.scanner import Scanner

    class PyParser(Reader, Scanner, Parser):
        def __init__(self, stream: str | bytes) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)

    parser: Any = PyParser
    if libyaml:
        with contextlib.suppress(ImportError):  # PyYAML built without libyaml
            from yaml._yaml import CParser

            parser = CParser

    class BoundedLoader(Composer, parser, SafeConstructor, Resolver):  # type: ignore[misc]
        def __init__(self, stream: str | bytes) -> None:
            parser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self.values = 0
            self.aliases = 0
            self.depth = 0
            #: expanded size of each anchored subtree, and the anchors still open
            self.sizes: dict[str, int] = {}
            self.open: set[str] = set()

        def count(self, values: int, event: Any) -> None:
            self.values += values
            if self.values > MAX_YAML_VALUES:
                raise _Refused(
                    f"more than {MAX_YAML_VALUES} values once aliases are expanded",
                    _line(event),
                )

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise _Refused(f"more than {MAX_YAML_ALIASES} aliases", _line(event))
                if event.anchor in self.open:
                    raise _Refused(f"alias *{event.anchor} inside its own anchor", _line(event))
                node = super().compose_node(parent, index)  # an unknown anchor raises here
                self.count(self.sizes.get(event.anchor or "", 1), event)
                return node
            if self.depth >= MAX_YAML_DEPTH:
                raise _Refused(f"nested deeper than {MAX_YAML_DEPTH} levels", _line(event))
            if isinstance(event, yaml.ScalarEvent) and not event.value.isascii():
                try:
                    event.value.encode("utf-8")
                except UnicodeEncodeError:
                    raise _Refused("a string that is not valid Unicode", _line(event)) from None
            anchor = getattr(event, "anchor", None)
            start = self.values
            self.count(1, event)
            self.depth += 1
            if anchor:
                self.open.add(anchor)
            try:
                node = super().compose_node(parent, index)
            finally:
                self.depth -= 1
                if anchor:
                    self.open.discard(anchor)
            if anchor:
                self.sizes[anchor] = self.values - start
            return node

    return BoundedLoader


def _line(event: Any) -> int | None:
    mark = getattr(event, "start_mark", None)
    return None if mark is None else int(mark.line)
