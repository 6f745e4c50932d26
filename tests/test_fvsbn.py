"""FVSBN: a logistic regression per position (book 20.10.8, Frey 1998)."""
from __future__ import annotations

import torch

import gm



def test_log_prob_is_the_product_of_logistic_conditionals():
    torch.manual_seed(0)
    model = gm.build("fvsbn", 3).double()
    with torch.no_grad():
        model.W.copy_(torch.tensor([[9.0, 9, 9], [0.7, 9, 9], [-1.2, 2.0, 9]]))  # 9s masked
        model.b.copy_(torch.tensor([0.3, -0.5, 0.1]))
    x = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    p1 = torch.sigmoid(torch.tensor(0.3))                 # x1 = 1
    p2 = 1 - torch.sigmoid(torch.tensor(-0.5 + 0.7))      # x2 = 0 given x1 = 1
    p3 = torch.sigmoid(torch.tensor(0.1 - 1.2))           # x3 = 1 given x1 = 1, x2 = 0
    expected = torch.log(p1 * p2 * p3).double()
    torch.testing.assert_close(model.log_prob(x), expected.reshape(1))


def test_parameter_count_is_triangular():
    assert gm.build("fvsbn", 10).n_parameters() == 10 * 9 // 2 + 10
