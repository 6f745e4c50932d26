"""The importance-weighted bound on a Gaussian toy model with a closed-form marginal."""
import math

import torch

from gm.estimators.importance import importance_log_likelihood, iwae_bound

# z ~ N(0, 1), x | z ~ N(z, 1): p(x) = N(x; 0, 2), p(z | x) = N(x / 2, 1 / 2)
X = torch.tensor([-2.5, 2.0, 3.0])  # far from the prior mean: clear gaps between k
EXACT = -0.25 * X.double() ** 2 - 0.5 * math.log(4 * math.pi)


def log_normal(v, mean, var):
    return -0.5 * (v - mean) ** 2 / var - 0.5 * math.log(2 * math.pi * var)


def weights(gen, q_mean, q_var):
    def log_weights(x, m):
        z = q_mean(x) + math.sqrt(q_var) * torch.randn(m, x.shape[0], generator=gen)
        return log_normal(x, z, 1.0) + log_normal(z, 0.0, 1.0) - log_normal(z, q_mean(x), q_var)
    return log_weights


def test_iwae_bound_of_constant_weights():
    assert torch.allclose(iwae_bound(torch.full((7, 3), -1.5)), torch.full((3,), -1.5))


def test_exact_posterior_proposal_gives_the_exact_value():
    gen = torch.Generator().manual_seed(0)
    est = importance_log_likelihood(X, weights(gen, lambda x: x / 2, 0.5), 3)
    assert torch.allclose(est, EXACT, atol=1e-5)


def test_prior_proposal_bound_is_below_and_rises_with_k():
    gen = torch.Generator().manual_seed(1)
    lw = weights(gen, lambda x: torch.zeros_like(x), 1.0)
    reps = {k: torch.stack([importance_log_likelihood(X, lw, k, chunk=37)
                            for _ in range(300 if k <= 100 else 10)]) for k in (1, 10, 100, 5000)}
    means = {k: r.mean(0) for k, r in reps.items()}
    se = {k: r.std(0) / r.shape[0] ** 0.5 for k, r in reps.items()}
    assert torch.all(means[1] < means[10]) and torch.all(means[10] < means[100])
    assert torch.all(means[10] < EXACT) and torch.all(means[100] < EXACT + 3 * se[100])
    assert torch.allclose(means[5000], EXACT, atol=0.05)


def test_examples_go_in_batches_when_samples_times_examples_exceed_the_row_cap():
    """No call sees more than `rows` (sample, example) rows, and every example's bound uses
    its own k samples: with a deterministic proposal the batched and unbatched values agree."""
    x = torch.linspace(-3, 3, 50)
    seen = []

    def lw(xb, m):
        seen.append(m * xb.shape[0])
        z = (xb / 2).expand(m, -1)          # the exact posterior mean: weights constant in z
        return log_normal(xb, z, 1.0) + log_normal(z, 0.0, 1.0) - log_normal(z, xb / 2, 0.5)
    whole = importance_log_likelihood(x, lw, 30, chunk=7)
    assert max(seen) == 7 * 50
    seen.clear()
    batched = importance_log_likelihood(x, lw, 30, chunk=7, rows=60)
    assert max(seen) <= 60 and sum(seen) == 30 * 50
    torch.testing.assert_close(batched, whole)
