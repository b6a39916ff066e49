"""Option values of plain types converted without pydantic (start-up of every command).

typer (0.2x) converts each option's value through a pydantic ``TypeAdapter``: the first command
run imports pydantic and its plugin loader and builds one schema per option, about 0.15 s of
``psfkit find`` on a small frame.  psfkit's options are plain: text, numbers and paths, alone,
optional or repeated.  :func:`install` gives those a converter of their own, made of typer's own
rules (a path goes through typer's ``coerce_cli_path`` checks; a value is passed through where
typer's adapter would return it unchanged), and hands anything else to typer: a value that is not
a plain number (``--threshold abc``, ``--threshold 1_0``) is converted, or refused with typer's
own message, by typer's pydantic adapter, built then.  When typer's internals are not the ones
known here (another version), nothing is changed.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["install"]

_FLOAT = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
_INT = re.compile(r"-?\d+")


class _Fallback(Exception):
    """The value is not a plain one: typer's own adapter converts it (or says what is wrong)."""


def _number(kind: type) -> Callable[[Any], Any]:
    pattern = _FLOAT if kind is float else _INT

    def convert(value: Any) -> Any:
        if isinstance(value, kind) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and pattern.fullmatch(value):
            return kind(value)
        raise _Fallback

    return convert


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Fallback


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _Fallback


def _plain(annotation: Any) -> tuple[Callable[[Any], Any] | None, bool]:
    """(converter of one value, repeated) for a plain annotation, or (None, False)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _plain(args[0]) if len(args) == 1 else (None, False)
    if origin is list:
        args = typing.get_args(annotation)
        inner, repeated = _plain(args[0]) if len(args) == 1 else (None, True)
        return (inner, True) if inner is not None and not repeated else (None, False)
    if annotation in (float, int):
        return _number(annotation), False
    if annotation is str:
        return _text, False
    if annotation is bool:
        return _flag, False
    if annotation is Path:
        return Path, False
    return None, False


def install() -> bool:
    """Convert plain options without pydantic (see the module's docstring); True when installed.

    Examples
    --------
    >>> install() in (True, False)
    True
    """
    try:
        from typer import core
        from typer._coercion import RuntimeParam, build_runtime_param
        from typer._param_types import coerce_cli_path
    except ImportError:  # pragma: no cover - another typer
        return False
    if getattr(core, "build_runtime_param", None) is not build_runtime_param:
        return getattr(core.build_runtime_param, "psfkit_plain", False)
    if not hasattr(RuntimeParam, "_coerce_value"):  # pragma: no cover - another typer
        return False

    class PlainRuntimeParam(RuntimeParam):
        """typer's RuntimeParam for a plain option; anything unusual goes to typer's own."""

        def __init__(self, descriptor: Any, convert: Callable[[Any], Any], repeated: bool) -> None:
            object.__setattr__(self, "parameter_info", descriptor.parameter_info)
            object.__setattr__(self, "annotation", descriptor.annotation)
            object.__setattr__(self, "_descriptor", descriptor)
            object.__setattr__(self, "_convert", convert)
            object.__setattr__(self, "_repeated", repeated)
            object.__setattr__(self, "_typer", None)

        def _one(self, value: Any, param: Any, ctx: Any) -> Any:
            if self._convert is Path:
                if not isinstance(value, (str, Path)):
                    raise _Fallback
                return coerce_cli_path(Path(value), self.parameter_info, path_type=Path, param=param, ctx=ctx)
            return self._convert(value)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                if self._repeated:
                    if not isinstance(value, (list, tuple)):
                        raise _Fallback
                    return [self._one(v, param, ctx) for v in value]
                return self._one(value, param, ctx)
            except _Fallback:
                if self._typer is None:
                    object.__setattr__(self, "_typer", build_runtime_param(self._descriptor))
                return self._typer._coerce_value(value, param=param, ctx=ctx)

    def plain_runtime_param(descriptor: Any) -> Any:
        info = descriptor.parameter_info
        convert, repeated = _plain(descriptor.annotation)
        unusual = (getattr(descriptor, "file_annotation", None) is not None
                   or any(getattr(info, name, None) is not None for name in ("parser", "click_type", "min", "max"))
                   or getattr(info, "clamp", False)
                   or (convert is Path and getattr(info, "path_type", None) not in (None, Path)))
        if convert is None or unusual:
            return build_runtime_param(descriptor)
        return PlainRuntimeParam(descriptor, convert, repeated)

    plain_runtime_param.psfkit_plain = True  # type: ignore[attr-defined]
    core.build_runtime_param = plain_runtime_param
    return True
