"""Frozen config dataclasses that reject unknown keys, wrong types and bad ranges.

Every model declares ``Config`` as a frozen dataclass; :func:`make_config` builds it from
plain params (e.g. a ``models.<name>`` block of params.yaml) and raises one
:class:`~gm.errors.ConfigError` naming the field on the first problem.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from gm.errors import ConfigError

_NUMBER = (int, float)


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, (tuple, list)):
            return False
        inner = args[0] if args else Any
        return all(_type_ok(v, inner) for v in value)
    if tp is float:
        return isinstance(value, _NUMBER) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def make_config(cls: type, params: dict | None, where: str) -> Any:
    """Build the frozen dataclass ``cls`` from ``params``; ``where`` prefixes field names.

    Unknown keys and wrong types raise ConfigError; ranges are checked by the
    dataclass's own ``__post_init__`` through :func:`require`.
    """
    params = dict(params or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key, value in params.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}", "unknown key",
                              "known keys: " + ", ".join(sorted(fields)))
        tp = hints[key]
        if not _type_ok(value, tp):
            raise ConfigError(f"{where}.{key}", f"expected {_type_name(tp)}, got {value!r}")
        if typing.get_origin(tp) is tuple and isinstance(value, list):
            params[key] = tuple(value)
        elif tp is float and isinstance(value, int):
            params[key] = float(value)
    try:
        return cls(**params)
    except ConfigError as err:
        raise ConfigError(f"{where}.{err.field}", str(err).split(": ", 1)[1]) from None


def require(ok: bool, field: str, problem: str) -> None:
    """Raise ConfigError(field, problem) unless ``ok`` (use in ``__post_init__``)."""
    if not ok:
        raise ConfigError(field, problem)


def config_dict(config: Any) -> dict:
    """Plain dict of a config dataclass (tuples become lists), e.g. for MLflow params."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(config).items()}
