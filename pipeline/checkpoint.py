"""Checkpoints: tensors and plain dicts only, written atomically, loaded with weights_only=True."""
from __future__ import annotations

from pathlib import Path

import torch

import gm
from gm.config import config_dict
from gm.errors import CheckpointError
from gm.io import atomic_path

FORMAT = "gm-bench/2"     # 2: evaluation settings left the model configs; shared BaseRate buffers
OLD_FORMATS = ("gm-bench/1",)


def save(path: Path, model: gm.GenerativeModel, *, epoch: int, extra: dict | None = None) -> None:
    """Write model + optimiser state after ``epoch`` completed epochs (atomic)."""
    state = {"format": FORMAT, "model": model.name, "data_dim": model.data_dim,
             "config": config_dict(model.config), "epoch": epoch,
             "state_dict": model.state_dict(),
             "optimizers": {k: o.state_dict() for k, o in model.optimizers().items()},
             "extra": extra or {}}
    with atomic_path(Path(path)) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, *, expect_model: str | None = None) -> dict:
    """Read a checkpoint dict, or raise CheckpointError naming the file and the fix."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found; run the train stage first") from None
    except Exception as err:  # torch raises many types for corrupt/foreign pickles
        raise CheckpointError(f"{path}: not a readable gm-bench checkpoint ({type(err).__name__}: "
                              f"{str(err)[:200]}); delete it and rerun training") from None
    if isinstance(state, dict) and state.get("format") in OLD_FORMATS:
        raise CheckpointError(f"{path}: written by an older gm-bench (format {state['format']}, "
                              f"this version reads {FORMAT}); delete it and rerun training")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: foreign checkpoint (format {state.get('format') if isinstance(state, dict) else type(state).__name__!r}, "
                              f"expected {FORMAT}); delete it and rerun training")
    if expect_model and state["model"] != expect_model:
        raise CheckpointError(f"{path}: checkpoint is of model {state['model']!r}, expected "
                              f"{expect_model!r}; delete it and rerun training")
    return state


def restore(state: dict, device, *, optimizers: bool = True) -> gm.GenerativeModel:
    """Rebuild the model of a checkpoint dict, with its optimisers' state unless
    ``optimizers=False`` (evaluation needs none)."""
    model = gm.build(state["model"], state["data_dim"], **state["config"]).to(device)
    try:
        model.load_state_dict(state["state_dict"])
        for name, opt in (model.optimizers() if optimizers else {}).items():
            opt.load_state_dict(state["optimizers"][name])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"checkpoint does not match model {state['model']!r} with its "
                              f"config ({str(err)[:200]}); delete it and rerun training") from None
    return model
