"""The Snakefile's check of its configuration, before any job starts: the params files, their
values, and the memory of every run."""
from __future__ import annotations

import sys

from gm.errors import ConfigError
from pipeline.memory import check_memory
from pipeline.params import check_files, error_line, validate


def check_config(config: dict, paths, *, memory: bool = True) -> None:
    """The Snakefile's check before anything runs: its params files re-read strictly
    (:func:`check_files`: Snakemake loaded ``config`` with plain PyYAML), ``config`` validated,
    and (``memory``) every run's memory estimated (:func:`pipeline.memory.check_memory`).
    A problem prints one line, ``error: <file>: <problem> (<fix>)``, and exits with status 2,
    where an exception would make Snakemake print a traceback."""
    try:
        check_files(paths)
        validate(config)
        if memory:
            check_memory(config)
    except ConfigError as err:
        print(error_line(err, paths), file=sys.stderr)
        raise SystemExit(2) from None
