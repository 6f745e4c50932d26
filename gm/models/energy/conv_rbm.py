"""Convolutional RBM with probabilistic max-pooling (book section 20.6; Lee et al. 2009).

Visible image v (H, W) binary; K filters W^k (f, f) shared over positions, giving hidden
maps h^k of size (H - f + 1, W - f + 1) ("valid" convolution).  The energy is

    E(v, h) = -sum_k sum_ij h^k_ij ((W^k * v)_ij + b_k) - c'v,

where * is cross-correlation, subject to the probabilistic max-pooling constraint: within
each non-overlapping C x C block of a hidden map at most one unit is on; the pooling unit
of the block is on iff one of them is (Lee et al. 2009, sec. 3.3).  ``pool = 1`` is the
plain convolutional RBM.  Given v the blocks are independent (C^2 + 1)-way softmaxes, so
the free energy is tractable:

    F(v) = -c'v - sum_k sum_blocks log(1 + sum_{ij in block} exp(I^k_ij)),  I^k = W^k * v + b_k,

and given h the pixels are independent: P(v = 1 | h) = sigmoid(c + sum_k W^k (x) h^k)
(full convolution, the adjoint of ``conv2d``).  Training is CD-k / PCD by differentiating
F(v_data) - F(v_model).  log p(v) = -F(v) - log Z is exact by enumerating the pixels of
tiny images, else log Z is estimated by AIS from a base-rate model along
:class:`ConvRBMAnnealingPath`, with reverse AIS (RAISE) from each test image on the same
path giving the lower side of a stochastic sandwich (Burda et al. 2015).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.base import Budget, Curve, Extras
from gm.config import ranged, require
from gm.errors import ConfigError
from gm.estimators.exact import enumerate_log_z
from gm.models.base_rate import base_rate_logit
from gm.models.energy.base import BaseRatePath, CDConfig, EnergyModel
from gm.ops import bernoulli
from gm.registry import register


@dataclass(frozen=True)
class ConvRBMConfig(CDConfig):
    n_filters: int = ranged(16, ge=1)
    filter_size: int = ranged(3, ge=1)
    pool: int = ranged(2, ge=1)   # C: probabilistic max-pooling block side (1 = no pooling)
    image_shape: tuple[int, ...] = ranged((), ge=1, each=True)  # (H, W); empty = square image
                                                                # of side sqrt(data_dim)
    shared_visible_bias: bool = False   # one visible bias (Lee et al.) or one per pixel

    def __post_init__(self):
        super().__post_init__()
        require(len(self.image_shape) in (0, 2), "image_shape",
                f"must be [] or [H, W], got {list(self.image_shape)}")


def _image_shape(data_dim: int, config: ConvRBMConfig) -> tuple[int, int]:
    """(H, W) of the images, checked against data_dim, filter_size and pool."""
    if config.image_shape:
        h, w = config.image_shape
    else:
        h = w = math.isqrt(data_dim)
    if h * w != data_dim:
        raise ConfigError("image_shape",
                          f"{h} x {w} images do not have data_dim = {data_dim} pixels",
                          "set image_shape: [H, W] for non-square images")
    for side in (h, w):
        hid = side - config.filter_size + 1
        if hid < 1 or hid % config.pool:
            raise ConfigError("filter_size",
                              f"hidden maps of side {side} - {config.filter_size} + 1 = {hid} "
                              f"cannot be tiled by {config.pool} x {config.pool} pooling blocks",
                              "choose filter_size and pool so that (side - filter_size + 1) "
                              "is a positive multiple of pool")
    return h, w


@register("conv_rbm")
class ConvRBM(EnergyModel):
    """Convolutional RBM: filters W (K, 1, f, f), hidden biases b (K,), visible bias c (H, W)
    or (1, 1).  Data are flat images (n, H * W)."""

    Config = ConvRBMConfig
    progress = Curve("recon_error", "reconstruction error (CD has no tractable objective)",
                     "squared error per image")

    def __init__(self, data_dim: int, config: ConvRBMConfig):
        super().__init__(data_dim, config)
        self.shape = _image_shape(data_dim, config)
        k, f = config.n_filters, config.filter_size
        # initial weights come from torch's global RNG, which the pipeline seeds per run
        self.W = nn.Parameter(config.init_std * torch.randn(k, 1, f, f))
        self.b = nn.Parameter(torch.zeros(k))
        self.c = nn.Parameter(torch.zeros((1, 1) if config.shared_visible_bias else self.shape))
        self.register_buffer(  # persistent negative chains (PCD), started at the first update
            "chains", torch.zeros(config.n_chains if config.persistent else 0, data_dim))

    # --- conditionals and energies -------------------------------------------------------
    def hidden_input(self, v: Tensor, W: Tensor | None = None, b: Tensor | None = None) -> Tensor:
        """I^k = W^k * v + b_k for flat images v (n, H*W): (n, K, Hh, Wh)."""
        W = self.W if W is None else W
        b = self.b if b is None else b
        return F.conv2d(v.reshape(-1, 1, *self.shape), W) + b.reshape(1, -1, 1, 1)

    def visible_input(self, h: Tensor, W: Tensor | None = None) -> Tensor:
        """sum_k W^k (x) h^k (full convolution) for h (n, K, Hh, Wh): (n, H*W), no bias."""
        W = self.W if W is None else W
        return F.conv_transpose2d(h, W).flatten(1)

    def visible_bias(self) -> Tensor:
        """c broadcast to (H*W,)."""
        return self.c.expand(*self.shape).reshape(-1)

    def _upsample(self, a: Tensor) -> Tensor:
        """(n, K, Hp, Wp) block values -> (n, K, Hh, Wh), each repeated over its C x C block."""
        c = self.config.pool
        return a.repeat_interleave(c, dim=-2).repeat_interleave(c, dim=-1)

    def block_log_partition(self, inp: Tensor) -> Tensor:
        """log(1 + sum_{block} exp(I)) per pooling block: (n, K, Hh, Wh) -> (n, K, Hp, Wp).

        Pooling ops on the maps as they lie (no block permute): softplus of the block
        logsumexp, taken stably about the block maximum."""
        c = self.config.pool
        m = F.max_pool2d(inp, c)
        block_sum = F.avg_pool2d(torch.exp(inp - self._upsample(m)), c) * (c * c)
        return F.softplus(m + torch.log(block_sum))

    def sample_hidden(self, inp: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Sample h ~ P(h | v) given I (n, K, Hh, Wh): each block is one draw from the softmax
        over "all off" (logit 0) and its C*C units (logits I).  Drawn by the Gumbel-max trick
        with max pooling: the largest of I + Gumbel noise in a block wins if it beats the
        "off" state's own Gumbel noise.  Returns (h (n, K, Hh, Wh), pooling units (n, K, Hp, Wp))."""
        c = self.config.pool
        n, k, hh, wh = inp.shape
        best, where = F.max_pool2d(inp + self._gumbel(inp.shape, inp, generator), c,
                                   return_indices=True)
        on = (best > self._gumbel((n, k, hh // c, wh // c), inp, generator)).to(inp.dtype)
        h = F.max_unpool2d(on, where, c, output_size=(hh, wh))
        return h, on

    @staticmethod
    def _gumbel(shape, like: Tensor, generator: torch.Generator) -> Tensor:
        """Standard Gumbel noise -log(-log U) of ``shape``, dtype and device of ``like``."""
        u = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
        return -torch.log(-torch.log(u.clamp_min(torch.finfo(like.dtype).tiny)))

    def p_v(self, h: Tensor) -> Tensor:
        """P(v_i = 1 | h), (n, H*W)."""
        return torch.sigmoid(self.visible_input(h) + self.visible_bias())

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v), so that p(v) = exp(-F(v)) / Z; v (n, H*W) -> (n,)."""
        lse = self.block_log_partition(self.hidden_input(v))
        return -(v @ self.visible_bias()) - lse.flatten(1).sum(1)

    def gibbs(self, v: Tensor, steps: int, generator: torch.Generator) -> Tensor:
        """``steps`` rounds of block Gibbs sampling v -> h -> v."""
        for _ in range(steps):
            h, _ = self.sample_hidden(self.hidden_input(v), generator)
            v = bernoulli(self.p_v(h), generator)
        return v

    # --- training ------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Add x to the base rate; the first batch starts the visible biases c at its
        base-rate logits (Hinton 2010), averaged over pixels when c is shared."""
        if self.base_rate.count == 0:
            logit = base_rate_logit(x).to(self.c.dtype)
            self.c.copy_(logit.mean().reshape(1, 1) if self.config.shared_visible_bias
                         else logit.reshape(self.shape))
        self.base_rate.update(x)

    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        self.observe(x)
        # CD/PCD: the gradient of -log p(x) is dF(x)/dtheta - E_model[dF(v)/dtheta]
        gap = self.free_energy_update(x, generator)
        with torch.no_grad():
            h, _ = self.sample_hidden(self.hidden_input(x), generator)
            recon = self.p_v(h)
        return {"recon_error": float(((x - recon) ** 2).sum(1).mean()),
                "free_energy_gap": float(gap)}

    # --- likelihood ----------------------------------------------------------------------
    @torch.no_grad()
    def exact_log_z(self, budget: Budget) -> float | None:
        """Exact log Z = log sum_v exp(-F(v)) by enumerating all 2^(H*W) images (float64)."""
        if self.data_dim > budget.exact_max_bits:
            return None
        return float(enumerate_log_z(self.neg_free_energy, self.data_dim,
                                     max_bits=budget.exact_max_bits, chunk=2**12,
                                     device=self.W.device))

    @torch.no_grad()
    def neg_free_energy(self, v: Tensor) -> Tensor:
        """-F(v) in float64, (n,): the annealing path's target (beta = 1)."""
        return self.annealing_path().log_f(v.double(), 1.0)

    def log_f(self, x: Tensor, budget: Budget) -> Tensor:
        return self.neg_free_energy(x)

    def annealing_path(self) -> "ConvRBMAnnealingPath":
        return ConvRBMAnnealingPath(self)

    @torch.no_grad()
    def extras(self, x, *, generator, budget, classifier=None) -> Extras:
        """images["filters"]: each filter, min-max scaled, centred on a blank image (K, H*W)."""
        k, f = self.config.n_filters, self.config.filter_size
        w = self.W.detach().reshape(k, -1)
        w = (w - w.min(1, keepdim=True).values) / (w.max(1, keepdim=True).values
                                                    - w.min(1, keepdim=True).values + 1e-12)
        canvas = torch.zeros(k, *self.shape, device=w.device)
        top, left = (self.shape[0] - f) // 2, (self.shape[1] - f) // 2
        canvas[:, top:top + f, left:left + f] = w.reshape(k, f, f)
        return Extras(images={"filters": canvas.reshape(k, -1).cpu()})


class ConvRBMAnnealingPath(BaseRatePath):
    """p_beta(v) ∝ exp(((1-beta) b_A + beta c)'v) prod_blocks (1 + sum_block exp(beta I(v))).

    The joint is p_beta(v, h) ∝ exp((1-beta) b_A'v - beta E(v, h)) under the pooling
    constraint.  beta = 0 is the base-rate model with biases b_A = logit(data mean), whose
    hidden blocks are uniform over their C^2 + 1 states, so
    Z_0 = prod_i (1 + exp(b_A,i)) (C^2 + 1)^(number of blocks)
    (Salakhutdinov & Murray 2008, sec. 4.2, with Lee et al.'s blocks in place of units).
    """

    def __init__(self, model: ConvRBM):
        super().__init__(model.base_rate_logits())
        self.model = model
        self.W, self.b = model.W.detach().double(), model.b.detach().double()
        self.c = model.visible_bias().detach().double()
        hh, wh = (s - model.config.filter_size + 1 for s in model.shape)
        self.n_blocks = model.config.n_filters * (hh // model.config.pool) * (wh // model.config.pool)

    def base_log_z(self) -> float:
        return float(F.softplus(self.b_a).sum()
                     + self.n_blocks * math.log(self.model.config.pool ** 2 + 1))

    def log_f(self, v: Tensor, beta: float) -> Tensor:
        inp = beta * self.model.hidden_input(v, self.W, self.b)
        return (v @ ((1 - beta) * self.b_a + beta * self.c)
                + self.model.block_log_partition(inp).flatten(1).sum(1))

    def transition(self, v: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        h, _ = self.model.sample_hidden(beta * self.model.hidden_input(v, self.W, self.b),
                                        generator)
        act = (1 - beta) * self.b_a + beta * (self.c + self.model.visible_input(h, self.W))
        return bernoulli(torch.sigmoid(act), generator)
