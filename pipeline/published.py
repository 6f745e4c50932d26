"""Published results the report sets beside ours: configs/published.csv as data.

Columns: dataset, model (the run name: a registered model or a variant of configs/paper.yaml
such as rbm_cd3; rows of settings we do not run, e.g. vae_2layer, match nothing), setting
(architecture / training in words), metric (``test_log_likelihood``: mean log p(x) per test example in nats, NOT negated;
``parzen_log_likelihood``: the Parzen-window proxy of Goodfellow et al. 2014), value, stderr
(empty when the paper gives none), kind (one of :data:`gm.base.KINDS`, the vocabulary of
:class:`gm.base.LogLikelihood`), source (paper, venue, table).
"""
from __future__ import annotations

import csv
import math
from functools import lru_cache
from pathlib import Path

from gm.base import KINDS

TABLE = Path(__file__).resolve().parents[1] / "configs" / "published.csv"
COLUMNS = ("dataset", "model", "setting", "metric", "value", "stderr", "kind", "source")
METRICS = ("test_log_likelihood", "parzen_log_likelihood")


class PublishedTableError(ValueError):
    """configs/published.csv is malformed; the message names the line and the field."""


def _row(line: int, raw: dict) -> dict:
    def bad(field, why):
        return PublishedTableError(f"{TABLE.name} line {line}: {field}: {why}")
    row = {k: (raw.get(k) or "").strip() for k in COLUMNS}
    for k in ("dataset", "model", "setting", "source"):
        if not row[k]:
            raise bad(k, "empty")
    if row["kind"] not in KINDS:
        raise bad("kind", f"{row['kind']!r} is not one of {', '.join(KINDS)}")
    if row["metric"] not in METRICS:
        raise bad("metric", f"{row['metric']!r} is not one of {', '.join(METRICS)}")
    if (row["kind"] == "proxy") != (row["metric"] == "parzen_log_likelihood"):
        raise bad("kind", "Parzen numbers, and only they, are of kind proxy")
    for k in ("value", "stderr"):
        if row[k] == "" and k == "stderr":
            row[k] = None
            continue
        try:
            row[k] = float(row[k])
        except ValueError:
            raise bad(k, f"not a number: {row[k]!r}") from None
        if not math.isfinite(row[k]):
            raise bad(k, "not finite")
    if row["stderr"] is not None and row["stderr"] < 0:
        raise bad("stderr", "negative")
    if row["metric"] == "test_log_likelihood" and row["value"] > 0:
        raise bad("value", "a log-likelihood of binary images is <= 0 (values are NOT negated)")
    return row


@lru_cache(maxsize=4)
def load(path: Path = TABLE) -> tuple[dict, ...]:
    """Every row of the table, validated: value/stderr as floats (stderr None when absent)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise PublishedTableError(f"{path.name}: columns {reader.fieldnames}, "
                                      f"expected {list(COLUMNS)}")
        return tuple(_row(i, raw) for i, raw in enumerate(reader, start=2))


def published_rows(dataset: str, model: str, path: Path = TABLE) -> list[dict]:
    """The published results for ``model`` on ``dataset`` (possibly none), in table order."""
    return [dict(r) for r in load(Path(path)) if r["dataset"] == dataset and r["model"] == model]
