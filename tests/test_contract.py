"""The model contract, checked for every registered model (``gm.model_names()``).

A model registered with ``@register`` is covered here without editing this file: it runs with
its default config unless ``TINY`` gives it smaller settings.  For each model (and each extra
case in ``VARIANTS``):

- ``fit_step`` on a minibatch returns finite float diagnostics and updates the model;
- the class declares its ``progress`` curve (``gm.base.Curve``), a metric that training
  actually logs (its per-epoch ``fit_step`` means or ``end_epoch`` output), not a schedule;
- ``sample(n)`` is (n, data_dim), in the data range [0, 1] (binary models: exactly 0/1 unless
  their samples are pixel means), and a function of the generator alone (not the global RNG);
- ``log_likelihood`` returns a ``LogLikelihood`` of a kind in ``gm.base.KINDS`` with finite
  (n,) values, both where the budget lets it enumerate and where it forces the estimators;
  ``validation_estimates`` likewise;
- a checkpoint written and read by the pipeline's own code (pipeline/checkpoint.py) gives a
  model with identical log-likelihoods and samples for the same generator;
- exact resume: k epochs, checkpoint (model, optimisers, generator), restore under another
  global seed, m more epochs == k + m epochs uninterrupted, bit for bit (parameters, buffers,
  optimiser state, per-epoch metrics, samples);
- the named hooks: ``prepare_evaluation`` accepts validation data, ``annealing_path()`` is None
  or a usable AIS path, ``exact_log_z(budget)`` is None or finite, None when the budget allows
  no enumeration, and AIS along the path agrees with it;
- the config: a ``gm.config.Checked`` dataclass without evaluation settings (they live in
  ``gm.base.Budget``), whose declared ranges are enforced with errors naming only the field.

Data are the real small datasets: bars_stripes (4x4, binary), digits (8x8, grey levels in
[0, 1] for real-valued models) and bouncing_balls (binary frame sequences for sequence models).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from types import SimpleNamespace

import pytest
import torch

import gm
from gm.base import KINDS, Budget, Curve, EitherView, LogLikelihood
from gm.config import Checked
from gm.data import dataset_spec
from gm.errors import ConfigError
from gm.estimators.ais import ais_log_z, beta_schedule
from gm.estimators.exact import binary_states
from pipeline import checkpoint
from pipeline.train import train_model

# Small settings per model: only fields that shape the model and its training (the
# evaluation settings are the budgets below).  A model missing here runs with its defaults.
TINY: dict[str, dict] = {
    # energy-based
    "bm": {"sample_sweeps": 2},
    "rbm": {"n_hidden": 4, "n_chains": 8, "sample_steps": 3},
    "grbm": {"n_hidden": 4, "n_chains": 8, "sample_steps": 3},
    "conv_rbm": {"n_filters": 2, "filter_size": 3, "pool": 2, "n_chains": 8, "sample_steps": 3},
    "dbm": {"n_hidden1": 4, "n_hidden2": 3, "pretrain_epochs": 1, "n_chains": 8, "mf_steps": 3,
            "sample_steps": 3, "lr_decay_steps": 10},
    "dbn": {"hidden": (4, 3), "layer_epochs": (1, 1), "n_chains": 8, "sample_steps": 3},
    "crbm": {"n_hidden": 4, "order": 2, "gibbs_steps": 2, "sample_frames": 3},
    # directed
    "sbn": {"hidden": (4, 3), "baseline_hidden": 4},
    "vae": {"latent_dim": 2, "hidden": (8,)},
    "vae_gaussian": {"latent_dim": 2, "hidden": (8,)},
    "gan": {"latent_dim": 3, "hidden": (8,), "d_steps": 2},
    "dcgan": {"latent_dim": 3, "hidden": (8,), "channels": 4},
    "gmmn": {"latent_dim": 3, "hidden": (8,), "space": "code", "code_dim": 3, "ae_hidden": (8,),
             "ae_epochs": 1},
    # autoregressive
    "fvsbn": {},
    "gaussian_ar": {},
    "neural_ar": {"n_hidden": 2},
    "nade": {"n_hidden": 5},
    "made": {"hidden_sizes": (12,), "n_masks": 2},
    # chains
    "cae": {"n_hidden": 5, "sample_steps": 3},
    "dae": {"n_hidden": 6, "walkback": 2, "sample_steps": 3},
    "dae_walkback": {"n_hidden": 6, "sample_steps": 3},
    "gsn": {"hidden": (6, 5), "walkback": 2, "sample_steps": 3},
    "diffusion": {"n_steps": 4, "n_hidden": 8},
}

# Further cases of models whose options change what is trained, saved or resumed (overrides on
# top of TINY): each runs every per-model check below.
VARIANTS: list[tuple[str, dict]] = [
    ("bm", {"gradient": "pcd", "n_chains": 8}),
    ("rbm", {"persistent": True}),
    ("sbn", {"method": "wake_sleep"}),
    ("vae", {"iwae_k": 3}),
    ("gan", {"data_view": "real"}),
    ("gmmn", {"space": "data"}),
    ("fvsbn", {"ordering": "random"}),
    ("neural_ar", {"direct": False, "ordering": "random"}),
    ("nade", {"ordering": "random"}),
    ("made", {"hidden_sizes": (12, 8), "n_masks": 3, "connectivity_agnostic": False}),
]

# Binary models whose samples are pixel means in [0, 1] (the chain's last decoder mean), not
# 0/1 draws.  EitherView models (gan, dcgan, gmmn, cae, gsn) say so by their class.
MEAN_SAMPLES = {"dae", "dae_walkback"}

# Evaluation budgets: "enumerate" lets every tiny model be exact where it can, "estimate"
# forces the estimators (AIS with a RAISE sandwich, importance sampling, ...).
ENUMERATE = Budget(exact_max_bits=16, ais_chains=4, ais_betas=10, raise_chains=1,
                   importance_samples=8, decoder_ais_chains=2, decoder_ais_betas=4,
                   decoder_ais_leapfrog=2, parzen_samples=40, bound_samples=2, trajectory_samples=2,
                   exact_chunk=256,
                   n_continuations=2, batch_size=64)
ESTIMATE = dataclasses.replace(ENUMERATE, exact_max_bits=1)
BUDGETS = {"enumerate": ENUMERATE, "estimate": ESTIMATE}

BATCH = 16          # minibatch (sequences: BATCH // 4): two minibatches per epoch
N_TEST = 6
FRAMES = 6          # frames per test sequence


def _id(name: str, kw: dict) -> str:
    return name + "[" + ",".join(f"{k}={v}" for k, v in kw.items()) + "]" if kw else name


def _cases() -> list:
    out = [pytest.param(name, TINY.get(name, {}), id=name) for name in gm.model_names()]
    out += [pytest.param(name, {**TINY.get(name, {}), **kw}, id=_id(name, kw))
            for name, kw in VARIANTS if name in gm.model_names()]
    return out


CASES = _cases()
per_case = pytest.mark.parametrize("name,kw", CASES)


def G(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- data ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def views(tmp_path_factory) -> dict[str, SimpleNamespace]:
    """input_kind -> train/val/test tensors from the real small datasets."""
    raw = tmp_path_factory.mktemp("raw")

    def take(x, n, frames=None):
        t = torch.as_tensor(x[:n])
        return t[:, :frames].contiguous() if frames else t

    bars = dataset_spec("bars_stripes").prepare(raw, 0).view("binary")
    digits = dataset_spec("digits").prepare(raw, 0).view("real")
    balls = dataset_spec("bouncing_balls").prepare(raw, 0, sizes=(8, 4, 4)).view("sequence")
    return {
        "binary": SimpleNamespace(train=take(bars["train"], 2 * BATCH),
                                  val=take(bars["val"], BATCH), test=take(bars["test"], N_TEST),
                                  batch=BATCH),
        "real": SimpleNamespace(train=take(digits["train"], 2 * BATCH),
                                val=take(digits["val"], BATCH), test=take(digits["test"], N_TEST),
                                batch=BATCH),
        "sequence": SimpleNamespace(train=take(balls["train"], 8),
                                    val=take(balls["val"], 4, FRAMES),
                                    test=take(balls["test"], 4, FRAMES), batch=4),
    }


def _data_dim(x: torch.Tensor) -> int:
    return x.shape[-1]


def setup(name: str, kw: dict, views, seed: int = 0):
    """(model built under torch.manual_seed(seed), its data view)."""
    probe = gm.build(name, _data_dim(views["binary"].train), **kw)   # input_kind may be a
    data = views[probe.input_kind]                                    # config field (EitherView)
    torch.manual_seed(seed)
    return gm.build(name, _data_dim(data.train), **kw), data


def trained(name: str, kw: dict, views, epochs: int = 1):
    """A model after ``epochs`` epochs of the pipeline's training loop, and its data."""
    model, data = setup(name, kw, views)
    train_model(model, data.train, epochs=epochs, batch_size=data.batch, generator=G(1))
    return model, data


# --- registry --------------------------------------------------------------------------------
def test_tables_name_only_registered_models():
    known = set(gm.model_names())
    assert set(TINY) <= known, f"TINY names unregistered models: {sorted(set(TINY) - known)}"
    assert {n for n, _ in VARIANTS} <= known
    assert MEAN_SAMPLES <= known


# --- training --------------------------------------------------------------------------------
@per_case
def test_fit_step_returns_finite_floats_and_updates(name, kw, views):
    model, data = setup(name, kw, views)
    assert model.input_kind in ("binary", "real", "sequence")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model.fit_step(data.train[:data.batch], generator=G(1))
    assert isinstance(out, dict)
    for key, value in out.items():
        assert isinstance(key, str) and isinstance(value, float), (key, value)
        assert math.isfinite(value), (key, value)
    after = model.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items()), \
        f"{name}: fit_step changed no parameter or buffer"
    for k, p in model.named_parameters():   # (buffers may hold NaN for "not chosen yet")
        assert torch.isfinite(p).all(), f"{name}: {k} not finite after fit_step"


SCHEDULE_KEYS = {"lr", "layer", "phase", "epoch_seconds"}   # logged, but not progress


@per_case
def test_progress_curve_is_a_logged_metric(name, kw, views):
    """The declared progress curve is a key of the per-epoch history that the pipeline's
    training loop records (fit_step means plus end_epoch), finite, in the last of 2 epochs
    (gmmn in code space logs its MMD only after autoencoder pretraining)."""
    curve = gm.model_class(name).progress
    assert isinstance(curve, Curve), f"{name}: no progress Curve declared"
    assert curve.label and isinstance(curve.unit, str) and isinstance(curve.higher_is_better, bool)
    assert curve.metric not in SCHEDULE_KEYS, f"{name}: {curve.metric} is a schedule, not progress"
    model, data = setup(name, kw, views)
    history = train_model(model, data.train, epochs=2, batch_size=data.batch, generator=G(1))
    assert curve.metric in history[-1], (name, curve.metric, sorted(history[-1]))
    assert all(math.isfinite(h[curve.metric]) for h in history if curve.metric in h)


# --- sampling --------------------------------------------------------------------------------
@per_case
def test_sample_shape_range_and_seeding(name, kw, views):
    model, data = trained(name, kw, views)
    n = 5
    torch.manual_seed(1)
    s = model.sample(n, generator=G(3))
    assert s.shape == (n, model.data_dim) and s.is_floating_point()
    assert torch.isfinite(s).all()
    # every dataset view lies in [0, 1]; real-valued models clip their samples to it
    assert float(s.min()) >= 0 and float(s.max()) <= 1, (float(s.min()), float(s.max()))
    if model.input_kind != "real" and not isinstance(model, EitherView) \
            and name not in MEAN_SAMPLES:
        assert set(s.unique().tolist()) <= {0.0, 1.0}, f"{name}: binary samples not 0/1"
    torch.manual_seed(2)                  # the global RNG must not matter, the generator must
    assert torch.equal(s, model.sample(n, generator=G(3)))


# --- likelihood ------------------------------------------------------------------------------
def check_log_likelihood(ll, n: int) -> None:
    assert isinstance(ll, LogLikelihood)
    assert ll.kind in KINDS and isinstance(ll.method, str) and ll.method
    assert ll.values.shape == (n,)
    assert torch.isfinite(ll.values).all(), ll.values
    for side, v in ll.bounds.items():
        assert v.shape == (n,) and torch.isfinite(v).all(), side
    rec = ll.summary()
    assert math.isfinite(rec["mean"]) and math.isfinite(rec["stderr"]) and rec["stderr"] >= 0
    assert rec["n"] == n


@per_case
@pytest.mark.parametrize("budget", list(BUDGETS), ids=list(BUDGETS))
def test_log_likelihood_kind_shape_finite(name, kw, budget, views):
    model, data = trained(name, kw, views)
    model.eval()
    model.prepare_evaluation(data.val, generator=G(4), budget=BUDGETS[budget])
    ll = model.log_likelihood(data.test, generator=G(5), budget=BUDGETS[budget])
    check_log_likelihood(ll, len(data.test))


@per_case
def test_exact_log_likelihoods_sum_to_one(name, kw, views):
    """Where log_likelihood says "exact" on the 16-pixel binary data, p sums to 1 over all
    2^16 images (a kind never overstates)."""
    model, data = trained(name, kw, views)
    if model.input_kind != "binary":
        pytest.skip("only binary images are enumerated")
    model.eval()
    model.prepare_evaluation(data.val, generator=G(4), budget=ENUMERATE)
    kind = model.log_likelihood(data.test, generator=G(5), budget=ENUMERATE).kind
    if kind != "exact":
        pytest.skip(f"kind {kind}")
    states = binary_states(model.data_dim).to(data.train.dtype)
    ll = model.log_likelihood(states, generator=G(5), budget=ENUMERATE)
    assert ll.kind == "exact"
    assert abs(float(torch.logsumexp(ll.values, 0))) < 1e-4


@per_case
def test_validation_estimates_kind_shape_finite(name, kw, views):
    model, data = trained(name, kw, views)
    model.eval()
    model.prepare_evaluation(data.val, generator=G(4), budget=ENUMERATE)
    est = model.validation_estimates(data.test, generator=G(5), budget=ENUMERATE)
    assert isinstance(est, dict)
    for key, ll in est.items():
        assert isinstance(key, str)
        check_log_likelihood(ll, len(data.test))


# --- checkpoints -----------------------------------------------------------------------------
def evaluation(model, data, budget=ENUMERATE):
    """Everything evaluation computes from a model, with fixed generators."""
    model.prepare_evaluation(data.val, generator=G(4), budget=budget)
    ll = model.log_likelihood(data.test, generator=G(5), budget=budget)
    return ll, model.sample(4, generator=G(6))


@per_case
def test_checkpoint_round_trip_gives_identical_numbers(name, kw, views, tmp_path):
    model, data = trained(name, kw, views)
    path = tmp_path / "model.pt"
    checkpoint.save(path, model, epoch=1)
    torch.manual_seed(123)                # the restored model's initial values must not matter
    restored = checkpoint.restore(checkpoint.load_state(path, expect_model=model.name), "cpu",
                                  optimizers=False).eval()
    assert type(restored) is type(model) and restored.config == model.config
    torch.manual_seed(7)
    ll_a, s_a = evaluation(model.eval(), data)
    torch.manual_seed(8)
    ll_b, s_b = evaluation(restored, data)
    assert (ll_a.method, ll_a.kind) == (ll_b.method, ll_b.kind)
    assert torch.equal(ll_a.values, ll_b.values), (ll_a.values, ll_b.values)
    assert ll_a.bounds.keys() == ll_b.bounds.keys()
    for k in ll_a.bounds:
        assert torch.equal(ll_a.bounds[k], ll_b.bounds[k]), k
    assert_same(ll_a.info, ll_b.info, "info")
    assert_same(ll_a.shared_stderr, ll_b.shared_stderr, "shared_stderr")
    assert torch.equal(s_a, s_b)


def assert_same(a, b, what: str) -> None:
    """Bit-identical nested state (tensors, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, what
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=what)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), what
        for k in a:
            assert_same(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{what}[{i}]")
    else:
        assert a == b or (a != a and b != b), (what, a, b)


@per_case
def test_resume_from_checkpoint_is_exact(name, kw, views, tmp_path):
    """k epochs, checkpoint as the train stage writes it, restore, m more epochs: the same
    model as k + m epochs in one go (k = 1 crosses the dbn/dbm/gmmn schedule boundaries)."""
    k, m = 1, 2
    ref, data = setup(name, kw, views)
    g_ref = G(1)
    ref_hist = train_model(ref, data.train, epochs=k + m, batch_size=data.batch,
                           generator=g_ref)

    first, _ = setup(name, kw, views)
    g = G(1)
    train_model(first, data.train, epochs=k, batch_size=data.batch, generator=g)
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, first, epoch=k, extra={"generator": g.get_state()})
    del first

    torch.manual_seed(123)                # restore must overwrite every initial value
    state = checkpoint.load_state(path, expect_model=ref.name)
    resumed = checkpoint.restore(state, "cpu")
    g_res = G(999)
    g_res.set_state(state["extra"]["generator"])
    res_hist = train_model(resumed, data.train, epochs=k + m, batch_size=data.batch,
                           generator=g_res, start_epoch=state["epoch"])

    strip = [{key: v for key, v in h.items() if key != "epoch_seconds"} for h in ref_hist[k:]]
    assert strip == [{key: v for key, v in h.items() if key != "epoch_seconds"}
                     for h in res_hist], f"{name}: per-epoch metrics differ after resuming"
    assert_same(ref.state_dict(), resumed.state_dict(), "state_dict")
    assert_same({o: opt.state_dict() for o, opt in ref.optimizers().items()},
                {o: opt.state_dict() for o, opt in resumed.optimizers().items()}, "optimizers")
    assert torch.equal(g_ref.get_state(), g_res.get_state())
    assert torch.equal(ref.sample(3, generator=G(3)), resumed.sample(3, generator=G(3)))


# --- named hooks -----------------------------------------------------------------------------
@per_case
def test_named_hooks(name, kw, views):
    model, data = trained(name, kw, views)
    model.eval()
    assert model.prepare_evaluation(data.val, generator=G(4), budget=ENUMERATE) is None

    log_z = model.exact_log_z(ENUMERATE)
    assert log_z is None or (isinstance(log_z, float) and math.isfinite(log_z)), log_z
    assert model.exact_log_z(ESTIMATE) is None, \
        f"{name}: exact_log_z enumerates beyond budget.exact_max_bits = 1"

    path = model.annealing_path()
    if path is None:
        return
    for attr in ("base_log_z", "base_sample", "log_f", "transition"):
        assert callable(getattr(path, attr, None)), f"{name}: annealing path lacks {attr}"
    assert math.isfinite(float(path.base_log_z()))
    x = path.base_sample(3, G(8))
    assert x.shape[0] == 3
    for beta in (0.0, 0.5, 1.0):
        f = path.log_f(x, beta)
        assert f.shape == (3,) and torch.isfinite(f).all(), beta
    assert path.transition(x, 0.5, G(9)).shape == x.shape
    if log_z is not None:   # the AIS-convergence figure plots AIS along the path against it
        res = ais_log_z(path, beta_schedule(50, "sigmoid"), 32, G(10))
        assert abs(res.log_z - log_z) < 0.2, (res.log_z, log_z)


# --- configs ---------------------------------------------------------------------------------
BUDGET_FIELDS = {f.name for f in dataclasses.fields(Budget)}
NAMES = gm.model_names()


@pytest.mark.parametrize("name", NAMES)
def test_config_is_checked_and_holds_no_evaluation_setting(name):
    config_cls = gm.model_class(name).Config
    assert issubclass(config_cls, Checked), f"{name}: Config must derive gm.config.Checked"
    clash = {f.name for f in dataclasses.fields(config_cls)} & BUDGET_FIELDS
    assert not clash, f"{name}: evaluation settings {sorted(clash)} belong in gm.base.Budget"


def _violation(config_cls, f: dataclasses.Field):
    """A value breaking the first declared bound of field f, or None without bounds."""
    bounds = f.metadata.get("bounds", {})
    if not bounds:
        return None
    key, bound = next(iter(bounds.items()))
    bad = {"ge": bound - 1, "gt": bound, "le": bound + 1, "lt": bound}[key]
    tp = typing.get_type_hints(config_cls)[f.name]
    args = typing.get_args(tp)
    scalar = args[0] if typing.get_origin(tp) in (tuple, list) else tp
    if float in (scalar, *typing.get_args(scalar)):
        bad = float(bad)
    return (bad,) if f.metadata.get("each") else bad


@pytest.mark.parametrize("name", NAMES)
def test_declared_ranges_are_enforced_naming_the_field(name, views):
    config_cls = gm.model_class(name).Config
    d = _data_dim(views["binary"].train)
    checked = 0
    for f in dataclasses.fields(config_cls):
        bad = _violation(config_cls, f)
        if bad is None:
            continue
        with pytest.raises(ConfigError) as err:
            gm.build(name, d, **{f.name: bad})
        assert err.value.field == f.name, (f.name, str(err.value))
        assert "models." not in str(err.value) and "evaluate." not in str(err.value)
        checked += 1
    with pytest.raises(ConfigError) as err:
        gm.build(name, d, no_such_field=1)
    assert err.value.field == "no_such_field"
