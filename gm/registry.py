"""Name -> model class.  ``@register("rbm")`` on a GenerativeModel subclass adds it."""
from __future__ import annotations

import importlib
import pkgutil

from gm.config import make_config
from gm.errors import ConfigError

_MODELS: dict[str, type] = {}
_loaded = False


def register(name: str):
    """Class decorator: make the model buildable as ``gm.build(name, ...)``."""

    def deco(cls):
        if name in _MODELS and _MODELS[name] is not cls:
            raise RuntimeError(f"model name {name!r} registered twice")
        cls.name = name
        _MODELS[name] = cls
        return cls

    return deco


def _load_all() -> None:
    """Import every module of gm.models and its family packages once, so their decorators run."""
    global _loaded
    if _loaded:
        return
    import gm.models as pkg
    for mod in pkgutil.walk_packages(pkg.__path__, "gm.models."):
        importlib.import_module(mod.name)
    _loaded = True


def model_names() -> list[str]:
    _load_all()
    return sorted(_MODELS)


def model_class(name: str) -> type:
    _load_all()
    if name not in _MODELS:
        raise ConfigError("model", f"unknown model {name!r}",
                          "known models: " + ", ".join(sorted(_MODELS)))
    return _MODELS[name]


def build(name: str, data_dim: int, **hparams):
    """Build model ``name`` for ``data_dim``-dimensional data from its hyperparameters
    (errors name the config field; the pipeline adds the params.yaml path)."""
    cls = model_class(name)
    config = make_config(cls.Config, hparams)
    return cls(data_dim, config)
