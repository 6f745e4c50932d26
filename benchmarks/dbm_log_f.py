"""DBM log f(v) by enumeration: gm's kernel (the factored products of
gm/models/energy/factored_softplus.py, as DBM.log_f runs it) against the blocked exp form it
replaced (gm.ops.softplus_sums, per example) and the one-pass formula before that,
F.softplus(a[:, None] + W2 h2).sum(-1), over every state of the smaller hidden layer, timed
alternately in one process on the same examples.

Shapes default to the digits DBM of configs/tuned/digits/dbm.yaml (64-246-17: 2**17 states of
h2, 246 units of h1 summed out), float64, the first --examples binarized digits; the
values agree (printed: the largest differences in nats).  No target of its own: it measures
the kernels of the default run's costliest evaluation (the DBM's, 3 seeds).

    python benchmarks/dbm_log_f.py [--device cuda] [--hidden1 246] [--hidden2 17] [--examples 16]
"""
from __future__ import annotations

import common  # noqa: F401
from common import digits_binary, interleaved, parse, report

import torch
import torch.nn.functional as F

import gm
from gm.base import Budget
from gm.estimators.exact import binary_states
from gm.ops import softplus_sums


def main() -> None:
    args = parse(__doc__.splitlines()[0], hidden1=(int, 246, "units in h1"),
                 hidden2=(int, 17, "units in h2 (enumerated)"),
                 examples=(int, 16, "test examples"))
    torch.manual_seed(0)
    model = gm.build("dbm", 64, n_hidden1=args.hidden1, n_hidden2=args.hidden2).to(args.device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    x = torch.as_tensor(digits_binary()[:args.examples], device=args.device)
    budget = Budget()

    def by_example(sums):
        """log f(x) with the softplus sums of each example by ``sums(a (1, k), down (S, k))``."""
        W1, W2, b, c1, c2 = model._params64()
        h = binary_states(W2.shape[1], device=x.device, dtype=torch.float64)
        top, down = h @ c2, h @ W2.T
        return x.double() @ b + torch.cat([torch.logsumexp(top + sums(u @ W1 + c1, down), 1)
                                           for u in x.double().split(1)])

    def one_pass():
        return by_example(lambda a, down: F.softplus(a[:, None] + down).sum(-1))

    def blocked():
        return by_example(softplus_sums)

    new = model.log_f(x, budget)
    gaps = [float((new - f()).abs().max()) for f in (blocked, one_pass)]
    t = interleaved({"factored": lambda: model.log_f(x, budget), "blocked": blocked,
                     "one_pass": one_pass}, args.reps, args.device)
    report(f"DBM log f, 64-{args.hidden1}-{args.hidden2}, {args.examples} examples, "
           f"device {args.device}", [
               ("one-pass formula (s per example)", t["one_pass"] / args.examples, ""),
               ("blocked exp form, gm.ops.softplus_sums (s per example)",
                t["blocked"] / args.examples, ""),
               ("gm factored products, DBM.log_f (s per example)",
                t["factored"] / args.examples, ""),
               ("speed-up blocked / factored", t["blocked"] / t["factored"], ""),
               ("speed-up one_pass / factored", t["one_pass"] / t["factored"], ""),
               ("largest difference from blocked (nats)", gaps[0], f"{gaps[0]:.1e}: rounding"),
               ("largest difference from one-pass (nats)", gaps[1],
                f"{gaps[1]:.1e}: rounding, and softplus's threshold 20")])

if __name__ == "__main__":
    main()
