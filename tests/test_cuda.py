"""The CUDA path (issue 17): every registered model, the estimators and the benchmarks on a GPU,
checked against the CPU.

Skipped as a whole without CUDA.  Needs only torch, numpy, scipy, scikit-learn, pandas,
pyyaml and pytest besides the repository (gm, and pipeline.train through
tests/test_contract.py), never snakemake, dvc, mlflow or pooch, so it runs on a bare GPU node
(``scripts/cuda_check.sh``); gm itself also needs tqdm (gm/progress.py), and pipeline.train
filelock (a dependency of torch).

Self-check without a GPU: ``GM_CUDA_TEST_DEVICE=cpu`` (default ``cuda``; ``cuda:N`` also
works) runs every test CPU-vs-CPU, so the test code itself can be checked on any machine:
the deterministic comparisons are then exact, and the statistical ones compare two CPU runs
with different seeds (a real test of their false-alarm rate).  The benchmarks then run with
``--device cpu``; pipeline_overhead and process_cost (snakemake) are skipped in that mode.

Cases are those of tests/test_contract.py (every ``gm.model_names()`` model at its ``TINY``
settings plus its ``VARIANTS``), with the same small real datasets.  The model under test is
built (and, where said, trained for one epoch) on the CPU and copied to the device with
identical state (parameters, buffers, optimiser state), so every difference comes from the
device.  CPU and CUDA generators give different random streams, so:

- deterministic quantities (exact log-likelihoods, free energies / log f, annealing-path
  densities, exact log Z, network outputs at fixed inputs, deterministic fit_steps) must agree
  to a tolerance (:data:`TOL`);
- stochastic ones (AIS/RAISE, importance-sampling bounds, Parzen, decoder AIS, samples,
  stochastic fit_steps) must agree in distribution: means over independent replicates compared
  by Welch's t-test at a per-comparison false-alarm rate :data:`ALPHA` (samples: a z-test per
  pixel), the replicates' own spread being the yardstick, so no estimator-specific error
  formula is trusted.

TF32 is switched off in this module (``full_fp32``): cuDNN's default TF32 convolutions carry
~1e-3 relative error (dcgan, conv_rbm in float32), which would swamp the float32 tolerances;
we check the code's arithmetic, not the hardware's reduced-precision mode.

Tolerances (:data:`TOL`) and why:
- ``float64``: rtol 1e-9, atol 1e-8.  Energy-model likelihoods, log f, path densities and exact
  log Z are computed in float64 from the same float32 parameters; CPU and CUDA differ only in
  summation order (~1e-15 relative), so 1e-8 leaves a wide margin yet catches any float32 step.
- ``float32``: rtol 1e-4, atol 1e-4.  float32 sums of 16-64 terms of size ~1-10 carry ~1e-6
  relative rounding that differs between CPU and GPU kernels; 1e-4 is 100x that, and far below
  any modelling difference.  Also used for float64 results with float32 arithmetic inside
  (:data:`F32_INSIDE`) and for parameters after a few deterministic training steps (Adam's and
  momentum's updates are smooth in the gradients; the one exception, a gradient within float32
  rounding of zero that flips the sign of Adam's step, has odds of order 1e-3 per run).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

import gm
from gm.base import EitherView, LogLikelihood
from gm.config import config_dict
from gm.estimators.ais import ais_log_z, beta_schedule
from gm.estimators.exact import binary_states, enumerate_log_z
from gm.estimators.parzen import DEFAULT_GRID, parzen_log_likelihood, select_bandwidth
from gm.models.autoregressive.base import AutoregressiveModel, OrderedBernoulliAR
from gm.models.autoregressive.gaussian_ar import GaussianAR
from gm.models.autoregressive.made import MADE
from gm.models.baselines.base import BernoulliMixtures
from gm.models.chains.cae import CAE
from gm.models.chains.dae import DAE
from gm.models.chains.diffusion import Diffusion
from gm.models.chains.gsn import GSN
from gm.models.directed.base import ImplicitGenerator
from gm.models.directed.gan import GAN
from gm.models.directed.gmmn import GMMN, mmd_squared
from gm.models.directed.sbn import SBN
from gm.models.directed.vae import VAE
from gm.models.energy.base import EnergyModel
from gm.models.energy.bm import BoltzmannMachine
from gm.models.energy.crbm import CRBM
from gm.models.energy.dbm import DBM
from gm.models.energy.dbn import DBN
from gm.seeding import derive_seed
# the contract test's cases, budgets and data (``views`` is its module-scoped fixture)
from test_contract import CASES, ENUMERATE, MEAN_SAMPLES, G, views  # noqa: F401
from test_contract import setup as build_case
from pipeline.train import train_model

DEVICE = torch.device(os.environ.get("GM_CUDA_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(),
    reason="CUDA is not available (GM_CUDA_TEST_DEVICE=cpu runs these checks CPU-vs-CPU)")

per_case = pytest.mark.parametrize("name,kw", CASES)
REPO = Path(__file__).resolve().parents[1]

TOL = {"float64": dict(rtol=1e-9, atol=1e-8), "float32": dict(rtol=1e-4, atol=1e-4)}
# float64 results computed with float32 arithmetic inside: compared at the float32 tolerance
F32_INSIDE = {"conditional_log_z", "log_likelihood_exact", "variational_log_f"}
# models whose log_likelihood is computed in float64 (given float32 parameters) when exact
FLOAT64_LIKELIHOOD = {"bm", "rbm", "grbm", "conv_rbm", "dbm", "independent",
                      "mixture_bernoulli"}

# validation estimates with float32 arithmetic inside (the DBM's mean-field bound)
VALIDATION_F32 = {"mean_field"}

ALPHA = 1e-5       # false-alarm rate of each statistical comparison (there are ~200 of them)
R_LL = 20          # independent replicates per device of a stochastic estimate
R_FIT = 24         # independent replicates per device of one stochastic fit_step
N_SAMPLES = 2000   # samples per device for the per-pixel mean comparison
SAMPLE_Z = 6.0     # z of that comparison (normal approximation; ~2e-9 two-sided per pixel)

# Budgets of the comparisons: larger than test_contract's (more chains, so the estimates are
# nearly normal and their replicate spread is a good yardstick), still tiny on the toy models.
CMP_ENUMERATE = dataclasses.replace(
    ENUMERATE, ais_chains=16, ais_betas=20, raise_chains=2, importance_samples=16,
    parzen_samples=100, decoder_ais_chains=2, decoder_ais_betas=6, decoder_ais_leapfrog=2,
    bound_samples=2, trajectory_samples=2)
CMP_ESTIMATE = dataclasses.replace(CMP_ENUMERATE, exact_max_bits=1)
CMP_BUDGETS = {"enumerate": CMP_ENUMERATE, "estimate": CMP_ESTIMATE}


# --- helpers ----------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def full_fp32():
    """Full float32 matmuls and convolutions on the GPU for the duration of each test."""
    if DEVICE.type != "cuda":
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def gen(device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


SEED_ROOT = 2017


def seed_of(side: str, i: int) -> int:
    """Seed of replicate i on one side ("cpu" or "device"): hashed (gm.seeding.derive_seed),
    never consecutive integers: replicates seeded 1, 2, 3, ... on torch's CPU Mersenne Twister
    gave visibly dependent AIS/RAISE estimates (block means of 20 replicates 3-4 standard
    errors apart), which breaks the independence the t-tests assume.  The two sides get
    different seeds, so CPU-vs-CPU self-checks compare independent streams."""
    return derive_seed(SEED_ROOT, "test_cuda", side, i)


def cpu_seed(i: int) -> int:
    return seed_of("cpu", i)


def dev_seed(i: int) -> int:
    return seed_of("device", i)


def clone(model: gm.GenerativeModel, device) -> gm.GenerativeModel:
    """A fresh model of the same name and config on ``device`` with the state of ``model``:
    parameters, buffers and (if built) optimiser state, as a checkpoint restore gives."""
    twin = gm.build(model.name, model.data_dim, **config_dict(model.config)).to(device)
    twin.load_state_dict(model.state_dict())
    if "_optimizers" in model.__dict__:
        for key, opt in twin.optimizers().items():
            opt.load_state_dict(model.optimizers()[key].state_dict())
    twin.train(model.training)
    return twin


_TRAINED: dict[str, tuple] = {}


def trained_base(name: str, kw: dict, views) -> tuple:
    """(model trained one epoch on the CPU as tests/test_contract.py does, its data), cached per
    case; never mutate it, use ``clone``."""
    key = name + repr(sorted(kw.items()))
    if key not in _TRAINED:
        model, data = build_case(name, kw, views)
        train_model(model, data.train, epochs=1, batch_size=data.batch, generator=G(1))
        _TRAINED[key] = (model, data)
    return _TRAINED[key]


def to(obj, device):
    """obj with every tensor inside (dicts, lists, tuples) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to(v, device) for v in obj)
    return obj


def assert_agree(cpu, dev, what: str, f32_inside: bool = False) -> None:
    """Deterministic results of the CPU and the device agree at :data:`TOL` (tensors by dtype;
    Python floats are float64 results), nested in dicts/lists/tuples; None matches None."""
    if isinstance(cpu, torch.Tensor):
        assert isinstance(dev, torch.Tensor), (what, type(dev))
        assert dev.device.type == DEVICE.type, f"{what}: result on {dev.device}, not {DEVICE}"
        assert cpu.dtype == dev.dtype and cpu.shape == dev.shape, \
            (what, cpu.dtype, dev.dtype, cpu.shape, dev.shape)
        if not cpu.is_floating_point():
            assert torch.equal(cpu, dev.cpu()), what
            return
        tol = TOL["float64" if cpu.dtype == torch.float64 and not f32_inside else "float32"]
        torch.testing.assert_close(dev.cpu(), cpu, equal_nan=True, msg=lambda m: f"{what}: {m}",
                                   **tol)
    elif isinstance(cpu, dict):
        assert isinstance(dev, dict) and cpu.keys() == dev.keys(), (what, cpu.keys(), dev)
        for k in cpu:
            assert_agree(cpu[k], dev[k], f"{what}.{k}", f32_inside or k in F32_INSIDE)
    elif isinstance(cpu, (list, tuple)):
        assert isinstance(dev, (list, tuple)) and len(cpu) == len(dev), what
        for i, (a, b) in enumerate(zip(cpu, dev)):
            assert_agree(a, b, f"{what}[{i}]", f32_inside)
    elif isinstance(cpu, float):
        assert isinstance(dev, float), (what, dev)
        tol = TOL["float32" if f32_inside else "float64"]
        assert math.isclose(dev, cpu, rel_tol=tol["rtol"], abs_tol=tol["atol"]) \
            or (math.isnan(cpu) and math.isnan(dev)), (what, cpu, dev)
    else:
        assert cpu == dev, (what, cpu, dev)


def welch_agree(cpu_runs, dev_runs, what: str, alpha: float = ALPHA) -> None:
    """The means of independent replicates (1-d) on the CPU and the device agree by Welch's
    t-test at two-sided level ``alpha`` (plus 1e-6 relative slack for near-constant values)."""
    a, b = np.asarray(cpu_runs, dtype=float), np.asarray(dev_runs, dtype=float)
    assert np.isfinite(a).all() and np.isfinite(b).all(), (what, a, b)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if se > 0 else 1.0
    t = stats.t.ppf(1 - alpha / 2, dof)
    diff = abs(a.mean() - b.mean())
    assert diff <= t * se + 1e-6 * (1 + abs(a.mean())), (
        f"{what}: CPU mean {a.mean():.6g} vs {DEVICE} mean {b.mean():.6g}: |diff| {diff:.3g} > "
        f"{t:.2f} x stderr {se:.3g} (Welch dof {dof:.1f}, alpha {alpha:g})")


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise-equal tensors, NaN equal to NaN (buffers hold NaN for "not chosen yet")."""
    a, b = a.detach().cpu(), b.detach().cpu()
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    eq = a == b
    if a.is_floating_point():
        eq |= a.isnan() & b.isnan()
    return bool(eq.all())


def float_state(model) -> dict[str, torch.Tensor]:
    """Floating-point parameters and buffers, detached copies on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if v.is_floating_point()}


def check_on_device(model, what: str) -> None:
    """Every parameter, buffer and optimiser-state tensor lives on the device under test
    (scalar step counters, CPU tensors in torch.optim's Adam by design, are exempt)."""
    for k, v in model.state_dict().items():
        assert v.device.type == DEVICE.type, f"{what}: {k} on {v.device}, not {DEVICE}"
    for key, opt in model.optimizers().items():
        # torch.optim keeps {param: state}; gm.optim a list of per-parameter states
        for state in (opt.state.values() if isinstance(opt.state, dict) else opt.state):
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    assert v.device.type == DEVICE.type, \
                        f"{what}: optimiser {key} state {k} on {v.device}"


def check_diagnostics(out: dict, ref: dict, what: str) -> None:
    assert isinstance(out, dict) and out.keys() == ref.keys(), (what, out, ref)
    for k, v in out.items():
        assert isinstance(v, float) and math.isfinite(v), (what, k, v)


# --- deterministic probes -----------------------------------------------------------------------
def probe_inputs(cpu: gm.GenerativeModel, x: torch.Tensor) -> dict:
    """Fixed inputs for :func:`probe`, drawn on the CPU from fixed generators (so both devices
    see the same numbers): data x, latent codes, annealing-path states, hidden states."""
    n = x.shape[0]
    inp: dict = {"x": x}
    cfg = cpu.config
    if hasattr(cfg, "latent_dim"):
        inp["z"] = torch.randn(n, cfg.latent_dim, generator=G(11))
    path = cpu.annealing_path()
    if path is not None:
        inp["path_states"] = path.base_sample(6, G(12))
    if isinstance(cpu, SBN):
        inp["hs"] = [(torch.rand(n, h, generator=G(13 + i)) < 0.5).float()
                     for i, h in enumerate(cfg.hidden)]
    if isinstance(cpu, DBN):
        inp["layer_states"] = [(torch.rand(6, rbm.data_dim, generator=G(20 + i)) < 0.5).float()
                               for i, rbm in enumerate(cpu.layers)]
    if isinstance(cpu, Diffusion):
        inp["xt"] = (torch.rand(x.shape, generator=G(14)) < 0.5).float()
        inp["t"] = torch.arange(n) % cfg.n_steps + 1
    if isinstance(cpu, CAE):
        inp["h"] = torch.rand(n, cfg.n_hidden, generator=G(15))
    if isinstance(cpu, GSN):
        inp["hidden"] = [torch.randn(n, s, generator=G(16 + i))
                         for i, s in enumerate(cpu.sizes[1:])]
    return inp


@torch.no_grad()
def probe(m: gm.GenerativeModel, inp: dict) -> dict:
    """Deterministic quantities of model m at the inputs ``inp`` (on m's device): what the
    model's training, sampling and likelihood are built from."""
    x = inp["x"]
    out: dict = {"exact_log_z": m.exact_log_z(CMP_ENUMERATE)}
    if "path_states" in inp:
        path, s = m.annealing_path(), inp["path_states"]
        out["path_base_log_z"] = float(path.base_log_z())
        out["path_log_f"] = [path.log_f(s, beta) for beta in (0.0, 0.3, 1.0)]
        if hasattr(path, "ais_step"):   # the fused AIS step's weight increment (no move)
            out["path_ais_step"] = path.ais_step(s, 0.25, 0.75, gen(s.device, 0), False)[0]
    if isinstance(m, EnergyModel) and not isinstance(m, CRBM):
        out["log_f"] = m.log_f(x, CMP_ENUMERATE)
        if hasattr(m, "free_energy"):    # the float32 training quantity of CD / PCD
            v = m.standardise(x) if hasattr(m, "standardise") else x
            out["free_energy"] = m.free_energy(v)
    if isinstance(m, BoltzmannMachine):
        out["exact_statistics"] = m.exact_statistics()
        out["neg_energy"] = m.neg_energy(x)
    if isinstance(m, DBM):
        out["mean_field"] = m.mean_field(x)
        out["variational_log_f"] = m.variational_log_f(x)
    if isinstance(m, CRBM):
        u, v = m.windows(x)
        bv, bh = m.dynamic_biases(u)
        out["dynamic_biases"] = (bv, bh)
        out["crbm_free_energy"] = m.free_energy(v, bv, bh)
        out["conditional_log_z"] = m.conditional_log_z(bv, bh, CMP_ENUMERATE.exact_max_bits)
    if isinstance(m, DBN):
        out["layers"] = [(rbm.free_energy(s), rbm.p_h(s), rbm.p_v(rbm.p_h(s)))
                         for rbm, s in zip(m.layers, inp["layer_states"])]
    if isinstance(m, SBN):
        out["log_joint"] = m.log_joint(x, inp["hs"])
        out["log_q"] = m.log_q(x, inp["hs"])
        out["log_likelihood_exact"] = m.log_likelihood_exact(x, CMP_ENUMERATE.exact_max_bits)
    if isinstance(m, VAE):
        out["encode"] = m.encode(x)
        out["log_lik"] = m.log_lik(x, inp["z"])
        out["log_prior"] = m.log_prior(inp["z"])
    if isinstance(m, ImplicitGenerator):
        out["generate"] = m.generate(inp["z"])
    if isinstance(m, GAN):
        out["disc"] = m.disc(x)
    if isinstance(m, GMMN):
        fake = torch.sigmoid(m.gen(inp["z"]))
        if m.in_code_space:
            out["encode"] = m.encode(x)
            out["mmd"] = mmd_squared(m.encode(x), fake, m.config.code_bandwidths)
        else:
            out["mmd"] = mmd_squared(x, fake, m.config.bandwidths)
    if isinstance(m, AutoregressiveModel):
        out["log_prob"] = m.log_prob(x)
    if isinstance(m, OrderedBernoulliAR):
        out["conditional_logits"] = m.conditional_logits(x)
    if isinstance(m, MADE):
        out["log_prob_mask"] = [m.log_prob_mask(x, k) for k in range(m.config.n_masks)]
    if isinstance(m, GaussianAR):
        out["conditional_means"] = m.conditional_means(x)
        out["implied_gaussian"] = m.implied_gaussian()
    if isinstance(m, CAE):
        out["encode"] = m.encode(x)
        out["decode_logits"] = m.decode_logits(inp["h"])
        out["jacobian_penalty"] = m.jacobian_penalty(inp["h"])
        out["jacobian"] = m.jacobian(x)
    if isinstance(m, DAE):
        out["reconstruction_logits"] = m.reconstruction_logits(x)
    if isinstance(m, GSN):
        state = (x, *inp["hidden"])
        out["layer_input"] = [m._layer_input(state, i) for i in range(len(m.sizes))]
    if isinstance(m, Diffusion):
        xt, t = inp["xt"], inp["t"]
        out["x0_probs"] = m.x0_probs(xt, t)
        out["p_prev"] = m.p_prev(xt, t)
        out["term_given"] = m.term_given(x, xt, t)
    if isinstance(m, BernoulliMixtures):
        out["candidate_log_probs"] = m.candidate_log_probs(x)
    return out


def compare_probes(cpu_model, dev_model, x_cpu, what: str) -> dict:
    inp = probe_inputs(cpu_model, x_cpu)
    ref = probe(cpu_model, inp)
    got = probe(dev_model, to(inp, dev_model.device))
    assert_agree(ref, got, what)
    return ref


@per_case
def test_deterministic_quantities_agree(name, kw, views):
    """At identical (CPU-trained) weights: exact log Z, log f / free energies, annealing-path
    densities and fused AIS increments, network outputs at fixed inputs (:func:`probe`) on the
    device equal the CPU's at :data:`TOL`."""
    base, data = trained_base(name, kw, views)
    cpu, dev = clone(base, "cpu").eval(), clone(base, DEVICE).eval()
    check_on_device(dev, name)
    ref = compare_probes(cpu, dev, data.test, name)
    assert len(ref) >= 1


# --- training -----------------------------------------------------------------------------------
@per_case
def test_fit_step_on_device(name, kw, views):
    """From one untrained state, 2 fit_steps, end_epoch, 1 fit_step on fixed minibatches, on
    the CPU (twice, other seeds) and on the device: the device gives finite float diagnostics
    with the CPU's keys, keeps every parameter, buffer and optimiser state on the device,
    updates the model and keeps its parameters finite.  Where the CPU runs are identical
    whatever the seed (a deterministic fit_step: bm with the exact gradient, autoregressive
    models, cae, independent, ...), the device's parameters, buffers and diagnostics equal
    the CPU's at :data:`TOL`.  Always: the device-trained model's deterministic quantities
    (:func:`probe`) are reproduced by its copy on the CPU."""
    start, data = build_case(name, kw, views)
    batches = [data.train[:data.batch], data.train[data.batch:2 * data.batch]]

    def run(device, seed):
        m = clone(start, device)
        m.train()
        g = gen(device, seed)
        outs = [m.fit_step(b.to(device), generator=g) for b in batches]
        outs.append(m.end_epoch(0))
        outs.append(m.fit_step(batches[0].to(device), generator=g))
        return m, outs

    cpu_a, outs_a = run("cpu", 1)
    cpu_b, outs_b = run("cpu", 2)
    dev, outs_d = run(DEVICE, dev_seed(1))

    for i, (o, r) in enumerate(zip(outs_d, outs_a)):
        check_diagnostics(o, r, f"{name} call {i}")
    check_on_device(dev, name)
    after = dev.state_dict()
    assert any(not same(v, after[k]) for k, v in start.state_dict().items()), \
        f"{name}: fit_step on {DEVICE} changed no parameter or buffer"
    for k, p in dev.named_parameters():
        assert torch.isfinite(p).all(), f"{name}: {k} not finite after fit_step on {DEVICE}"

    deterministic = outs_a == outs_b and all(
        same(a, b) for a, b in zip(cpu_a.state_dict().values(), cpu_b.state_dict().values()))
    if deterministic:
        assert_agree(dict(cpu_a.state_dict()), dict(dev.state_dict()), f"{name} state")
        for i, (o, r) in enumerate(zip(outs_d, outs_a)):
            for k in r:
                assert math.isclose(o[k], r[k], **{"rel_tol": TOL["float32"]["rtol"],
                                                   "abs_tol": TOL["float32"]["atol"]}), \
                    (name, i, k, r[k], o[k])
    compare_probes(clone(dev, "cpu").eval(), dev.eval(), data.test, f"{name} trained on {DEVICE}")


@per_case
def test_one_fit_step_updates_alike_in_distribution(name, kw, views):
    """One fit_step from the same trained state (parameters and optimiser state), R_FIT
    independent seeds per device: the updates of the floating parameters and buffers have the
    same distribution on both devices.

    Entries whose update does not vary with the seed on either side must agree at
    :data:`TOL` (float32).  The random ones are highly correlated (one draw moves many
    entries), so instead of a joint statistic each tensor's update is reduced to two scalars
    per replicate, its mean and its projection on a fixed random direction, and those are
    compared by Welch's t-test (:func:`welch_agree`) at level 1e-6 each (a few dozen tests per
    model).
    """
    base, data = trained_base(name, kw, views)
    batch = data.train[:data.batch]
    start = float_state(base)
    if not start:
        pytest.skip(f"{name} has no floating-point state")

    def updates(device, seeds) -> dict[str, torch.Tensor]:
        rows: dict[str, list] = {k: [] for k in start}
        for s in seeds:
            m = clone(base, device)
            out = m.fit_step(batch.to(device), generator=gen(device, s))
            assert all(math.isfinite(v) for v in out.values()), (name, out)
            after = float_state(m)
            for k in start:
                rows[k].append((after[k] - start[k]).double().flatten())
        return {k: torch.stack(v) for k, v in rows.items()}

    uc = updates("cpu", [cpu_seed(i) for i in range(R_FIT)])
    ud = updates(DEVICE, [dev_seed(i) for i in range(R_FIT)])
    for i, k in enumerate(start):
        a, b = uc[k], ud[k]
        ok = torch.isfinite(a).all(0) & torch.isfinite(b).all(0)   # NaN buffers (unset yet)
        a, b = a[:, ok], b[:, ok]
        if a.shape[1] == 0:
            continue
        fixed = (a.var(0) <= 1e-24) & (b.var(0) <= 1e-24)
        torch.testing.assert_close(b[0, fixed], a[0, fixed], **TOL["float32"],
                                   msg=lambda m: f"{name}: {k} seed-independent update: {m}")
        if fixed.all():
            continue
        a, b = a[:, ~fixed], b[:, ~fixed]
        direction = torch.randn(a.shape[1], generator=G(1000 + i), dtype=torch.float64)
        welch_agree(a.mean(1), b.mean(1), f"{name}: mean update of {k}", alpha=1e-6)
        welch_agree(a @ direction, b @ direction, f"{name}: projected update of {k}",
                    alpha=1e-6)


# --- sampling -----------------------------------------------------------------------------------
@per_case
def test_sample_on_device(name, kw, views):
    """sample(n) on the device: a floating tensor on the device of shape (n, data_dim), finite,
    in [0, 1], 0/1 for binary models (as tests/test_contract.py); and the same distribution as
    the CPU's from the same trained state: per-pixel means of N_SAMPLES samples agree within
    SAMPLE_Z combined standard errors (+1e-3 for pixels that never vary)."""
    base, _ = trained_base(name, kw, views)
    cpu, dev = clone(base, "cpu").eval(), clone(base, DEVICE).eval()
    s_dev = dev.sample(N_SAMPLES, generator=gen(DEVICE, dev_seed(3)))
    assert isinstance(s_dev, torch.Tensor) and s_dev.device.type == DEVICE.type, s_dev.device
    assert s_dev.shape == (N_SAMPLES, dev.data_dim) and s_dev.is_floating_point()
    assert torch.isfinite(s_dev).all()
    assert float(s_dev.min()) >= 0 and float(s_dev.max()) <= 1
    if dev.input_kind != "real" and not isinstance(dev, EitherView) and name not in MEAN_SAMPLES:
        assert set(s_dev.unique().tolist()) <= {0.0, 1.0}, f"{name}: binary samples not 0/1"
    s_cpu = cpu.sample(N_SAMPLES, generator=G(3)).double()
    s_dev = s_dev.double().cpu()
    se = ((s_cpu.var(0) + s_dev.var(0)) / N_SAMPLES).sqrt()
    gap = (s_cpu.mean(0) - s_dev.mean(0)).abs()
    worst = int(torch.argmax(gap - SAMPLE_Z * se))
    assert (gap <= SAMPLE_Z * se + 1e-3).all(), (
        f"{name}: pixel {worst} mean {float(s_cpu.mean(0)[worst]):.4f} on the CPU vs "
        f"{float(s_dev.mean(0)[worst]):.4f} on {DEVICE} (stderr {float(se[worst]):.4f})")


# --- likelihood ---------------------------------------------------------------------------------
def prepared_pair(name, kw, views, budget):
    """(CPU model, device model, data): trained on the CPU, prepare_evaluation run on both (on
    the device it must finish with the CPU's buffers, except the Parzen width, a stochastic
    argmax, which must lie on the grid), then the CPU's prepared state loaded into the device
    model so that both evaluate the same model."""
    base, data = trained_base(name, kw, views)
    cpu = clone(base, "cpu").eval()
    cpu.prepare_evaluation(data.val, generator=G(4), budget=budget)
    dev = clone(base, DEVICE).eval()
    dev.prepare_evaluation(data.val.to(DEVICE), generator=gen(DEVICE, dev_seed(4)),
                           budget=budget)
    check_on_device(dev, name)
    ref, got = dict(cpu.state_dict()), dict(dev.state_dict())
    if "parzen_sigma" in got:
        sigma = float(got.pop("parzen_sigma"))
        ref.pop("parzen_sigma")
        assert any(math.isclose(sigma, s) for s in DEFAULT_GRID), (name, sigma)
    assert_agree(ref, got, f"{name} prepared state")
    dev.load_state_dict(cpu.state_dict())
    return cpu, dev, data


def compare_estimates(fn_cpu, fn_dev, what: str, precision) -> None:
    """fn(seed) -> {key: LogLikelihood}.  Method, kind and shapes agree; values (and bounds)
    that do not depend on the seed on the CPU must not on the device either, and agree at
    TOL[precision(key)]; the others agree in mean over R_LL replicates (:func:`welch_agree`)."""
    a, b = fn_cpu(cpu_seed(0)), fn_cpu(cpu_seed(1))
    d1 = fn_dev(dev_seed(0))
    assert a.keys() == d1.keys(), (what, a.keys(), d1.keys())
    for key in a:
        for ll in (a[key], d1[key]):
            assert isinstance(ll, LogLikelihood), (what, key)
            assert torch.isfinite(ll.values).all(), (what, key, ll.values)
            assert math.isfinite(ll.shared_stderr), (what, key)
        assert (a[key].method, a[key].kind) == (d1[key].method, d1[key].kind), \
            (what, key, a[key].method, d1[key].method, a[key].kind, d1[key].kind)
        assert a[key].values.shape == d1[key].values.shape
        assert a[key].bounds.keys() == d1[key].bounds.keys(), (what, key)
    deterministic = {k for k in a if torch.equal(a[k].values, b[k].values) and all(
        torch.equal(a[k].bounds[s], b[k].bounds[s]) for s in a[k].bounds)}
    if deterministic:
        d2 = fn_dev(dev_seed(1))
        for k in deterministic:
            tol = TOL[precision(k)]
            for side, ref, got1, got2 in [("values", a[k].values, d1[k].values, d2[k].values)] + [
                    (s, a[k].bounds[s], d1[k].bounds[s], d2[k].bounds[s]) for s in a[k].bounds]:
                torch.testing.assert_close(got1, ref, **tol,
                                           msg=lambda m: f"{what} {k} {side}: {m}")
                torch.testing.assert_close(got2, got1, **tol,
                                           msg=lambda m: f"{what} {k} {side} (seed): {m}")
    stochastic = [k for k in a if k not in deterministic]
    if not stochastic:
        return
    runs_c = [a, b] + [fn_cpu(cpu_seed(i)) for i in range(2, R_LL)]
    runs_d = [d1] + [fn_dev(dev_seed(i)) for i in range(1, R_LL)]
    for k in stochastic:
        for side in ["values", *a[k].bounds]:
            pick = (lambda r: r[k].values) if side == "values" else (lambda r: r[k].bounds[side])
            welch_agree([float(pick(r).mean()) for r in runs_c],
                        [float(pick(r).mean()) for r in runs_d], f"{what} {k} {side}")


@per_case
@pytest.mark.parametrize("budget", list(CMP_BUDGETS), ids=list(CMP_BUDGETS))
def test_log_likelihood_agrees(name, kw, budget, views):
    """log_likelihood on the device vs the CPU at identical (trained, prepared) state, with a
    budget that enumerates where it can ("enumerate") or forces the estimators ("estimate"):
    exact kinds at TOL (float64 for :data:`FLOAT64_LIKELIHOOD`, else float32); AIS with the
    RAISE sandwich, importance-sampling bounds, the diffusion bound and the Parzen proxy (at
    the CPU's validation-chosen width) in mean over R_LL replicates at level ALPHA, values and
    each bound alike."""
    b = CMP_BUDGETS[budget]
    cpu, dev, data = prepared_pair(name, kw, views, b)
    x_dev = data.test.to(DEVICE)
    compare_estimates(
        lambda s: {"ll": cpu.log_likelihood(data.test, generator=G(s), budget=b)},
        lambda s: {"ll": dev.log_likelihood(x_dev, generator=gen(DEVICE, s), budget=b)},
        f"{name} log_likelihood [{budget}]",
        lambda key: "float64" if name in FLOAT64_LIKELIHOOD else "float32")


@per_case
def test_validation_estimates_and_extras_on_device(name, kw, views):
    """The rest of evaluation on the device: validation_estimates (AIS and RAISE beside an
    exact value, decoder AIS, ELBO, ...) agree with the CPU's as in
    :func:`test_log_likelihood_agrees`; extras (chains, inpainting, continuations, filters,
    completions), given a classifier on the device as the pipeline gives one, run and give
    finite metrics, tables and images."""
    cpu, dev, data = prepared_pair(name, kw, views, CMP_ENUMERATE)
    x_dev = data.test.to(DEVICE)
    b = CMP_ENUMERATE
    compare_estimates(
        lambda s: cpu.validation_estimates(data.test, generator=G(s), budget=b),
        lambda s: dev.validation_estimates(x_dev, generator=gen(DEVICE, s), budget=b),
        f"{name} validation_estimates",
        lambda key: "float64" if name in FLOAT64_LIKELIHOOD and key not in VALIDATION_F32
        else "float32")
    # a stand-in for the pipeline's classifier of the dataset's labels: a fixed random linear
    # map to 10 logits, on the device (the classifier code paths of the extras run too)
    w = torch.randn(dev.data_dim, 10, generator=G(8)).to(DEVICE)
    ex = dev.extras(x_dev, generator=gen(DEVICE, dev_seed(7)), budget=b,
                    classifier=lambda v: v.to(w) @ w)
    for k, v in ex.metrics.items():
        assert math.isfinite(v), (name, k, v)
    for k, img in ex.images.items():
        assert img.dim() == 2 and torch.isfinite(img.float()).all(), (name, k)
    for k, rows in ex.tables.items():
        for row in rows:
            assert all(math.isfinite(float(v)) for v in row.values()), (name, k, row)


AIS_CASES = [c for c in CASES if gm.model_class(c.values[0]).annealing_path
             is not gm.GenerativeModel.annealing_path]


@pytest.mark.parametrize("name,kw", AIS_CASES)
def test_ais_on_device_matches_exact_log_z(name, kw, views):
    """Forward AIS on the device along the model's annealing path, with many chains on the tiny
    model (256 chains, 200 sigmoid-spaced distributions), recovers the exact log Z enumerated
    on the CPU: within 6 of its delta-method standard errors plus 0.05 nats (the bias of
    log Z-hat, below 0.02 nats at this budget on these models)."""
    base, _ = trained_base(name, kw, views)
    log_z = clone(base, "cpu").exact_log_z(ENUMERATE)
    dev = clone(base, DEVICE)
    path = dev.annealing_path()
    if path is None or log_z is None:
        pytest.skip(f"{name}: no annealing path with an exact log Z")
    res = ais_log_z(path, beta_schedule(200, "sigmoid"), 256, gen(DEVICE, dev_seed(10)))
    assert res.samples.device.type == DEVICE.type
    assert abs(res.log_z - log_z) <= 6 * res.stderr + 0.05, (name, res.log_z, log_z, res.stderr)


# --- estimators at fixed inputs ---------------------------------------------------------------
def test_estimators_agree_at_fixed_inputs():
    """Shared estimators on the device at fixed inputs: binary_states, enumerate_log_z (float64,
    several chunks), the Parzen log density and its bandwidth choice (float64)."""
    states = binary_states(10, device=DEVICE, dtype=torch.float64)
    assert_agree(binary_states(10, dtype=torch.float64), states, "binary_states")
    w = torch.randn(10, generator=G(1), dtype=torch.float64)
    f = lambda s: s @ w.to(s.device) - 0.1 * (s.sum(1) - 5) ** 2  # noqa: E731
    ref = enumerate_log_z(f, 10, chunk=100)
    assert_agree(ref, enumerate_log_z(f, 10, chunk=100, device=DEVICE), "enumerate_log_z")
    x = torch.rand(30, 16, generator=G(2))
    centers = (torch.rand(200, 16, generator=G(3)) < 0.4).float()
    assert_agree(parzen_log_likelihood(x, centers, 0.3),
                 parzen_log_likelihood(x.to(DEVICE), centers.to(DEVICE), 0.3), "parzen")
    s_cpu, table_cpu = select_bandwidth(x, centers)
    s_dev, table_dev = select_bandwidth(x.to(DEVICE), centers.to(DEVICE))
    assert s_cpu == s_dev
    assert_agree([r["mean_log_likelihood"] for r in table_cpu],
                 [r["mean_log_likelihood"] for r in table_dev], "parzen table")


# --- benchmarks ---------------------------------------------------------------------------------
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")   # gm.data.fashion_mnist.DEBIAN_DIR

# benchmark file -> (small-size arguments, what it needs: the Debian Fashion-MNIST files, or
# snakemake (the whole pipeline in a scratch copy; its arguments are set in the test))
BENCHMARKS = {
    "rbm_vs_sklearn.py": (["--fashion-n", "200"], {"fashion"}),
    "hardware_fraction.py": (["--hidden", "64", "--batch", "50", "--chains", "16",
                              "--betas", "20"], {"fashion"}),
    "loop_overhead.py": (["--n", "300", "--batch", "100"], {"fashion"}),
    "pipeline_overhead.py": ([], {"snakemake"}),
    "process_cost.py": ([], {"snakemake"}),
    "dbm_log_f.py": (["--hidden1", "16", "--hidden2", "8", "--examples", "2"], set()),
    "nade_pass.py": ([], {"fashion"}),
}

# pipeline_overhead's experiment, smaller than its own default: one RBM on digits, 2 epochs
PIPELINE_PARAMS = {
    "seed": 2016, "seeds": [0], "datasets": {"digits": {}},
    "evaluate": {"ais_chains": 10, "ais_betas": 50, "raise_chains": 1, "importance_samples": 50,
                 "parzen_samples": 200, "n_samples": 64, "n_bootstrap": 10,
                 "ais_convergence": [10, 30]},
    "runs": [{"dataset": "digits", "model": "rbm"}],
    "models": {"rbm": {"train": {"epochs": 2, "batch_size": 100},
                       "model": {"n_hidden": 16}}},
}


def test_every_benchmark_has_a_device_test():
    found = {p.name for p in (REPO / "benchmarks").glob("*.py") if p.name != "common.py"}
    assert found == set(BENCHMARKS), f"benchmarks without a device test: {found - set(BENCHMARKS)}"


@pytest.mark.parametrize("script", list(BENCHMARKS))
def test_benchmark_runs_on_device(script, tmp_path):
    """``python benchmarks/<script> --device <DEVICE> --reps 1`` at small sizes exits with 0 and
    prints its report."""
    args, needs = BENCHMARKS[script]
    if "fashion" in needs and not FASHION_DIR.is_dir():
        pytest.skip(f"{script} reads Fashion-MNIST from {FASHION_DIR}, which is missing: "
                    "apt-get install dataset-fashion-mnist, or copy its four IDX .gz files there")
    if "snakemake" in needs:
        if DEVICE.type != "cuda":
            pytest.skip("the CPU self-check does not run snakemake")
        if importlib.util.find_spec("snakemake") is None or not (
                (Path(sys.executable).parent / "snakemake").exists() or shutil.which("snakemake")):
            pytest.skip(f"{script} runs snakemake (the whole pipeline), which is not installed")
    if script == "pipeline_overhead.py":
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump(PIPELINE_PARAMS, sort_keys=False))
        args = ["--params", str(params)]
    env = dict(os.environ, GM_PROGRESS="0", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, str(REPO / "benchmarks" / script), "--device", str(DEVICE),
           "--reps", "1", *args]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    assert p.returncode == 0, \
        f"{cmd} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    assert "== " in p.stdout, p.stdout[-3000:]
