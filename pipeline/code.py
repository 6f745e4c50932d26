"""Stage code: code is an input.  The source files a stage runs for a model, and their hashes.

    python -m pipeline.code --stage train --model M      # writes results/code/M.train.json
    python -m pipeline.code --stage evaluate --model M   # writes results/code/M.evaluate.json
    python -m pipeline.code --stage prepare --dataset D  # writes results/code/D.prepare.json
    python -m pipeline.code --stage classifier           # writes results/code/classifier.json
    python -m pipeline.code --stage report               # writes results/code/report.json

A stage's files are the transitive closure of the ``import`` statements (read from the source,
never executed) of ``pipeline/<stage>.py`` and, for train and evaluate, of the file that
registers the model (``@register("<name>")``; a variant's ``base:``), and for prepare of the file
that registers the dataset (``register_dataset("<name>", ...)``), within the ``gm`` and
``pipeline`` packages, with the ``__init__.py`` of every package on the way.  Models and datasets
that the registries import by name at run time are not edges, so editing one model's file changes
only its own fingerprints.  The stages depend on their fingerprint file; Snakemake reruns this
stage when one of the files is newer (its inputs), DVC at every ``dvc repro``
(``always_changed``) and then reruns only the stages whose fingerprint changed.  Torch-free on
purpose: it takes a tenth of a second.
"""
from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

PACKAGES = ("gm", "pipeline")
STAGES = ("train", "evaluate", "prepare", "classifier", "report")
PER_MODEL, PER_DATASET = ("train", "evaluate"), ("prepare",)
OUT = Path("results/code")


@functools.cache
def package_root(package: str) -> Path:
    """The folder holding ``package`` as Python would import it (found, not imported: no torch)."""
    spec = importlib.util.find_spec(package)
    return Path(spec.submodule_search_locations[0]).resolve().parent


def module_file(module: str) -> Path | None:
    """The source file of dotted ``module`` in gm or pipeline, or None (a third-party one)."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = package_root(module.split(".")[0]).joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _package_of(path: Path) -> str:
    for package in PACKAGES:
        if path.is_relative_to(package_root(package) / package):
            return package
    raise ValueError(f"{path} is not in {PACKAGES}")


def _module_name(path: Path) -> str:
    parts = path.relative_to(package_root(_package_of(path))).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def imported_files(path: Path) -> frozenset[Path]:
    """Repository files that ``path`` imports (any ``import``, also inside functions), with the
    ``__init__.py`` of each package on the way."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)   # submodules imported by name
    files = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):                        # packages on the way
            if (f := module_file(".".join(parts[:i]))) is not None:
                files.add(f)
    return frozenset(files - {path})


def closure(starts: list[Path]) -> list[Path]:
    """Every repository file reachable from ``starts`` through imports, sorted."""
    seen: set[Path] = set()
    todo = list(starts)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imported_files(path))
    return sorted(seen)


@functools.cache
def registrations() -> dict[str, Path]:
    """Registered model name -> the file whose class carries ``@register("<name>")``."""
    found = {}
    for path in sorted((package_root("gm") / "gm" / "models").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for deco in getattr(node, "decorator_list", []):
                if (isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "register"
                        and deco.args and isinstance(deco.args[0], ast.Constant)):
                    found[deco.args[0].value] = path
    return found


@functools.cache
def dataset_registrations() -> dict[str, Path]:
    """Dataset name -> the file under gm/data/ that calls ``register_dataset("<name>", ...)``."""
    found = {}
    for path in sorted((package_root("gm") / "gm" / "data").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_dataset"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                found[node.args[0].value] = path
    return found


def stage_paths(stage: str, registered: str | None = None,
                dataset: str | None = None) -> list[Path]:
    """The source files that ``stage`` runs (for model ``registered``, or dataset ``dataset``)."""
    starts = [package_root("pipeline") / "pipeline" / f"{stage}.py"]
    if registered is not None:
        if registered not in registrations():
            raise SystemExit(f"error: no file registers model {registered!r} under gm/models/")
        starts.append(registrations()[registered])
    if dataset is not None:
        if dataset not in dataset_registrations():
            raise SystemExit(f"error: no file registers dataset {dataset!r} under gm/data/")
        starts.append(dataset_registrations()[dataset])
    return closure(starts)


def stage_files(stage: str, registered: str | None = None,
                dataset: str | None = None) -> list[str]:
    """:func:`stage_paths` as Snakemake inputs: relative below the working directory,
    absolute elsewhere (an installed gm)."""
    cwd = Path.cwd().resolve()
    return [str(p.relative_to(cwd)) if p.is_relative_to(cwd) else str(p)
            for p in stage_paths(stage, registered, dataset)]


def fingerprint(paths: list[Path]) -> dict:
    """{"files": {"<package>/<path>": sha256 of its bytes}, "sha256": hash of them all}."""
    hashes = {str(p.relative_to(package_root(_package_of(p)))):
              hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    return {"files": hashes,
            "sha256": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()}


def registered_model(params_files: list[str], run_name: str) -> str:
    """The registered model behind run name ``run_name``: the last ``models.<run>.base`` in
    the params files (merged in order, as the stages merge them), else the name itself."""
    import yaml
    base = run_name
    for f in params_files:
        block = ((yaml.safe_load(Path(f).read_text()) or {}).get("models") or {}).get(run_name)
        if isinstance(block, dict) and "base" in block:
            base = block["base"]
    return base


def tuned_hashes(params_files: list[str], run_name: str) -> dict[str, str]:
    """dataset -> sha256 of the ``train:`` and ``model:`` values of run ``run_name``'s tuned file
    (<params tuned>/<dataset>/<run>.yaml, see pipeline.params.tuned_block) where one exists.
    The train stage's fingerprint file carries them, so that ``dvc repro`` (code stages
    always run there) retrains exactly the runs whose tuned values changed."""
    import yaml
    merged: dict = {}
    for f in params_files:
        merged |= yaml.safe_load(Path(f).read_text()) or {}   # top level: as the runners merge
    if not merged.get("tuned"):
        return {}
    out = {}
    for ds in dict.fromkeys(r.get("dataset") for r in merged.get("runs") or []
                            if isinstance(r, dict) and r.get("model") == run_name):
        path = Path(merged["tuned"]) / str(ds) / f"{run_name}.yaml"
        if path.is_file():
            block = yaml.safe_load(path.read_text()) or {}
            values = {k: block.get(k) for k in ("train", "model")} if isinstance(block, dict) else block
            out[str(ds)] = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return out


def output_path(stage: str, name: str | None) -> Path:
    """results/code/<model or dataset>.<stage>.json, or <stage>.json for a stage of neither."""
    return OUT / (f"{name}.{stage}.json" if name else f"{stage}.json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", required=True, choices=STAGES)
    ap.add_argument("--model", help="run name (train and evaluate)")
    ap.add_argument("--dataset", help="dataset name (prepare)")
    ap.add_argument("--params", nargs="+",
                    default=[p for p in (os.environ.get("GM_PARAMS") or "params.yaml").split(os.pathsep) if p])
    args = ap.parse_args(argv)
    for flag, stages in (("model", PER_MODEL), ("dataset", PER_DATASET)):
        if (getattr(args, flag) is None) == (args.stage in stages):
            print(f"error: --{flag} is required for {' and '.join(stages)} and for no other "
                  f"stage", file=sys.stderr)
            return 2
    registered = registered_model(args.params, args.model) if args.model else None
    record = {"stage": args.stage, "model": args.model, "registered": registered,
              **({"dataset": args.dataset} if args.dataset else {}),
              **fingerprint(stage_paths(args.stage, registered, args.dataset))}
    if args.stage == "train":   # DVC cannot name a file that may not exist as a param: this
        record["tuned"] = tuned_hashes(args.params, args.model)   # file changes instead
    out = output_path(args.stage, args.model or args.dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
