"""Checkpoints of an older format are refused with one line that says to retrain."""
import pytest
import torch

from gm.errors import CheckpointError
from pipeline import checkpoint


@pytest.mark.parametrize("fmt", checkpoint.OLD_FORMATS)
def test_older_checkpoint_is_refused_with_the_fix(tmp_path, fmt):
    path = tmp_path / "model.pt"
    torch.save({"format": fmt, "model": "rbm", "data_dim": 4, "config": {"raise_chains": 2},
                "epoch": 1, "state_dict": {}, "optimizers": {}, "extra": {}}, path)
    with pytest.raises(CheckpointError) as err:
        checkpoint.load_state(path, expect_model="rbm")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "older gm-bench" in msg and "rerun training" in msg
