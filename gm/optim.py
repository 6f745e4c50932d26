"""SGD and Adam, written out: the same arithmetic as torch.optim's single-tensor CPU code
(bit-identical updates, tests/test_optim.py), without its per-step machinery and without the
import of torch._dynamo that the first torch.optim optimiser costs each process (~1.1 s of CPU).

SGD with momentum and L2 weight decay (Hinton 2010, "A practical guide to training RBMs",
sec. 9-10); Adam (Kingma & Ba 2015, Algorithm 1) with L2 weight decay added to the gradient.
Both update the parameters in place from their ``.grad``; parameters whose grad is None are
skipped.  ``param_groups`` are dicts with "params" and the group's hyperparameters, as in
torch.optim, so a schedule can set ``group["lr"]``; ``state_dict()`` holds tensors and plain
values only (checkpoints load with weights_only=True).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor


class Optimizer:
    """Parameter groups, zero_grad and a state of per-parameter tensors."""

    defaults: dict = {}
    state_names: tuple[str, ...] = ()

    def __init__(self, params: Iterable, **hyper):
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = [{**self.defaults, **hyper, **g, "params": list(g["params"])}
                             for g in groups]
        # per parameter (in group order): a dict of state tensors, empty until its first step
        self.state: list[dict[str, Tensor]] = [{} for g in self.param_groups for _ in g["params"]]

    def _groups(self):
        """(group, state indices, parameters) of each group with a parameter that has a
        gradient, over those parameters."""
        i = 0
        for group in self.param_groups:
            ps = group["params"]
            idx = [i + k for k, p in enumerate(ps) if p.grad is not None]
            if idx:
                yield group, idx, [ps[k - i] for k in idx]
            i += len(ps)

    def _params(self):
        """(index, group, parameter) over every parameter that has a gradient."""
        for group, idx, params in self._groups():
            yield from ((i, group, p) for i, p in zip(idx, params))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def state_dict(self) -> dict:
        return {"groups": [{k: v for k, v in g.items() if k != "params"}
                           for g in self.param_groups],
                "state": [dict(s) for s in self.state]}

    def load_state_dict(self, state: dict) -> None:
        """Restore hyperparameters and state tensors (moved to each parameter's device)."""
        if len(state["groups"]) != len(self.param_groups) or len(state["state"]) != len(self.state):
            raise KeyError("optimiser state does not match the model's parameters")
        for group, saved in zip(self.param_groups, state["groups"]):
            group.update(saved)
        params = [p for g in self.param_groups for p in g["params"]]
        self.state = [{k: v.to(p.device, copy=True) if isinstance(v, Tensor) else v
                       for k, v in s.items()}
                      for p, s in zip(params, state["state"])]


class SGD(Optimizer):
    """p <- p - lr * buf, buf <- momentum * buf + (grad + weight_decay * p) (buf = the first
    decayed gradient at the first step), as torch.optim.SGD with dampening 0.

    Each line is one ``torch._foreach_*`` call over a group's parameters: the kernels of the
    single-tensor loop (the same bits) in a few calls, whatever the number of parameters."""

    defaults = {"lr": 0.01, "momentum": 0.0, "weight_decay": 0.0}

    @torch.no_grad()
    def step(self) -> None:
        for group, idx, params in self._groups():
            grads = [p.grad for p in params]
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["momentum"] != 0:
                grads = self._momentum_buffers(idx, grads, group["momentum"])
            torch._foreach_add_(params, grads, alpha=-group["lr"])

    def _momentum_buffers(self, idx: list[int], grads: list[Tensor],
                          momentum: float) -> list[Tensor]:
        """buf <- momentum * buf + grad for parameters idx (buf <- grad at the first step)."""
        bufs, moved, added = [], [], []
        for i, g in zip(idx, grads):
            buf = self.state[i].get("momentum_buffer")
            if buf is None:
                buf = self.state[i]["momentum_buffer"] = g.detach().clone()
            else:
                moved.append(buf)
                added.append(g)
            bufs.append(buf)
        if moved:
            torch._foreach_mul_(moved, momentum)
            torch._foreach_add_(moved, added)
        return bufs


class Adam(Optimizer):
    """Adam with bias correction and L2 weight decay added to the gradient, as torch.optim.Adam
    (amsgrad off)."""

    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}

    @torch.no_grad()
    def step(self) -> None:
        for i, group, p in self._params():
            beta1, beta2 = group["betas"]
            grad = p.grad
            s = self.state[i]
            if not s:
                s["step"] = 0
                s["exp_avg"] = torch.zeros_like(p)
                s["exp_avg_sq"] = torch.zeros_like(p)
            s["step"] += 1
            if group["weight_decay"] != 0:
                grad = grad.add(p, alpha=group["weight_decay"])
            s["exp_avg"].lerp_(grad, 1 - beta1)
            s["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = float(s["step"])
            step_size = group["lr"] / (1 - beta1 ** step)
            denom = (s["exp_avg_sq"].sqrt() / (1 - beta2 ** step) ** 0.5).add_(group["eps"])
            p.addcdiv_(s["exp_avg"], denom, value=-step_size)
