"""Classifier "inception score" (Salimans et al. 2016, sec. 4).

IS = exp(E_x KL(p(y|x) || p(y))), p(y) = E_x p(y|x), with our own classifier of the dataset's
labels in place of Inception.  It ranges from 1 (every sample gets the same prediction) to the
number of classes (confident predictions spread uniformly over the classes); it ignores the
data except through the classifier, so its floor is the held-out data's own score.
"""
from __future__ import annotations

import torch
from torch import Tensor


def inception_score(probs: Tensor, weights: Tensor | None = None) -> float:
    """IS of class probabilities (n, n_classes); weights: optional multiplicities (n,)."""
    p = probs.double()
    w = torch.ones(len(p), dtype=p.dtype) if weights is None else weights.to(p.dtype)
    w = w / w.sum()
    marginal = w @ p
    kl = (torch.special.xlogy(p, p) - torch.special.xlogy(p, marginal[None, :])).sum(1)
    return float(torch.exp(w @ kl))


def inception_score_from_logits(logits: Tensor) -> float:
    """IS of classifier logits (n, n_classes)."""
    return inception_score(torch.softmax(logits.double(), dim=1))
