"""DBM log f(v) by enumeration: gm's blocked kernel (gm.ops.softplus_sums, cache-sized blocks)
against the one-pass formula it replaced, F.softplus(a[:, None] + W2 h2).sum(-1) over every
state of the smaller hidden layer, timed alternately in one process on the same examples.

Shapes default to the digits DBM of configs/tuned/digits/dbm.yaml (64-246-17: 2**17 states of
h2, 246 units of h1 summed out), float64, the first --examples binarized digits; the
values agree (printed: the largest difference in nats).  No target of its own: it measures
the change that took the default run's DBM evaluation from 128 to about 50 CPU-s per seed.

    python benchmarks/dbm_log_f.py [--device cuda] [--hidden1 246] [--hidden2 17] [--examples 8]
"""
from __future__ import annotations

import common  # noqa: F401
from common import digits_binary, interleaved, parse, report

import torch
import torch.nn.functional as F

import gm
from gm.base import Budget
from gm.estimators.exact import binary_states


def main() -> None:
    args = parse(__doc__.splitlines()[0], hidden1=(int, 246, "units in h1"),
                 hidden2=(int, 17, "units in h2 (enumerated)"),
                 examples=(int, 8, "test examples"))
    torch.manual_seed(0)
    model = gm.build("dbm", 64, n_hidden1=args.hidden1, n_hidden2=args.hidden2).to(args.device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    x = torch.as_tensor(digits_binary()[:args.examples], device=args.device)
    budget = Budget()

    def one_pass():
        W1, W2, b, c1, c2 = model._params64()
        h = binary_states(W2.shape[1], device=x.device, dtype=torch.float64)
        top, down = h @ c2, h @ W2.T
        return x.double() @ b + torch.cat([
            torch.logsumexp(top + F.softplus((u @ W1 + c1)[:, None] + down).sum(-1), 1)
            for u in x.double().split(1)])

    gap = float((model.log_f(x, budget) - one_pass()).abs().max())
    t = interleaved({"blocked": lambda: model.log_f(x, budget), "one_pass": one_pass},
                    args.reps, args.device)
    report(f"DBM log f, 64-{args.hidden1}-{args.hidden2}, {args.examples} examples, "
           f"device {args.device}", [
               ("one-pass formula (s per example)", t["one_pass"] / args.examples, ""),
               ("gm blocked kernel (s per example)", t["blocked"] / args.examples, ""),
               ("speed-up one_pass / blocked", t["one_pass"] / t["blocked"], ""),
               ("largest difference (nats)", gap, "rounding, and softplus's threshold 20")])


if __name__ == "__main__":
    main()
