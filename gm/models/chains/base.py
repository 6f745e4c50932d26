"""Markov chains of autoencoder-based samplers (book sections 20.11-20.12), shared by cae, dae,
gsn (and :func:`check_finite` by diffusion).

A model exposes one chain transition ``step(state, generator) -> (state, view)``: ``state`` is
whatever the chain carries (a tensor, or a tuple for a GSN's latent layers) and ``view`` is the
(n, d) data-space picture of the new state in [0, 1] (the decoder's mean).  From it this module
draws samples and the Parzen proxy with a validation-chosen bandwidth (:class:`ChainSampler`),
starts chains at draws of the training data's base rate (:class:`gm.models.base_rate.BaseRate`),
and measures sample quality as a function of chain length and mixing across classes along one
chain (the report's "chain" figures).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from gm.optim import Adam, Optimizer
from gm.base import Extras
from gm.estimators.parzen import ParzenProxy
from gm.models.base_rate import BaseRate
from gm.ops import bernoulli

Step = Callable[[Any, torch.Generator], tuple[Any, Tensor]]

CHAIN_LENGTHS = (1, 3, 10, 30, 100, 300)   # steps at which chain sample quality is measured
MIXING_STEPS = 300                          # length of the single chain followed across classes
MIXING_FRAMES = 100                         # frames of it drawn in images["chain"]


def salt_and_pepper(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Corruption C(x~ | x): each bit, with probability p, replaced by a fair coin (n, d).

    The binary corruption of Bengio et al. (2013, sec. 4.1) and of GSNs (Bengio et al. 2014).
    """
    hit = bernoulli(torch.full_like(x, p), generator)
    coin = bernoulli(torch.full_like(x, 0.5), generator)
    return x * (1 - hit) + coin * hit


@torch.no_grad()
def run_chain(step: Step, state, n_steps: int, generator: torch.Generator):
    """Apply ``step`` ``n_steps`` times; returns (final state, final view)."""
    view = None
    for _ in range(n_steps):
        state, view = step(state, generator)
    return state, view


@torch.no_grad()
def chain_samples(step: Step, state, n: int, burn_in: int,
                  generator: torch.Generator) -> Tensor:
    """``n`` consecutive views of the parallel chains in ``state`` after ``burn_in`` steps (n, d).

    With m parallel chains each records ceil(n / m) consecutive states after burn-in, the way
    the GSN papers collect Parzen samples from their chains (Bengio et al. 2014, sec. 5).
    """
    state, _ = run_chain(step, state, burn_in, generator)
    views = []
    while sum(v.shape[0] for v in views) < n:
        state, view = step(state, generator)
        views.append(view)
    return torch.cat(views)[:n]


class ChainSampler(ParzenProxy):
    """Mixin of the CAE, DAE and GSN: sampling and the Parzen proxy from their chains.

    The host (a GenerativeModel) defines ``chain_step(state, generator) -> (state, view)``,
    ``config.sample_steps`` (burn-in) and ``config.lr`` (Adam on every parameter), calls
    :meth:`init_chains` in ``__init__`` and ``self.base_rate.update(x)`` on every training
    batch; it may override :meth:`chain_start` (n chains at noise: base-rate draws).
    ``prepare_evaluation`` and ``log_likelihood`` are those of
    :class:`gm.estimators.parzen.ParzenProxy`: sigma is chosen on validation data, as for the
    implicit generators; until it is, the proxy uses ``budget.parzen_sigma`` (or cross-fitting
    when that is None), labelled info["sigma_from_validation"] = 0.
    """

    PARZEN_CHAINS = 100   # parallel chains the Parzen samples are collected from

    def init_chains(self) -> None:
        """Register ``base_rate``, the training data's pixel means that chains start from, and
        the Parzen bandwidth buffer."""
        self.base_rate = BaseRate(self.data_dim)
        self.init_parzen_sigma()

    def make_optimizers(self) -> dict[str, Optimizer]:
        return {"adam": Adam(self.parameters(), lr=self.config.lr)}

    def chain_start(self, n: int, generator: torch.Generator):
        """The state of n chains at noise: independent base-rate draws x_0 (n, d)."""
        return self.base_rate.sample(n, generator)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        """The views (n, d) in [0, 1] of n chains from noise after ``sample_steps`` steps."""
        _, view = run_chain(self.chain_step, self.chain_start(n, generator),
                            self.config.sample_steps, generator)
        return view

    @torch.no_grad()
    def parzen_centers(self, m: int, generator: torch.Generator) -> Tensor:
        """(m, d) consecutive views of PARZEN_CHAINS chains after burn-in, see
        :func:`chain_samples` (the way the GSN papers collect their Parzen samples)."""
        return chain_samples(self.chain_step, self.chain_start(self.PARZEN_CHAINS, generator),
                             m, self.config.sample_steps, generator)


def _class_stats(logits: Tensor) -> dict[str, float]:
    """Mean max class probability and entropy (nats) of the predicted-class histogram."""
    p = logits.softmax(1)
    counts = torch.bincount(p.argmax(1), minlength=p.shape[1]).double()
    freq = counts / counts.sum()
    ent = -(freq[freq > 0] * freq[freq > 0].log()).sum()
    return {"confidence": float(p.max(1).values.mean()), "class_entropy": float(ent)}


def _nn_distance(views: Tensor, x: Tensor) -> float:
    """Mean over samples of the squared Euclidean distance to the nearest example of x."""
    return float(torch.cdist(views.double(), x.double()).min(1).values.pow(2).mean())


@torch.no_grad()
def chain_extras(step: Step, start: Callable[[int], Any], x: Tensor, generator: torch.Generator,
                 classifier=None, n_chains: int = 100) -> Extras:
    """Sample quality as a function of chain length, and mixing along one chain.

    step: the chain transition; start(m) -> initial state of m chains (noise).
    x: (n, d) test data, the reference for the nearest-neighbour distance.
    classifier: (m, d) -> (m, n_classes) logits or None.

    Returns Extras with table "chain_length" (rows: steps, nn_distance, and with a classifier
    confidence and class_entropy), images["chain"] (MIXING_FRAMES consecutive views of one
    chain) and metrics chain_nn_distance_<L>, chain_class_switches, chain_classes_visited.
    """
    out = Extras()
    state, done, rows = start(n_chains), 0, []
    for length in CHAIN_LENGTHS:
        state, view = run_chain(step, state, length - done, generator)
        done = length
        row = {"steps": length, "nn_distance": _nn_distance(view, x)}
        if classifier is not None:
            row |= _class_stats(classifier(view))
        rows.append(row)
        out.metrics[f"chain_nn_distance_{length}"] = row["nn_distance"]
    out.tables["chain_length"] = rows

    state, frames = start(1), []
    for _ in range(MIXING_STEPS):
        state, view = step(state, generator)
        frames.append(view)
    frames = torch.cat(frames)                                  # (MIXING_STEPS, d)
    out.images["chain"] = frames[:MIXING_FRAMES].clamp(0, 1)
    if classifier is not None:
        classes = classifier(frames).argmax(1)
        out.metrics["chain_class_switches"] = float((classes[1:] != classes[:-1]).sum())
        out.metrics["chain_classes_visited"] = float(classes.unique().numel())
        out.tables["chain_classes"] = [{"step": i + 1, "class": int(c)}
                                       for i, c in enumerate(classes.tolist())]
    return out


def check_finite(loss: Tensor, name: str) -> None:
    """Raise DivergenceError when a training loss is NaN or infinite."""
    if not math.isfinite(float(loss.detach())):
        from gm.errors import DivergenceError
        raise DivergenceError(f"{name}: non-finite training loss {float(loss)}; lower lr")


def top_half(d: int, device=None) -> Tensor:
    """(d,) bool mask of the first half of the pixels: the top half of a row-major image."""
    return torch.arange(d, device=device) < d // 2


@torch.no_grad()
def inpainting_extras(inpaint, x: Tensor, generator: torch.Generator, classifier=None,
                      n_show: int = 10) -> Extras:
    """Fill the bottom half of test images with the top half clamped.

    images["inpainting"]: 3 * n_show rows, in this order: the originals, the inputs (missing
    half grey 0.5), the completions.  metrics: inpainting_pixel_accuracy (completion > 0.5
    vs truth on the missing pixels of all of x) and, with a classifier, inpainting_class_agreement
    (same predicted class for completion and original).
    """
    observed = top_half(x.shape[1], x.device)
    filled = inpaint(x, observed, generator)
    miss = ~observed
    acc = ((filled[:, miss] > 0.5).to(x.dtype) == x[:, miss]).to(torch.float64).mean()
    out = Extras(metrics={"inpainting_pixel_accuracy": float(acc)})
    masked = torch.where(observed, x, torch.full_like(x, 0.5))
    k = min(n_show, x.shape[0])
    out.images["inpainting"] = torch.cat([x[:k], masked[:k], filled[:k]]).clamp(0, 1)
    if classifier is not None:
        agree = classifier(filled).argmax(1) == classifier(x).argmax(1)
        out.metrics["inpainting_class_agreement"] = float(agree.double().mean())
    return out
