"""Load and validate params.yaml before any work starts.

Every problem raises one :class:`gm.errors.ConfigError` whose message starts with the dotted
field name (e.g. ``models.rbm.model.n_hidden: must be >= 1, got 0``), or with the file and
line for what the file itself gets wrong: a key given twice, or a number such as ``1e-3``
that PyYAML (Snakemake, the stages) reads as text and DVC as a float (:func:`read_yaml`).
Numbers must be finite and fit float32 / 64-bit integers; the train stage and the Snakefile
also refuse a model too large for the machine's memory, estimated without allocating it
(:mod:`pipeline.memory`).  :func:`error_line` is the one line a stage prints.

``resources:`` holds the SLURM requests of the train and evaluate jobs (:func:`stage_resources`):
scheduling hints, never inputs, so no stage reads them and no rerun trigger includes them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import yaml

from gm.base import Budget
from gm.config import make_config, prefixed, ranged, require
from gm.data import dataset_names, dataset_spec
from gm.errors import ConfigError
from gm.registry import model_class, model_names

TOP_KEYS = {"seed", "seeds", "device", "datasets", "evaluate", "runs", "models", "resources",
            "report_dir", "tuned"}
TUNED_KEYS = {"train", "model", "study"}   # a tuned file: what it sets, and how it was found
REPORTS = Path("reports")   # the default report; params ``report_dir`` names a folder inside it
TRAIN_KEYS = {"epochs", "batch_size", "checkpoint_every"}
BLOCK_KEYS = ("base", "train", "model", "evaluate")
RESOURCE_STAGES = ("train", "evaluate")          # the rules whose SLURM requests params set
RESOURCE_FIELDS = {                              # field -> (least value, unit and what it becomes)
    "runtime": (1, "minutes of wall time, sbatch -t"),
    "mem_mb": (1, "MB of memory, sbatch --mem"),
    "gpus": (0, "GPUs, sbatch --gpus; 0: a CPU-only job"),
}
# Built-in defaults where params set none (the values the Snakefile hard-coded before issue 17);
# gpus: 1 when device asks for CUDA, else 0 (see stage_resources).
RESOURCE_DEFAULTS = {"train": {"runtime": 120, "mem_mb": 4000},
                     "evaluate": {"runtime": 60, "mem_mb": 4000}}


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(Budget):
    """params.yaml ``evaluate:`` (with a model's ``models.<m>.evaluate:`` merged over it):
    the estimator budget plus sample-metric settings."""

    n_samples: int = ranged(1000, ge=1)     # samples per model for the grid and sample metrics
    n_bootstrap: int = ranged(200, ge=1)    # bootstrap resamples for metric confidence intervals
    metric_images: int = ranged(0, ge=0)
    # ^ at most this many model samples, test images and held-out (reference row) images in
    #   the sample metrics, the first ones of each (0: no cap); their kernel matrices and
    #   bootstrap grow with its square (10,000 images: minutes per model on 2 cores)
    ais_convergence: tuple[int, ...] = ranged((10, 100, 1000), ge=1, each=True)
    # ^ AIS log Z at these numbers of distributions (report figure; [] = off)

    def budget(self) -> Budget:
        return Budget(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Budget)})


def is_int(v) -> bool:
    """An int, not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def mapping(value, field: str) -> dict:
    """``value`` as a mapping (None: empty), else a ConfigError naming ``field``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(field, f"expected a mapping, got {value!r}")
    return value


def validate(params: dict) -> dict:
    """Check every field of ``params``; return it unchanged if valid."""
    if not isinstance(params, dict):
        raise ConfigError("params.yaml", "expected a mapping at the top level")
    _check_numbers(params)
    for key in params:
        require(key in TOP_KEYS, key, "unknown key (known: " + ", ".join(sorted(TOP_KEYS)) + ")")
    for key in ("seed", "seeds", "datasets", "runs", "models"):
        require(key in params, key, "missing (see the default params.yaml)")
    require(is_int(params["seed"]) and params["seed"] >= 0, "seed",
            f"must be a non-negative integer, got {params['seed']!r}")
    seeds = params["seeds"]
    require(isinstance(seeds, list) and len(seeds) > 0
            and all(is_int(s) and s >= 0 for s in seeds), "seeds",
            f"must be a non-empty list of non-negative integers, got {seeds!r}")
    require(len(set(seeds)) == len(seeds), "seeds", f"has duplicates: {seeds}")
    device = params.get("device", "auto")
    require(isinstance(device, str) and (device in ("auto", "cpu", "cuda")
                                         or device.startswith("cuda:")),
            "device", f"must be auto, cpu, cuda or cuda:N, got {device!r}")
    known_ds = dataset_names()
    datasets = mapping(params["datasets"], "datasets")
    for name, opts in datasets.items():
        require(name in known_ds, f"datasets.{name}",
                "unknown dataset (known: " + ", ".join(known_ds) + ")")
        dataset_spec(name).check_options(mapping(opts, f"datasets.{name}"))
    make_config(EvaluateConfig, mapping(params.get("evaluate"), "evaluate"), "evaluate")
    models = mapping(params["models"], "models")
    for name, block in models.items():
        _validate_model_block(name, mapping(block, f"models.{name}"))
        evaluate_config(params, name)
    _validate_resources(params)
    report_dir(params)
    tuned_dir(params)
    runs = params["runs"]
    require(isinstance(runs, list) and len(runs) > 0, "runs",
            "must be a non-empty list of {dataset: D, model: M}")
    seen = set()
    for i, run in enumerate(runs):
        where = f"runs[{i}]"
        require(isinstance(run, dict) and set(run) == {"dataset", "model"}, where,
                f"must be {{dataset: D, model: M}}, got {run!r}")
        require(run["dataset"] in datasets, f"{where}.dataset",
                f"{run['dataset']!r} is not listed under datasets:")
        require(run["model"] in models, f"{where}.model",
                f"{run['model']!r} has no block under models:")
        key = (run["dataset"], run["model"])
        require(key not in seen, where, f"duplicate run {key}")
        seen.add(key)
        _validate_tuned(params, *key)
    return params


def tuned_dir(params: dict) -> Path | None:
    """params ``tuned``: the folder of tuned configurations (configs/tuned in the default
    params.yaml), or None (off).  Not a rerun trigger itself: the values it holds are."""
    value = params.get("tuned")
    if value is None:
        return None
    require(isinstance(value, str) and value and not Path(value).is_absolute()
            and ".." not in Path(value).parts, "tuned",
            f"must be a folder relative to the repository (e.g. configs/tuned) or null, "
            f"got {value!r}")
    return Path(value)


def tuned_path(params: dict, dataset: str, name: str) -> Path | None:
    """The tuned configuration file of run (``dataset``, ``name``): <tuned>/<dataset>/<name>.yaml,
    written by the tune stage (pipeline/tune.py); None when params set no ``tuned`` folder."""
    folder = tuned_dir(params)
    return None if folder is None else folder / dataset / f"{name}.yaml"


def tuned_block(params: dict, dataset: str, name: str) -> dict:
    """``{"train": {...}, "model": {...}}`` that the tune stage chose for run (dataset, name),
    merged over ``models.<name>`` for this dataset's runs only; {} when there is none."""
    path = tuned_path(params, dataset, name)
    if path is None or not path.is_file():
        return {}
    block = read_yaml(path) or {}
    if not isinstance(block, dict):
        raise ConfigError(str(path), "expected a mapping with train: and model:",
                          "rerun `snakemake --cores 8 tune`, or delete the file")
    return {k: block[k] for k in ("train", "model") if block.get(k)}


def _validate_tuned(params: dict, dataset: str, name: str) -> None:
    """A tuned file of a run: known keys, train settings and model fields that build."""
    path = tuned_path(params, dataset, name)
    if path is None or not path.is_file():
        return
    block = read_yaml(path) or {}
    where = str(path)
    require(isinstance(block, dict), where, "expected a mapping with train: and model:")
    for key in block:
        require(key in TUNED_KEYS, f"{where}: {key}",
                "unknown key (known: " + ", ".join(sorted(TUNED_KEYS)) + ")")
    _check_numbers({k: block.get(k) for k in ("train", "model")}, where)
    settings = train_settings(params, name, dataset)
    check_train(mapping(block.get("train"), f"{where}: train"), f"{where}: train")
    try:
        make_config(model_class(settings["base"]).Config, settings["model"])
    except ConfigError as err:
        raise prefixed(err, f"{where}: model") from None


def report_dir(params: dict) -> Path:
    """The folder the report is written to: params ``report_dir``, a relative path inside
    reports/ (e.g. reports/fashion_mnist for a profile's own report, so that it never replaces
    the default one), else reports/.  Not a rerun trigger of any stage but the report."""
    value = params.get("report_dir")
    if value is None:
        return REPORTS
    path = Path(str(value))
    require(isinstance(value, str) and not path.is_absolute() and ".." not in path.parts
            and path.parts and path.parts[0] == REPORTS.name
            and all(p.replace("_", "").replace("-", "").isalnum() for p in path.parts),
            "report_dir", f"must be a folder inside {REPORTS}/ named in letters, digits, _ and "
            f"- (e.g. {REPORTS}/fashion_mnist), got {value!r}")
    return path


FLOAT32_MAX = 3.4028234663852886e38   # the models compute in float32
FLOAT32_TINY = 1.401298464324817e-45  # smallest non-zero float32 (subnormal)


def _check_numbers(value, where: str = "") -> None:
    """Every number in params, wherever it is: a float finite and representable in float32
    (1e300 passes a float64 range check, then overflows to inf in the first float32 product),
    an integer within 64 bits."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_numbers(v, f"{where}[{i}]")
    elif isinstance(value, float):
        require(math.isfinite(value), where, f"must be a finite number, got {value}")
        require(abs(value) <= FLOAT32_MAX, where, f"{value:g} overflows float32, the precision "
                f"the models compute in (largest {FLOAT32_MAX:.4g})")
        require(value == 0 or abs(value) >= FLOAT32_TINY, where,
                f"{value:g} underflows to 0 in float32, the precision the models compute in")
    elif isinstance(value, int) and not isinstance(value, bool):
        require(abs(value) < 2 ** 63, where, f"{value} does not fit in a 64-bit integer")


def check_train(train: dict, where: str) -> None:
    """A train block (params' models.<m>.train, a tuned file's train:): known keys, each a
    positive integer (checkpoint_every may be 0); ``where`` names the block in errors."""
    for key, value in train.items():
        require(key in TRAIN_KEYS, f"{where}.{key}",
                "unknown key (known: " + ", ".join(sorted(TRAIN_KEYS)) + ")")
        require(is_int(value) and value >= (0 if key == "checkpoint_every" else 1),
                f"{where}.{key}", f"must be a positive integer, got {value!r}")


def _validate_model_block(name: str, block: dict) -> None:
    where = f"models.{name}"
    for key in block:
        require(key in BLOCK_KEYS, f"{where}.{key}",
                "unknown key (known: " + ", ".join(sorted(BLOCK_KEYS)) + ")")
    known = model_names()
    if "base" in block:  # a variant: another setting of a registered model, under its own name
        base = block["base"]
        require(name not in known, f"{where}.base",
                f"{name!r} is a registered model; a variant needs a name of its own "
                f"(e.g. {name}_v2)")
        require(isinstance(base, str) and base in known, f"{where}.base",
                f"{base!r} is not a registered model (known: " + ", ".join(known) + ")")
        require(name.replace("_", "").isalnum(), where,
                "a variant name may hold only letters, digits and _")
    else:
        require(name in known, where, "unknown model (known: " + ", ".join(known)
                + "; or define a variant with base: <model>)")
    train = mapping(block.get("train"), f"{where}.train")
    check_train(train, f"{where}.train")
    for key in ("epochs", "batch_size"):
        require(key in train, f"{where}.train.{key}", "missing")
    require("model" in block, f"{where}.model",
            "missing (write model: {} for the defaults; DVC tracks this block)")
    make_config(model_class(block.get("base", name)).Config,
                mapping(block.get("model"), f"{where}.model"), f"{where}.model")
    mapping(block.get("evaluate"), f"{where}.evaluate")


def _validate_stage_resources(value, where: str) -> None:
    """One ``{runtime, mem_mb, gpus}`` mapping (any subset) at params path ``where``."""
    for key, v in mapping(value, where).items():
        require(key in RESOURCE_FIELDS, f"{where}.{key}",
                "unknown key (known: " + ", ".join(sorted(RESOURCE_FIELDS)) + ")")
        least, unit = RESOURCE_FIELDS[key]
        if not (is_int(v) and v >= least):
            raise ConfigError(f"{where}.{key}", f"must be an integer >= {least}, got {v!r}",
                              f"{key}: the number of {unit}")


def _validate_resources(params: dict) -> None:
    """``resources:``: defaults per stage, and ``models.<name>`` entries of run names that have
    a block under ``models:``; then every model's resolved GPU request against ``device``."""
    block = mapping(params.get("resources"), "resources")
    keys = (*RESOURCE_STAGES, "models")
    for key in block:
        require(key in keys, f"resources.{key}", "unknown key (known: " + ", ".join(keys)
                + "; other rules take the profile's default-resources or --set-resources)")
    for stage in RESOURCE_STAGES:
        _validate_stage_resources(block.get(stage), f"resources.{stage}")
    models = params["models"]
    for name, entry in mapping(block.get("models"), "resources.models").items():
        where = f"resources.models.{name}"
        require(name in models, where, f"{name!r} has no block under models:")
        for stage, value in mapping(entry, where).items():
            require(stage in RESOURCE_STAGES, f"{where}.{stage}",
                    "unknown key (known: " + ", ".join(RESOURCE_STAGES) + ")")
            _validate_stage_resources(value, f"{where}.{stage}")
    device = str(params.get("device", "auto"))
    for name in models:
        for stage in RESOURCE_STAGES:
            gpus, where = _resolve_resources(params, name, stage)["gpus"]
            if device == "cpu" and gpus > 0:
                raise ConfigError(where, f"{gpus} GPU(s) requested but device: cpu never uses "
                                  "them", "set device: auto (CUDA when the job has a GPU) or "
                                  "gpus: 0")
            if device.startswith("cuda") and gpus == 0:
                raise ConfigError(where, f"0 GPUs requested but device: {device} trains on "
                                  "CUDA", "set gpus: 1, or device: auto to let a CPU job run")


def _resolve_resources(params: dict, name: str, stage: str) -> dict[str, tuple[int, str]]:
    """field -> (value, params path it came from) for the ``stage`` job of run name ``name``:
    ``resources.models.<name>.<stage>``, else (a variant) ``resources.models.<base>.<stage>``,
    else ``resources.<stage>``, else the built-in default; field by field."""
    block = params.get("resources") or {}
    entries = block.get("models") or {}
    layers = [(f"resources.models.{n}.{stage}", (entries.get(n) or {}).get(stage) or {})
              for n in dict.fromkeys((name, registered_model(params, name)))]
    layers.append((f"resources.{stage}", block.get(stage) or {}))
    cuda = str(params.get("device", "auto")).startswith("cuda")
    builtin = RESOURCE_DEFAULTS[stage] | {"gpus": int(cuda)}
    out = {}
    for field in RESOURCE_FIELDS:
        where, value = next(((w, layer[field]) for w, layer in layers if field in layer),
                            (f"resources.{stage}.{field} (default)", builtin[field]))
        out[field] = (value, where if where.endswith("(default)") else f"{where}.{field}")
    return out


def stage_resources(params: dict, name: str, stage: str) -> dict[str, int]:
    """The SLURM requests of the ``stage`` ("train" or "evaluate") job of run name ``name``:
    ``{"runtime": minutes, "mem_mb": MB, "gpus": n}``, from params ``resources:`` (see
    :func:`_resolve_resources`); defaults: train 120 min, evaluate 60 min, 4000 MB, and one GPU
    exactly when ``device`` is ``cuda``/``cuda:N``.  Scheduling hints only: no stage reads
    them, and neither :func:`train_settings` nor :func:`evaluate_settings` holds them."""
    return {field: value for field, (value, _) in _resolve_resources(params, name, stage).items()}


def registered_model(params: dict, name: str) -> str:
    """The registry name behind the run name ``name``: its ``base:`` for a variant
    (e.g. rbm_cd3 with base: rbm), else ``name`` itself."""
    return params["models"][name].get("base", name)


def merge(base: dict, override: dict) -> dict:
    """``base`` updated by ``override`` the way Snakemake merges ``--configfile``s.

    Mappings merge key by key, recursively; any other value (lists such as ``runs:`` and
    ``seeds:``, scalars) replaces the base's.  Neither argument is modified."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def files(spec: str | Path | list | tuple) -> list[Path]:
    """The params files named by ``spec``: a path, a list of paths, or paths joined by
    ``os.pathsep`` (the form of the ``GM_PARAMS`` environment variable)."""
    if isinstance(spec, (list, tuple)):
        return [Path(p) for item in spec for p in files(item)]
    return [Path(p) for p in str(spec).split(os.pathsep) if p]


# YAML 1.2 (DVC's ruamel) reads these plain scalars as numbers, YAML 1.1 (PyYAML: Snakemake and
# the stages) as text: 1e-3, 1E5, 2.5e3 (1.1 wants a dot and a signed exponent: 1.0e-3)
_NUMBER_12 = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$")
_STR = "tag:yaml.org,2002:str"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml's parser when installed
_MERGE = "tag:yaml.org,2002:merge"


def _yaml11(text: str) -> str:
    """``text`` (a YAML 1.2 number such as 1e-3) spelled so YAML 1.1 reads a float: 1.0e-3."""
    mantissa, exponent = re.split("[eE]", text)
    if "." not in mantissa:
        mantissa += ".0"
    if exponent[0] not in "+-":
        exponent = "+" + exponent
    return f"{mantissa}e{exponent}"


def _check_nodes(node, path: Path, where: str = "", seen: set | None = None) -> None:
    """Refuse what the two runners would read differently: a mapping key given twice
    (PyYAML silently keeps the last, DVC refuses the file) and a plain scalar that is text
    to YAML 1.1 but a number to YAML 1.2.  ``where``: the dotted path of ``node``."""
    seen = set() if seen is None else seen
    if id(node) in seen:               # an alias of a node already checked
        return
    seen.add(id(node))

    def at(n) -> str:
        return f"line {n.start_mark.line + 1}"

    if isinstance(node, yaml.MappingNode):
        first: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                _check_nodes(value_node, path, where, seen)
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            field = f"{where}.{key}" if where else str(key)
            if (key_node.tag, key) in first:
                raise ConfigError(str(path), f"{at(key_node)}: {field} is given twice (first on "
                                  f"{first[(key_node.tag, key)]})",
                                  "keep one: PyYAML (Snakemake, the stages) silently keeps the "
                                  "last, DVC refuses the file")
            first[(key_node.tag, key)] = at(key_node)
            _check_nodes(value_node, path, field, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_nodes(item, path, f"{where}[{i}]", seen)
    elif (isinstance(node, yaml.ScalarNode) and not node.style and node.tag == _STR  # plain
          and _NUMBER_12.match(node.value)):
        raise ConfigError(str(path), f"{at(node)}: {where}: {node.value} is text to PyYAML "
                          "(YAML 1.1: Snakemake, the stages) but a number to DVC (YAML 1.2)",
                          f"write {_yaml11(node.value)}")


def read_yaml(path: str | Path):
    """The YAML document of ``path``, read strictly (see :func:`_check_nodes`): errors are
    ConfigErrors whose field is the file, with the line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(str(path), "file not found", "run from the repository root")
    loader = _Loader(path.read_text())
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(str(path), "not valid YAML: " + " ".join(str(err).split())) from None
    finally:
        loader.dispose()


def _read(path: Path) -> dict:
    params = read_yaml(path)
    if not isinstance(params, dict):
        raise ConfigError(str(path), "expected a mapping at the top level")
    return params


def check_files(paths) -> None:
    """Re-read the params files strictly (duplicate keys, YAML 1.1/1.2 numbers): for the
    Snakefile, whose ``config`` Snakemake loaded with plain PyYAML."""
    for p in files(paths):
        _read(p)


def load(path: str | Path | list | tuple = "params.yaml") -> dict:
    """Read, merge in order (see :func:`merge`) and validate one or more params files.

    ``load(["params.yaml", "configs/paper-cpu.yaml"])`` gives the parameters Snakemake sees
    with ``--configfile configs/paper-cpu.yaml``.  A single file that is not a complete params
    file (an override such as configs/paper-cpu.yaml) fails validation on its missing keys."""
    paths = files(path)
    if not paths:
        raise ConfigError("--params", "no params file given")
    params: dict = {}
    for p in paths:
        params = merge(params, _read(p))
    return validate(params)


def error_line(err: Exception, paths) -> str:
    """The one line a stage or the Snakefile prints for ``err``: ``error: <file>: <problem>
    (<fix>)``; a ConfigError about a field gets the params file(s) before it, one that names
    its file already does not."""
    names = [str(p) for p in files(paths)]
    if isinstance(err, ConfigError) and err.field not in names:
        return f"error: {'+'.join(names)}: {err}"
    return f"error: {err}"


def train_settings(params: dict, model: str, dataset: str) -> dict:
    """What the train stage of run name ``model`` on ``dataset`` depends on: its ``base`` (a
    variant's registered model), ``train:`` and ``model:`` blocks with the run's tuned values
    (:func:`tuned_block`) merged over them field by field; never its ``evaluate:`` overrides."""
    block = params["models"][model] or {}
    tuned = tuned_block(params, dataset, model)
    return {"base": registered_model(params, model),
            "train": (block.get("train") or {}) | tuned.get("train", {}),
            "model": (block.get("model") or {}) | tuned.get("model", {})}


def canonical(value) -> str:
    """``value`` as key-sorted compact JSON: equal values give equal strings whatever the
    order of keys in params.yaml (Snakemake compares a rule's params as given)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def evaluate_settings(params: dict, model: str | None = None) -> dict:
    """The plain ``evaluate:`` settings of run name ``model``: params.yaml ``evaluate:`` with
    ``models.<model>.evaluate:`` merged over it (None: the global settings)."""
    settings = dict(params.get("evaluate") or {})
    if model is not None:
        settings |= (params["models"][model] or {}).get("evaluate") or {}
    return settings


def evaluate_config(params: dict, model: str | None = None) -> EvaluateConfig:
    """The evaluation settings of run name ``model`` (see :func:`evaluate_settings`); an error
    names the params.yaml path the bad value came from."""
    own = ((params["models"][model] or {}).get("evaluate") or {}) if model is not None else {}
    try:
        return make_config(EvaluateConfig, evaluate_settings(params, model))
    except ConfigError as err:
        where = f"models.{model}.evaluate" if err.field.split(".")[0] in own else "evaluate"
        raise prefixed(err, where) from None


def runs(params: dict) -> list[tuple[str, str, int]]:
    """Every (dataset, model, seed) the experiment trains, in params order."""
    return [(r["dataset"], r["model"], s) for r in params["runs"] for s in params["seeds"]]
