"""Dataset name -> builder.  A builder fetches raw files (if any) and prepares Splits."""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gm.config import make_config
from gm.errors import ConfigError


@dataclass(frozen=True)
class DatasetSpec:
    """fetch(raw_dir, **options) downloads/copies raw files into raw_dir (idempotent, verified);
    prepare(raw_dir, seed, **options) -> Splits builds the fixed splits from them.

    ``options`` is the frozen dataclass of prepare's keyword options (e.g. split sizes, from
    params.yaml ``datasets.<name>``), or None if prepare takes none.
    ``optimum_log_likelihood``: the best expected log p(x) in nats per image that any model
    can reach (minus the entropy of the data distribution), where it is known (bars_stripes:
    -log 30), else None; the report shows it as an "optimum" row.
    """

    name: str
    fetch: Callable[..., None]
    prepare: Callable[..., object]
    options: type | None = None
    optimum_log_likelihood: float | None = None

    def check_options(self, params: dict | None) -> object | None:
        """Validate prepare options (unknown key, type, range -> ConfigError naming the field)."""
        where = f"datasets.{self.name}"
        if self.options is None:
            if params:
                raise ConfigError(f"{where}.{next(iter(params))}", "unknown key",
                                  f"dataset {self.name!r} takes no options")
            return None
        return make_config(self.options, params, where)


_DATASETS: dict[str, DatasetSpec] = {}
_loaded = False


def register_dataset(name: str, *, fetch: Callable, prepare: Callable,
                     options: type | None = None,
                     optimum_log_likelihood: float | None = None) -> None:
    _DATASETS[name] = DatasetSpec(name, fetch, prepare, options, optimum_log_likelihood)


def _load_all() -> None:
    global _loaded
    if not _loaded:
        import gm.data as pkg
        for mod in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"gm.data.{mod.name}")
        _loaded = True


def dataset_names() -> list[str]:
    _load_all()
    return sorted(_DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    _load_all()
    if name not in _DATASETS:
        raise ConfigError(f"datasets.{name}", "unknown dataset",
                          "known datasets: " + ", ".join(sorted(_DATASETS)))
    return _DATASETS[name]


def no_fetch(raw_dir: Path, **_) -> None:
    """For datasets generated or shipped inside a package: just create raw_dir."""
    Path(raw_dir).mkdir(parents=True, exist_ok=True)
