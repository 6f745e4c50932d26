"""Frozen config dataclasses that reject unknown keys, wrong types and bad ranges.

Every model declares ``Config`` as a frozen dataclass deriving from :class:`Checked`; a field's
range is declared once, on the field, with :func:`ranged` (e.g. ``lr: float = ranged(0.05,
gt=0)``), and checked when the dataclass is built, together with finiteness of every float.
:func:`make_config` builds a config from plain params (e.g. a ``models.<name>.model`` block)
and raises one :class:`~gm.errors.ConfigError` naming the field on the first problem; gm knows
only the field names, the pipeline prefixes the params.yaml path.
"""
from __future__ import annotations

import dataclasses
import math
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


_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def ranged(default: Any, *, ge=None, gt=None, le=None, lt=None, each: bool = False) -> Any:
    """A dataclass field with its allowed range, e.g. ``ranged(0.5, ge=0, lt=1)``.

    ``each=True``: the bounds apply to every element of a tuple field."""
    bounds = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt).items() if v is not None}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple default for a sequence field")
    return dataclasses.field(default=default, metadata={"bounds": bounds, "each": each})


def _check_value(name: str, value: Any, bounds: dict) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value}")
    if value is None or isinstance(value, bool) or not isinstance(value, _NUMBER):
        return
    for key, bound in bounds.items():
        op, ok = _BOUNDS[key]
        if not ok(value, bound):
            raise ConfigError(name, f"must be {op} {bound}, got {value}")


def _declared(cls: type, name: str) -> dict:
    """The :func:`ranged` metadata of field ``name``, from the nearest class in the MRO that
    declared it, so a subclass may change a default (``lr: float = 0.1``) and keep the range."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and "bounds" in f.metadata:
            return f.metadata
    return {}


def check_fields(config: Any) -> None:
    """Check every field of dataclass ``config`` against its declared :func:`ranged` bounds;
    floats (and float elements of tuples) must be finite."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        meta = _declared(type(config), f.name)
        bounds = meta.get("bounds", {})
        if isinstance(value, (tuple, list)):
            for v in value:
                _check_value(f.name, v, bounds if meta.get("each") else {})
        else:
            _check_value(f.name, value, bounds)


@dataclasses.dataclass(frozen=True)
class Checked:
    """Base of config dataclasses: fields declared with :func:`ranged` are checked on
    construction.  Cross-field rules go in a subclass ``__post_init__`` that calls
    ``super().__post_init__()`` first."""

    def __post_init__(self):
        check_fields(self)


def make_config(cls: type, params: dict | None, where: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from ``params``; ``where`` (e.g. the params.yaml
    path of the block, given by the pipeline) prefixes field names in errors.

    Unknown keys and wrong types raise ConfigError; ranges are checked by the
    dataclass's own ``__post_init__`` through :func:`require`.
    """
    params = dict(params or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key, value in params.items():
        if key not in fields:
            raise ConfigError(_join(where, key), "unknown key",
                              "known keys: " + ", ".join(sorted(fields)))
        tp = hints[key]
        if not _type_ok(value, tp):
            raise ConfigError(_join(where, key), f"expected {_type_name(tp)}, got {value!r}")
        if typing.get_origin(tp) is tuple and isinstance(value, list):
            params[key] = tuple(value)
        elif tp is float and isinstance(value, int):
            params[key] = float(value)
    try:
        return cls(**params)
    except ConfigError as err:
        raise prefixed(err, where) from None


def _join(where: str, field: str) -> str:
    return f"{where}.{field}" if where else field


def prefixed(err: ConfigError, where: str) -> ConfigError:
    """``err`` with ``where`` (e.g. ``models.rbm.model``) put before its field name."""
    if not where:
        return err
    return ConfigError(_join(where, err.field), str(err).split(": ", 1)[1])


def require(ok: bool, field: str, problem: str) -> None:
    """Raise ConfigError(field, problem) unless ``ok`` (use in ``__post_init__``)."""
    if not ok:
        raise ConfigError(field, problem)


def config_dict(config: Any) -> dict:
    """Plain dict of a config dataclass (tuples become lists), e.g. for MLflow params."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(config).items()}
