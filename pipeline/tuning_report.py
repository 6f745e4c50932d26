"""The report's "Hyperparameter search (equal budget)" section (issue 15).

For each run (dataset, model) of the report's params that has a tuned file (params ``tuned:``,
written by the tune stage, pipeline/tune.py): its study's objective, trials, per-trial CPU cap,
search space, best validation value, tuning CPU and the tuned values, with a totals row, and a
figure of the best validation value after each trial.  Files are read through
:func:`pipeline.params.read_yaml` (an unreadable one is a one-line ConfigError); a ``study:``
block with missing or malformed entries shows DASH for them.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from pipeline import params as P
from pipeline import plots
from pipeline.tables import DASH

TITLE = "Hyperparameter search (equal budget)"
OBJECTIVE_TEXT = (
    "Each study maximised one objective on the validation split only, never the test split: "
    "likelihood = the mean validation log p(x) in nats per image by the model's own estimator "
    "(at the search's cheaper estimator budget); samples = F(precision, recall) of samples "
    "against the validation images on the classifier's features minus the fraction of "
    "near-duplicate samples, in [-1, 1].")


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _number(v) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _fixed(v, digits: int) -> str:
    x = _number(v)
    return DASH if x is None else f"{x:.{digits}f}"


def value_text(v) -> str:
    """A value compactly: floats to 3 significant digits, lists element by element, DASH for
    a missing one."""
    if v is None:
        return DASH
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value_text(x) for x in v) + "]"
    return str(v)


def studies(params: dict) -> list[dict]:
    """{"dataset", "model", "values": [(field, value)] (train:, then model:), "study"} of each
    run of ``params`` with a tuned file, in params runs order."""
    out = []
    for run in params["runs"]:
        path = P.tuned_path(params, run["dataset"], run["model"])
        if path is None or not path.is_file():
            continue
        block = _dict(P.read_yaml(path))
        out.append({"dataset": run["dataset"], "model": run["model"],
                    "values": [*_dict(block.get("train")).items(),
                               *_dict(block.get("model")).items()],
                    "study": _dict(block.get("study"))})
    return out


def best_text(study: dict) -> str:
    """The best trial's validation value with what makes it up, e.g. '-16.90 nats (exact)' or
    'F 0.82 - dup 0.00 = 0.82 (P 0.85, R 0.79)'."""
    value, details = study.get("best_value"), _dict(study.get("best_details"))
    if _number(value) is None:
        return DASH
    if study.get("objective") == "likelihood":
        how = ", ".join(dict.fromkeys(str(details[k]) for k in ("method", "kind")
                                      if details.get(k)))
        return f"{value:.2f} nats" + (f" ({how})" if how else "")
    if study.get("objective") == "samples" and details:
        return (f"F {_fixed(details.get('f'), 2)} - dup {_fixed(details.get('duplicates'), 2)} "
                f"= {value:.2f} (P {_fixed(details.get('precision'), 2)}, "
                f"R {_fixed(details.get('recall'), 2)})")
    return f"{value:.3f}"


def _studies(n: int) -> str:
    return f"{n} study" if n == 1 else f"{n} studies"


def label(s: dict, several: bool) -> str:
    return f"{s['dataset']}/{s['model']}" if several else s["model"]


def tuning_table(found: list[dict]) -> pd.DataFrame:
    """One row per study of :func:`studies`, and a totals row (trials, tuning CPU)."""
    rows, trials, cpu = [], [], []
    for s in found:
        st = s["study"]
        space = _dict(st.get("space"))
        if _number(st.get("cpu_seconds")) is not None:
            cpu.append(float(st["cpu_seconds"]))
        if isinstance(st.get("trials"), int):
            trials.append(st["trials"])
        rows.append({"dataset": s["dataset"], "model": s["model"],
                     "objective": value_text(st.get("objective")),
                     "trials": value_text(st.get("trials")),
                     "per-trial CPU cap [s]": value_text(st.get("trial_cpu_seconds")),
                     "search space": ", ".join([*_dict(space.get("train")),
                                                *_dict(space.get("model"))]) or DASH,
                     "best validation value": best_text(st),
                     "tuning CPU [s]": _fixed(st.get("cpu_seconds"), 1),
                     "tuned values": ", ".join(f"{k} {value_text(v)}" for k, v in s["values"])
                     or DASH})
    n = len(rows)
    rows.append({"dataset": "total",
                 "model": _studies(n) if len(cpu) == n
                 else f"{len(cpu)} of {_studies(n)} with a recorded CPU",
                 "trials": str(sum(trials)) if trials else DASH,
                 "tuning CPU [s]": f"{sum(cpu):.1f}" if cpu else DASH})
    return pd.DataFrame(rows).fillna("")


def budget_text(found: list[dict], several: bool) -> str:
    """Whether every study had the same trials and per-trial cap: stated, or a warning."""
    differ = []
    for key, what in (("trials", "trials"), ("trial_cpu_seconds", "per-trial CPU cap [s]")):
        seen = {label(s, several): value_text(s["study"].get(key)) for s in found}
        if len(set(seen.values())) > 1 or DASH in seen.values():
            differ.append(f"{what}: " + ", ".join(f"{m} {v}" for m, v in seen.items()))
    if differ:
        return ("Warning: the studies did not all record the same budget (" + "; ".join(differ)
                + "), so this is not an equal-budget comparison.")
    st = found[0]["study"]
    return (f"Every study had the same budget: {value_text(st['trials'])} trials, each trial's "
            f"training stopped at the first epoch end past {value_text(st['trial_cpu_seconds'])}"
            " CPU seconds (configs/search.yaml).")


def best_so_far_frame(found: list[dict], several: bool) -> pd.DataFrame:
    """Tidy rows (panel, objective, trial, best) of each study's best value after each trial
    (NaN before the first finished trial); studies with no finite value are left out."""
    rows = []
    for s in found:
        curve = s["study"].get("best_so_far")
        best = [_number(v) for v in curve] if isinstance(curve, list) else []
        if any(v is not None for v in best):
            rows += [{"panel": label(s, several),
                      "objective": value_text(s["study"].get("objective")),
                      "trial": i, "best": math.nan if v is None else v}
                     for i, v in enumerate(best, start=1)]
    return pd.DataFrame(rows, columns=["panel", "objective", "trial", "best"])


def tuning_blocks(params: dict, figdir: Path) -> list[tuple]:
    """The section's blocks; its figure goes to figdir/tuning_best_so_far.png when a study
    recorded its best values."""
    blocks: list[tuple] = [("h", 2, TITLE)]
    found, folder = studies(params), P.tuned_dir(params)
    if not found:
        why = ("params sets no tuned: folder" if folder is None
               else f"no run of these params has a tuned file in {folder}/")
        return blocks + [("p", f"No hyperparameter search result ({why}): the runs use their "
                               "params.yaml values; `snakemake --cores 8 tune` runs the "
                               "search (configs/search.yaml).")]
    several = len({s["dataset"] for s in found}) > 1
    cpu = [c for s in found if (c := _number(s["study"].get("cpu_seconds"))) is not None]
    text = [budget_text(found, several), OBJECTIVE_TEXT,
            "The test numbers elsewhere in this report come from the default runs, which "
            "train with these tuned values merged over params.yaml models.<model> (files "
            f"{folder}/<dataset>/<model>.yaml).",
            f"Tuning cost: {sum(cpu):.1f} CPU seconds over {_studies(len(cpu))} (the sum over "
            "trials; not in the cost-per-stage table)." if cpu else
            "No study recorded its tuning CPU."]
    tuned = {(s["dataset"], s["model"]) for s in found}
    rest = [f"{r['dataset']}/{r['model']}" for r in params["runs"]
            if (r["dataset"], r["model"]) not in tuned]
    if rest:
        text.append("Runs without a tuned file keep their params.yaml values: "
                    + ", ".join(rest) + ".")
    blocks += [("p", " ".join(text)), ("table", tuning_table(found))]
    frame = best_so_far_frame(found, several)
    if not frame.empty:
        path = plots.save_best_so_far(frame, figdir / "tuning_best_so_far.png")
        blocks.append(("img", path, "hyperparameter search: best validation value so far"))
    return blocks
