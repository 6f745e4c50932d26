"""Deep generative stochastic network (book 20.12; Bengio et al. 2014, "Deep generative stochastic
networks trainable by backprop", sec. 3.4 and 5).

The chain carries a latent state h = (h_1, ..., h_L) beside x = h_0, with tied weights W_l
between layers l-1 and l.  One step updates the odd layers from their neighbours, then the
even ones (the DBM-like schedule of the paper's fig. 3), so it realises
p(h_k | h_{k-1}, x_{k-1}) and p(x_k | h_k):

    x~   = salt-and-pepper(x)                                  (input corruption)
    h_l  = a(W_l h_{l-1} + W_{l+1}' h_{l+1} + b_l)             (odd l, then even l >= 2)
    P(x = 1 | h_1) = sigmoid(W_1' h_1 + c)
    a(u) = tanh(u + N(0, s^2)) + N(0, s^2)                     (pre- and post-activation noise)

Training unrolls ``walkback`` steps from a training example (x passed on as its mean) and
minimises the sum of the reconstruction cross-entropies of the example at every step, by
back-propagation through the unrolled chain.  Sampling runs the chain with x drawn from
P(x | h_1).  log_likelihood is the Parzen proxy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.base import Budget, Curve, EitherView, Extras, GenerativeModel, check_data_view
from gm.config import Checked, ranged, require
from gm.models.chains.base import (ChainSampler, chain_extras, check_finite, inpainting_extras,
                                   salt_and_pepper)
from gm.ops import bernoulli
from gm.registry import register

State = tuple[Tensor, ...]   # (x, h_1, ..., h_L)


@dataclass(frozen=True)
class GSNConfig(Checked):
    hidden: tuple[int, ...] = ranged((128, 128), ge=1, each=True)  # the paper's 2-layer deep
                                                   # GSN (1500, 1500 on MNIST)
    input_noise: float = ranged(0.3, ge=0, lt=1)   # salt-and-pepper probability on x
    hidden_noise: float = ranged(0.3, ge=0)        # s of the pre-/post-activation Gaussian
                                                   # noise (paper: 2)
    walkback: int = ranged(4, ge=1)                # unrolled steps per example (paper: 2 * layers)
    lr: float = ranged(1e-3, gt=0)                 # Adam
    sample_steps: int = ranged(100, ge=1)          # chain steps before a sample
    mean_field_x: bool = False             # sampling passes P(x | h_1) on instead of a draw
                                           # (always so on the real view)
    data_view: str = "binary"     # binary | real: the view of the dataset it trains on

    def __post_init__(self):
        super().__post_init__()
        require(len(self.hidden) >= 1, "hidden", "need one or more hidden layers")
        check_data_view(self.data_view)


@register("gsn")
class GSN(EitherView, ChainSampler, GenerativeModel):
    """Layer sizes (d, *hidden); weights[l] (sizes[l+1], sizes[l]), biases[l] (sizes[l],)."""

    Config = GSNConfig
    progress = Curve("loss", "walkback reconstruction cross-entropy (sum over steps)",
                     "nats per image")

    def __init__(self, data_dim: int, config: GSNConfig):
        super().__init__(data_dim, config)
        sizes = (data_dim, *config.hidden)
        self.sizes = sizes
        self.weights = nn.ParameterList(
            nn.Parameter(nn.Linear(sizes[l], sizes[l + 1]).weight.detach())
            for l in range(len(sizes) - 1))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(s)) for s in sizes)
        self.init_chains()                            # base rate (chain starts), Parzen sigma

    # --- the chain -----------------------------------------------------------------------
    def _noise(self, u: Tensor, generator: torch.Generator) -> Tensor:
        s = self.config.hidden_noise
        if s == 0:
            return u
        return u + s * torch.randn(u.shape, generator=generator, device=u.device, dtype=u.dtype)

    def _layer_input(self, state: State, l: int) -> Tensor:
        """W_l h_{l-1} + W_{l+1}' h_{l+1} + b_l for layer l (x is layer 0)."""
        u = self.biases[l].expand(state[0].shape[0], -1)
        if l > 0:
            u = u + F.linear(state[l - 1], self.weights[l - 1])
        if l < len(self.sizes) - 1:
            u = u + F.linear(state[l + 1], self.weights[l].T)
        return u

    def update(self, state: State, generator: torch.Generator) -> tuple[State, Tensor]:
        """One GSN step on (x, h_1..h_L): odd layers, then even layers.

        Returns the new state, with x set to P(x = 1 | h_1), and that mean (n, d).
        """
        layers = list(state)
        layers[0] = salt_and_pepper(layers[0], self.config.input_noise, generator)
        mean = None
        for parity in (1, 0):
            for l in range(parity, len(self.sizes), 2):
                u = self._layer_input(layers, l)
                if l == 0:
                    mean = torch.sigmoid(u)
                    layers[0] = mean
                else:
                    layers[l] = self._noise(torch.tanh(self._noise(u, generator)), generator)
        return tuple(layers), mean

    def start(self, x: Tensor) -> State:
        """The chain's state at x (n, d) with all hidden layers at zero."""
        return (x, *(x.new_zeros(x.shape[0], s) for s in self.sizes[1:]))

    def chain_step(self, state: State, generator: torch.Generator) -> tuple[State, Tensor]:
        """Sampling step: :meth:`update`, then x drawn from P(x | h_1); view = the mean (n, d)."""
        state, mean = self.update(state, generator)
        mean_field = self.config.mean_field_x or self.config.data_view == "real"  # grey levels
        return (mean if mean_field else bernoulli(mean, generator), *state[1:]), mean

    # --- training ------------------------------------------------------------------------
    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        self.base_rate.update(x)
        state, terms = self.start(x), []
        for _ in range(self.config.walkback):
            state, mean = self.update(state, generator)
            terms.append(F.binary_cross_entropy(mean.clamp(1e-6, 1 - 1e-6), x,
                                                reduction="none").sum(1).mean())
        loss = torch.stack(terms).sum()
        check_finite(loss, "gsn")
        self.optimizers()["adam"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers()["adam"].step()
        return {"loss": float(loss.detach()), "recon_nll_step1": float(terms[0].detach()),
                "recon_nll_last": float(terms[-1].detach())}

    # --- sampling and evaluation ---------------------------------------------------------
    def chain_start(self, n: int, generator: torch.Generator) -> State:
        """(x_0, 0, ..., 0): n chains at base-rate draws with every hidden layer at zero."""
        return self.start(self.base_rate.sample(n, generator))

    @torch.no_grad()
    def inpaint(self, x: Tensor, observed: Tensor, generator: torch.Generator) -> Tensor:
        """Fill in x where ``observed`` (d,) bool is False, with x[observed] clamped in the chain."""
        keep = observed.to(x.dtype)
        state = self.chain_start(x.shape[0], generator)
        view = state[0]
        for _ in range(self.config.sample_steps):
            state = (x * keep + state[0] * (1 - keep), *state[1:])
            state, view = self.chain_step(state, generator)
        return x * keep + view * (1 - keep)

    @torch.no_grad()
    def extras(self, x: Tensor, *, generator: torch.Generator, budget: Budget,
               classifier=None) -> Extras:
        out = chain_extras(self.chain_step, lambda m: self.chain_start(m, generator), x,
                           generator, classifier)
        inp = inpainting_extras(self.inpaint, x, generator, classifier)
        out.images |= inp.images
        out.metrics |= inp.metrics
        return out
