"""Fraction of the hardware limit: the RBM update and the AIS inner loop against bare
matrix multiplies of the same shapes and dtype, timed alternately in the same process.

The bare side is the matmul work the algorithm cannot avoid, on the fastest kernel torch has
for it (both torch's ``@`` (MKL) and gm.linalg's oneDNN path are timed; the faster counts):
  CD-1 update (batch B, D visible, H hidden, float32): p(h|x) (B,D)x(D,H), p(v|h) (B,H)x(H,D),
    p(h|v-) (B,D)x(D,H) and the two gradient products (D,B)x(B,H): 5 matmuls;
  AIS step (M chains): v W for the weight and the h-update (M,D)x(D,H), and h W' for the
    v-update (M,H)x(H,D): 2 matmuls per intermediate distribution, both float64 (the algorithm
    with float64 weights).  gm makes the transition's h W' in float32 (the parameters' dtype;
    the log-weights stay float64), so the AIS side also prints the fraction of its own limit,
    one float64 and one float32 product.
fraction = bare_time / gm_time.  Target (issue 16): >= 0.85 (against the float64 products).

    python benchmarks/hardware_fraction.py [--device cuda] [--hidden 500] [--betas 200]
"""
from __future__ import annotations

import common  # noqa: F401
from common import fashion_binary, interleaved, parse, report

import torch

import gm
from gm.estimators.ais import ais_log_z, beta_schedule
from gm.linalg import mm


def rbm_update(x: torch.Tensor, hidden: int, args) -> list:
    B, D = x.shape
    torch.manual_seed(0)
    model = gm.build("rbm", D, n_hidden=hidden, cd_k=1).to(args.device)
    g = torch.Generator(device=args.device).manual_seed(0)
    steps = 20
    W = model.W.detach().clone()
    h = torch.rand(B, hidden, device=args.device)

    def gm_side():
        for _ in range(steps):
            model.fit_step(x, generator=g)

    def bare_mkl():
        for _ in range(steps):
            x @ W, h @ W.T, x @ W, x.T @ h, x.T @ h

    def bare_onednn():
        for _ in range(steps):
            mm(x, W), mm(h, W.T), mm(x, W), mm(x.T, h), mm(x.T, h)

    t = interleaved({"gm": gm_side, "mkl": bare_mkl, "onednn": bare_onednn}, args.reps,
                    args.device)
    bare = min(t["mkl"], t["onednn"])
    return [(f"RBM CD-1 update {B}x{D}x{hidden}: ms/step gm", 1e3 * t["gm"] / steps, ""),
            ("  ms/step bare 5 matmuls, torch @", 1e3 * t["mkl"] / steps, ""),
            ("  ms/step bare 5 matmuls, gm.linalg", 1e3 * t["onednn"] / steps, ""),
            ("  fraction of the matmul limit", bare / t["gm"], "target >= 0.85")]


def ais_loop(x: torch.Tensor, hidden: int, chains: int, n_betas: int, args) -> list:
    D = x.shape[1]
    torch.manual_seed(0)
    model = gm.build("rbm", D, n_hidden=hidden, cd_k=1).to(args.device)
    g = torch.Generator(device=args.device).manual_seed(0)
    for i in range(0, len(x), 100):        # some training, so the weights are not trivial
        model.fit_step(x[i:i + 100], generator=g)
    with torch.no_grad():
        path = model.annealing_path()
    betas = beta_schedule(n_betas, "sigmoid")
    W = path.W
    v = torch.rand(chains, D, device=args.device, dtype=W.dtype)
    hh = torch.rand(chains, hidden, device=args.device, dtype=W.dtype)
    W32, hh32 = W.float(), hh.float()

    @torch.no_grad()                         # as RBM.log_z_ais runs it
    def gm_side():
        ais_log_z(path, betas, chains, g)

    def bare():
        for _ in range(n_betas):
            v @ W, hh @ W.T

    def bare_mixed():
        for _ in range(n_betas):
            v @ W, mm(hh32, W32.T)

    t = interleaved({"gm": gm_side, "bare": bare, "mixed": bare_mixed}, args.reps, args.device)
    return [(f"AIS {chains} chains {D}x{hidden}: us/beta gm", 1e6 * t["gm"] / n_betas, ""),
            ("  us/beta bare 2 float64 matmuls", 1e6 * t["bare"] / n_betas, ""),
            ("  us/beta bare float64 + float32 matmul", 1e6 * t["mixed"] / n_betas, ""),
            ("  fraction of the float64 matmul limit", t["bare"] / t["gm"], "target >= 0.85"),
            ("  fraction of gm's own (mixed) limit", t["mixed"] / t["gm"], "")]


def main() -> None:
    args = parse(__doc__.splitlines()[0], hidden=(int, 500, "hidden units"),
                 batch=(int, 100, "CD minibatch"), chains=(int, 100, "AIS chains"),
                 betas=(int, 200, "AIS intermediate distributions per repetition"))
    x = torch.as_tensor(fashion_binary(2000), device=args.device)
    rows = rbm_update(x[:args.batch], args.hidden, args)
    rows += ais_loop(x, args.hidden, args.chains, args.betas, args)
    report(f"fraction of the hardware limit, device {args.device}, {args.threads} thread(s), "
           f"median of {args.reps}", rows)


if __name__ == "__main__":
    main()
