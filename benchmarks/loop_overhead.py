"""Training-loop overhead of VAE and MADE: the pipeline's loop (pipeline.train.train_model ->
model.fit_step) against a minimal hand-written torch loop of the same network (same modules,
loss, optimiser, batch size), timed alternately in one process.

The hand-written loops are what one would write without gm: the VAE's ELBO with one
reparameterised sample; MADE with its masks precomputed once per mask and cycled.
ratio = gm_time / hand_time.  Target (issue 9): <= 1.1.

    python benchmarks/loop_overhead.py [--device cuda] [--n 2000]
"""
from __future__ import annotations

import math

import common  # noqa: F401
from common import fashion_binary, interleaved, parse, report

import torch
import torch.nn.functional as F

import gm
from pipeline.train import minibatches, train_model

LOG_2PI = math.log(2 * math.pi)


def vae_hand_loop(model, x, batch_size, g):
    """One epoch of the VAE (k=1) written out by hand with the model's own encoder/decoder."""
    opt = torch.optim.Adam(list(model.encoder.parameters()) + list(model.decoder.parameters()),
                           lr=model.config.lr)

    def epoch():
        for xb in minibatches(x, batch_size, g):
            mean, log_std = model.encoder(xb).chunk(2, -1)
            log_std = log_std.clamp(-7, 5)
            eps = torch.randn(mean.shape, generator=g, device=mean.device)
            z = mean + eps * log_std.exp()
            rec = -F.binary_cross_entropy_with_logits(model.decoder(z), xb, reduction="none").sum(1)
            kl = 0.5 * (mean ** 2 + (2 * log_std).exp() - 1 - 2 * log_std).sum(1)
            loss = (kl - rec).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return epoch


def made_hand_loop(model, x, batch_size, g):
    """One epoch of MADE by hand: the model's layers, masks built once, one mask per step."""
    masks = [model.masks(k) for k in range(model.config.n_masks)]
    opt = torch.optim.Adam(model.layers.parameters(), lr=model.config.lr)
    step = [0]

    def epoch():
        for xb in minibatches(x, batch_size, g):
            ms = masks[step[0] % len(masks)]
            step[0] += 1
            h = xb
            for i, (layer, m) in enumerate(zip(model.layers, ms)):
                h = F.linear(h, layer.weight * m, layer.bias)
                if i < len(ms) - 1:
                    h = torch.relu(h)
            loss = F.binary_cross_entropy_with_logits(h, xb, reduction="none").sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return epoch


def compare(name: str, hparams: dict, hand, x, batch_size: int, args) -> list:
    torch.manual_seed(0)
    a = gm.build(name, x.shape[1], **hparams).to(args.device)
    torch.manual_seed(0)
    b = gm.build(name, x.shape[1], **hparams).to(args.device)
    ga = torch.Generator(device=args.device).manual_seed(0)
    gb = torch.Generator(device=args.device).manual_seed(0)

    def gm_epoch():
        train_model(a, x, epochs=1, batch_size=batch_size, generator=ga)

    t = interleaved({"gm": gm_epoch, "hand": hand(b, x, batch_size, gb)}, args.reps, args.device)
    steps = math.ceil(len(x) / batch_size)
    return [(f"{name} {hparams}: ms/step gm", 1e3 * t["gm"] / steps, ""),
            ("  ms/step hand-written", 1e3 * t["hand"] / steps, ""),
            ("  overhead ratio gm / hand", t["gm"] / t["hand"], "target <= 1.10")]


def main() -> None:
    args = parse(__doc__.splitlines()[0], n=(int, 2000, "Fashion-MNIST training images"),
                 batch=(int, 100, "minibatch size"))
    x = torch.as_tensor(fashion_binary(args.n), device=args.device)
    rows = compare("vae", {"hidden": (200,), "latent_dim": 20}, vae_hand_loop, x, args.batch, args)
    rows += compare("made", {"hidden_sizes": (500,), "n_masks": 8}, made_hand_loop, x,
                    args.batch, args)
    report(f"training-loop overhead, device {args.device}, {args.threads} thread(s), "
           f"median of {args.reps}", rows)


if __name__ == "__main__":
    main()
