"""Help a person reads: metavars like ``N``, ``SECONDS``, ``PATH``, ``KEY=VALUE`` instead
of typer's ``<int range> [x>=0]``, ``<list[str]>`` and ``<bool>``, and the real
default of every option whose value comes from :class:`~edgeplane.config.Settings`
(those options default to None so that flags, then the environment, then the config file
decide; their help would otherwise show no default at all).

Applied once to the whole command tree by :func:`humanize`, so no command has to spell
its metavars by hand and none can drift back to typer's. Typed ``Any``: typer ships its
own copy of click, whose classes are not the ``click`` package's.
"""

from __future__ import annotations

from typing import Any, get_args

from edgeplane.config import Settings

#: Options whose values are ``KEY=VALUE`` pairs.
_PAIRS = frozenset({"env", "secret_env", "label", "labels", "constraint", "set"})


def humanize(command: Any) -> Any:
    """``command`` and every command under it, with human metavars and defaults."""
    for param in command.params:
        _param(param)
    for sub in getattr(command, "commands", {}).values():
        humanize(sub)
    make_help = command.get_help_option

    def help_option(ctx: Any) -> Any:
        option = make_help(ctx)
        if option is not None:  # (a click.Option: it has a metavar)
            option.metavar = ""  # --help is a flag too
        return option

    command.get_help_option = help_option
    return command


def _param(param: Any) -> None:
    if param.param_type_name == "option":
        _defaults(param)
    if param.metavar is not None:
        return
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        param.metavar = ""  # a flag takes no value: nothing to show
        return
    param.metavar = metavar(param)
    if getattr(param, "min", None) is not None or getattr(param, "max", None) is not None:
        # typer adds ``[x>=0]``; a bound worth knowing is in the option's help, in words
        param._get_number_range_help_str = lambda: None


def metavar(param: Any) -> str:
    """The placeholder shown for ``param``'s value."""
    desc = getattr(param, "type_descriptor", None)
    name = (param.name or "value").lower()
    if desc is None:
        return name.upper()
    if desc.is_choice and desc.choices:
        return "|".join(str(getattr(choice, "value", choice)) for choice in desc.choices)
    if name in _PAIRS:
        return "KEY=VALUE"
    annotation = desc.annotation
    if desc.is_list:
        annotation = next(iter(get_args(annotation)), str)
    if annotation is int:
        return "N"
    if annotation is float:
        return "SECONDS" if name.endswith("_s") or name in ("timeout", "time_limit") else "X"
    if desc.is_path:
        return "DIR" if name.endswith("dir") else "PATH"
    if name.endswith("url") or name in ("manager", "broker", "root"):
        return "URL"
    return "TEXT"


def _defaults(option: Any) -> None:
    """An option that defaults to None but is a setting shows the setting's default."""
    if option.default is not None or option.name is None:
        return
    text = getattr(option, "help", None) or ""
    if "default" in text.lower():  # the help says it in its own words
        return
    field = Settings.model_fields.get(option.name)
    if field is None:
        return
    if field.default_factory is not None:
        shown = "~/.edgeplane" if option.name == "data_dir" else None
    else:
        shown = _shown(field.default)
    if shown is None:
        return
    option.help = f"{text} (default: {shown})".strip()


def _shown(value: Any) -> str | None:
    if value is None or value == "" or value == [] or value == {}:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
