"""Evaluation settings: one `evaluate:` block, per-model overrides, declared field ranges."""
import math

import pytest

from conftest import tiny_params
from gm.base import Budget
from gm.config import make_config
from gm.errors import ConfigError
from pipeline import params as P


def with_override(**settings) -> dict:
    p = tiny_params()
    p["models"]["rbm"]["evaluate"] = settings
    return p


def test_model_override_merges_over_the_global_settings():
    p = with_override(ais_betas=7)
    assert P.evaluate_config(P.validate(p), "rbm").ais_betas == 7
    assert P.evaluate_config(p, "rbm").ais_chains == p["evaluate"]["ais_chains"]
    assert P.evaluate_config(p).ais_betas == p["evaluate"]["ais_betas"]
    budget = P.evaluate_config(p, "rbm").budget()
    assert isinstance(budget, Budget) and budget.ais_betas == 7


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["models"]["rbm"].__setitem__("evaluate", {"raise_chains": -1}),
     "models.rbm.evaluate.raise_chains: must be >= 0, got -1"),
    (lambda p: p["models"]["rbm"].__setitem__("evaluate", {"nosuch": 1}),
     "models.rbm.evaluate.nosuch: unknown key"),
    (lambda p: p["evaluate"].__setitem__("parzen_samples", 0),
     "evaluate.parzen_samples: must be >= 1, got 0"),
    (lambda p: p["evaluate"].__setitem__("parzen_sigma", math.inf),
     "evaluate.parzen_sigma: must be a finite number"),
    (lambda p: p["models"]["rbm"]["model"].__setitem__("lr", math.nan),
     "models.rbm.model.lr: must be a finite number"),
    (lambda p: p["models"]["rbm"].pop("model"), "models.rbm.model: missing"),
])
def test_bad_settings_name_their_params_path(edit, message):
    p = tiny_params()
    edit(p)
    with pytest.raises(ConfigError) as err:
        P.validate(p)
    assert str(err.value).startswith(message), str(err.value)


def test_gm_errors_name_only_the_config_field():
    with pytest.raises(ConfigError) as err:
        make_config(Budget, {"ais_chains": 0})
    assert str(err.value).startswith("ais_chains: must be >= 1")


def test_train_settings_exclude_evaluation_and_are_canonical():
    p = with_override(ais_betas=7)
    settings = P.train_settings(p, "rbm", "digits")
    assert "evaluate" not in settings and settings["base"] == "rbm"
    reordered = {k: p["models"]["rbm"][k] for k in reversed(p["models"]["rbm"])}
    q = tiny_params()
    q["models"]["rbm"] = reordered
    assert P.canonical(P.train_settings(q, "rbm", "digits")) == P.canonical(settings)
    assert P.canonical({"b": 1, "a": {"y": 2, "x": 3}}) == P.canonical({"a": {"x": 3, "y": 2}, "b": 1})
