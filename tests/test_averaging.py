"""The exponential moving average of weights (gm/averaging.py) against its definition."""
import torch
from torch import nn

from gm.averaging import WeightAverage


def test_average_is_the_bias_corrected_weighted_mean_of_the_iterates():
    """After k updates the weights used are sum_j (1 - r) r^(k-j) theta_j / (1 - r^k): weights
    summing to one over the k iterates, computed here from the recorded iterates."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    r = 0.8
    avg = WeightAverage(net, r).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(avg.call(net, x), net(x), rtol=0, atol=0)   # before any update
    iterates = []
    for _ in range(7):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        avg.update(net)
        iterates.append([p.detach().clone() for p in net.parameters()])
    k = len(iterates)
    w = torch.tensor([(1 - r) * r ** (k - 1 - j) for j in range(k)], dtype=torch.float64)
    w = w / (1 - r ** k)
    assert abs(float(w.sum()) - 1) < 1e-12
    expected = [sum(wj * it[i] for wj, it in zip(w, iterates)) for i in range(len(iterates[0]))]
    manual = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        for p, e in zip(manual.parameters(), expected):
            p.copy_(e)
    torch.testing.assert_close(avg.call(net, x), manual(x), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(avg.call(net, x), net(x))               # not the last iterate
    assert [n for n, _ in avg.named_buffers()] == [f"avg{i}" for i in range(4)] + ["steps"]
