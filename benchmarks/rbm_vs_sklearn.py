"""RBM CD-1 training throughput: gm's RBM (as the pipeline trains it) vs scikit-learn's
BernoulliRBM, on the same data with the same hyperparameters, timed alternately in one process.

Both sides run persistent CD-1 (scikit-learn's BernoulliRBM is PCD-1 with one chain per
example of the minibatch, so gm uses persistent=True, n_chains=batch_size), the same learning
rate, no momentum and no weight decay, float32 data, one epoch per repetition.
Target (issue 16): gm at least 1.5x as fast (ratio sklearn_time / gm_time >= 1.5).

A third side times only the matrix products of gm's epoch (per minibatch: p(h | x), the
reconstruction's p(v | h) that its progress curve reports, the chains' p(v | h) and p(h | v),
and the stacked gradient product: 6 products of the layer's size, through gm.linalg as gm
runs them).  sklearn_time / products_time is the ratio gm would reach if everything else in
its update were free: where it is below 1.5, the target cannot be met on that machine.

    python benchmarks/rbm_vs_sklearn.py [--device cuda] [--fashion-n 5000]
"""
from __future__ import annotations

import common  # noqa: F401  (sets the thread env vars before numpy/torch load)
from common import digits_binary, fashion_binary, interleaved, parse, report

import torch
from sklearn.neural_network import BernoulliRBM

import gm
from gm.linalg import mm, moment_difference
from pipeline.train import train_model


def compare(name: str, x, n_hidden: int, batch_size: int, lr: float, args) -> tuple:
    n, d = x.shape
    xt = torch.as_tensor(x, device=args.device)
    torch.manual_seed(0)
    model = gm.build("rbm", d, n_hidden=n_hidden, cd_k=1, persistent=True, n_chains=batch_size,
                     lr=lr, momentum=0.0, weight_decay=0.0).to(args.device)
    g = torch.Generator(device=args.device).manual_seed(0)
    sk = BernoulliRBM(n_components=n_hidden, learning_rate=lr, batch_size=batch_size, n_iter=1,
                      random_state=0)

    def gm_epoch():
        train_model(model, xt, epochs=1, batch_size=batch_size, generator=g)

    def sk_epoch():
        sk.fit(x)   # one pass (n_iter=1) over the same examples in minibatches of batch_size

    W = model.W.detach().clone()
    h = (torch.rand(batch_size, n_hidden, device=args.device) < 0.5).float()

    def products_epoch():
        for xb in xt.split(batch_size):
            ph = mm(xb, W)
            mm(h[:len(xb)], W.T), mm(h, W.T)
            moment_difference(xb, ph, xb, mm(xb, W))

    t = interleaved({"gm": gm_epoch, "sklearn": sk_epoch, "products": products_epoch},
                    args.reps, args.device)
    rows = [(f"{name}: gm RBM examples/s", n / t["gm"], f"{t['gm']:.3f} s/epoch"),
            (f"{name}: sklearn BernoulliRBM examples/s", n / t["sklearn"],
             f"{t['sklearn']:.3f} s/epoch"),
            (f"{name}: speed ratio sklearn_time / gm_time", t["sklearn"] / t["gm"],
             "target >= 1.5"),
            (f"{name}: gm's products alone, ms/epoch", 1e3 * t["products"], ""),
            (f"{name}: ceiling sklearn_time / products_time", t["sklearn"] / t["products"],
             "the ratio if all else were free")]
    return rows


def main() -> None:
    args = parse(__doc__.splitlines()[0],
                 fashion_n=(int, 5000, "Fashion-MNIST training images to use"))
    rows = compare("digits 64x64, batch 20", digits_binary(), 64, 20, 0.05, args)
    rows += compare(f"fashion_mnist[:{args.fashion_n}] 784x500, batch 100",
                    fashion_binary(args.fashion_n), 500, 100, 0.05, args)
    report(f"RBM PCD-1 throughput, device {args.device}, {args.threads} thread(s), "
           f"median of {args.reps}", rows)


if __name__ == "__main__":
    main()
