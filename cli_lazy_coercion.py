"""Command-line start-up: typer's per-option coercion built only for options that receive a value.

Recent typer releases (those with ``typer.core._TyperParameter.get_runtime_param``) coerce every option's value,
given or not, through a pydantic ``TypeAdapter`` built for that option on first use: importing pydantic and
building ~50 adapters for `gpuhours estimate`'s scenario options costs about a quarter of a second, most of it
for options left unset, whose value is None whatever the adapter. ``install`` defers the adapter until a value
arrives that needs it:

- None (an option left unset): typer's own missing-value result, None (or () for a multi-value option), exactly
  what its ``RuntimeParam.coerce`` returns before it consults the adapter;
- the option's own default when it is a plain int, float, str or bool of exactly the annotated type and the
  option has no parser, range or clamp: returned as is (an adapter for those types returns such a value
  unchanged);
- anything else (every value typed on the command line, an environment variable, a file, a path): typer's own
  coercion, built and kept on the option as typer would.

Older typer releases (click parameter types, no pydantic) have nothing to defer: ``install`` leaves them alone.
This leans on typer's private attributes; where one is missing the option falls back to typer's own coercion.
"""

from __future__ import annotations

_PLAIN = (int, float, str, bool)


class _Deferred:
    """Stands in for an option's runtime coercion until a value needs the real one."""

    __slots__ = ("_build",)

    def __init__(self, build) -> None:
        self._build = build

    def coerce(self, value, param, ctx):
        try:
            if value is None:
                return () if (param.multiple or param.nargs == -1) else None
            if _is_plain_default(value, param, ctx):
                return value
        except AttributeError:  # a typer whose private attributes differ: take its own coercion
            pass
        return self._build().coerce(value, param=param, ctx=ctx)


def _is_plain_default(value, param, ctx) -> bool:
    info = param.type_descriptor.parameter_info
    if type(value) not in _PLAIN or param.type_descriptor.annotation is not type(value):
        return False
    if any(getattr(info, attr, None) not in (None, False) for attr in ("parser", "min", "max", "clamp")):
        return False
    source = ctx.get_parameter_source(param.name) if param.name else None
    return getattr(source, "name", None) == "DEFAULT"


def install() -> bool:
    """Defer typer's per-option coercion (see the module docstring); True when this typer has it to defer."""
    try:
        from typer.core import _TyperParameter
    except ImportError:
        return False
    original = getattr(_TyperParameter, "get_runtime_param", None)
    if original is None or getattr(original, "_gpuhours_deferred", False):
        return original is not None

    def get_runtime_param(self):
        if getattr(self, "_runtime_param", None) is not None:
            return self._runtime_param
        return _Deferred(lambda: original(self))  # original builds typer's coercion and keeps it on the option

    get_runtime_param._gpuhours_deferred = True
    _TyperParameter.get_runtime_param = get_runtime_param
    return True
