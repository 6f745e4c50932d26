"""Deep belief network (book section 20.3; Hinton, Osindero & Teh 2006).

A stack of L binary RBMs trained greedily, one layer at a time: layer l is trained (CD-k or
PCD, :class:`~gm.models.energy.rbm.RBM`) on samples of h_l ~ Q(h_l | h_{l-1}) propagated up through the
layers below.  The generative model is the top RBM over (h_{L-1}, h_L) with directed sigmoid
layers p(h_{l-1} | h_l) below it; sampling runs Gibbs in the top RBM then one ancestral pass down.

log p(v) is bounded below with the up-pass Q(h | v) = prod_l Q(h_l | h_{l-1}) as the proposal
(Salakhutdinov & Murray 2008, sec. 5), in its importance-weighted form
log (1/k) sum_i p(v, h^i) / Q(h^i | v) (Burda et al. 2016), which is >= the variational bound in
expectation and tends to log p(v) as k grows; log Z of the top RBM is exact when it is small
enough ("iw_bound+exact_logz", kind "lower_bound"), else AIS ("iw_bound+ais_logz", kind
"estimate": log Z-hat is biased low, so the value is biased high and can lie above log p(v),
tests/test_dbn.py): the top RBM's own ``exact_log_z`` and ``log_z_ais``
(:class:`~gm.models.energy.base.EnergyModel`).  The DBN is
not itself an energy model (its lower layers are directed), so it has no single annealing path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.base import Budget, Curve, GenerativeModel, LogLikelihood
from gm.config import ranged, require
from gm.estimators.importance import importance_log_likelihood
from gm.models.energy.base import CDConfig
from gm.models.energy.rbm import RBM, RBMConfig
from gm.ops import bernoulli
from gm.registry import register


@dataclass(frozen=True)
class DBNConfig(CDConfig):
    """Layer sizes and greedy schedule; the CDConfig fields train every layer's RBM
    (sample_steps: Gibbs steps in the top RBM per sample() chain)."""

    hidden: tuple[int, ...] = ranged((32, 16), ge=1, each=True)  # sizes of h_1 ... h_L
    layer_epochs: tuple[int, ...] = ranged((10, 10), ge=1, each=True)  # greedy schedule; the
                                                            # top layer keeps training after

    def __post_init__(self):
        super().__post_init__()
        require(2 <= len(self.hidden) <= 4, "hidden",
                f"must be 2 to 4 layer sizes, got {list(self.hidden)}")
        require(len(self.layer_epochs) == len(self.hidden), "layer_epochs",
                f"must give the epochs of each of the {len(self.hidden)} layers, "
                f"got {list(self.layer_epochs)}")

    def rbm_config(self, n_hidden: int) -> RBMConfig:
        return RBMConfig(n_hidden=n_hidden, **self.cd_fields())


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """sum_i log Bernoulli(x_i; sigmoid(logits_i)) over the last dim, (...,)."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


@register("dbn")
class DBN(GenerativeModel):
    """Layers: RBMs of sizes (d, h_1), (h_1, h_2), ...; the last one is the top RBM."""

    Config = DBNConfig
    progress = Curve("recon_error", "reconstruction error of the layer in training (greedy)",
                     "squared error per input")

    def __init__(self, data_dim: int, config: DBNConfig):
        super().__init__(data_dim, config)
        sizes = (data_dim, *config.hidden)
        self.layers = nn.ModuleList(RBM(sizes[i], config.rbm_config(sizes[i + 1]))
                                    for i in range(len(config.hidden)))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.int64))

    @property
    def current_layer(self) -> int:
        """The layer the greedy schedule trains now."""
        ends = torch.tensor(self.config.layer_epochs).cumsum(0)
        return min(int((ends <= int(self.epochs_done)).sum()), len(self.layers) - 1)

    def make_optimizers(self):
        return {f"layer{i}": rbm.optimizers()["sgd"] for i, rbm in enumerate(self.layers)}

    @torch.no_grad()
    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        layer = self.current_layer
        for rbm in self.layers[:layer]:
            x = bernoulli(rbm.p_h(x), generator)
        out = self.layers[layer].fit_step(x, generator=generator)
        return {**out, "layer": float(layer)}

    def end_epoch(self, epoch: int) -> dict[str, float]:
        self.epochs_done += 1
        return {"layer": float(self.current_layer)}

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        h = self.layers[-1].sample(n, generator=generator)        # Gibbs in the top RBM
        for rbm in reversed(self.layers[:-1]):                    # ancestral pass down
            h = bernoulli(rbm.p_v(h), generator)
        return h

    # --- likelihood ------------------------------------------------------------------------
    def log_weights(self, v: Tensor, m: int, log_z_top: float,
                    generator: torch.Generator) -> Tensor:
        """(m, n) log p(v, h) - log Q(h | v) for m up-pass samples h ~ Q(. | v) per example."""
        x = v.unsqueeze(0).expand(m, -1, -1)
        log_w = torch.zeros(x.shape[:2], dtype=torch.float64, device=v.device)
        for rbm in self.layers[:-1]:
            up = x @ rbm.W + rbm.c
            h = bernoulli(torch.sigmoid(up), generator)
            log_w += (bernoulli_log_prob(x, h @ rbm.W.T + rbm.b)    # log p(h_{l-1} | h_l)
                      - bernoulli_log_prob(h, up)).double()         # - log Q(h_l | h_{l-1})
            x = h
        top = self.layers[-1]
        return log_w - top.free_energy(x.reshape(-1, x.shape[-1])).reshape(x.shape[:2]).double() \
            - log_z_top

    def per_example_cost(self, budget: Budget) -> bool:
        return True                     # importance sampling, k samples per example

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        """The k-sample importance-weighted bound (k = budget.importance_samples) with the top
        RBM's log Z: kind "lower_bound" when log Z is exact, "estimate" when it is an AIS
        estimate (biased low, so the value is biased high)."""
        top = self.layers[-1]
        log_z, se, z_method = top.exact_log_z(budget), 0.0, "exact"
        if log_z is None:
            res = top.log_z_ais(budget, generator)
            log_z, se, z_method = res.log_z, res.stderr, "ais"
        k = budget.importance_samples
        values = importance_log_likelihood(
            x, lambda v, m: self.log_weights(v, m, log_z, generator), k)
        return LogLikelihood(values, f"iw_bound+{z_method}_logz",
                             "lower_bound" if z_method == "exact" else "estimate",
                             shared_stderr=se,
                             info={"log_z_top": log_z, "log_z_top_stderr": se,
                                   "importance_samples": k})
