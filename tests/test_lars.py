"""LARS against its definition, computed by hand step by step."""

import math

import pytest
import torch

from attgmae.eval.lars import LARS


def by_definition(weights, grads_per_step, lr, wd, momentum, trust):
    """Plain float64 re-derivation for one 2-D weight and one 1-D bias."""
    params = {"w": weights["w"].tolist(), "b": weights["b"].tolist()}
    mu = {"w": [[0.0] * len(params["w"][0]) for _ in params["w"]], "b": [0.0] * len(params["b"])}
    for grads in grads_per_step:
        gw, gb = grads["w"].tolist(), grads["b"].tolist()
        w = params["w"]
        d = [[gw[i][j] + wd * w[i][j] for j in range(len(w[0]))] for i in range(len(w))]
        w_norm = math.sqrt(sum(v * v for row in w for v in row))
        d_norm = math.sqrt(sum(v * v for row in d for v in row))
        q = trust * w_norm / d_norm if w_norm > 0 and d_norm > 0 else 1.0
        for i in range(len(w)):
            for j in range(len(w[0])):
                mu["w"][i][j] = momentum * mu["w"][i][j] + d[i][j] * q
                w[i][j] -= lr * mu["w"][i][j]
        for i in range(len(gb)):  # bias: no decay, no trust ratio
            mu["b"][i] = momentum * mu["b"][i] + gb[i]
            params["b"][i] -= lr * mu["b"][i]
    return params


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_steps_match_the_definition(wd):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    grads = [
        {
            "w": torch.randn(4, 3, generator=g, dtype=torch.float64),
            "b": torch.randn(4, generator=g, dtype=torch.float64),
        }
        for _ in range(5)
    ]
    pw, pb = torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())
    opt = LARS([pw, pb], lr=0.7, weight_decay=wd, momentum=0.9, trust_coefficient=0.001)
    for step in grads:
        pw.grad, pb.grad = step["w"].clone(), step["b"].clone()
        opt.step()
    want = by_definition({"w": w, "b": b}, grads, 0.7, wd, 0.9, 0.001)
    assert torch.allclose(pw.detach(), torch.tensor(want["w"], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(pb.detach(), torch.tensor(want["b"], dtype=torch.float64), atol=1e-12)


def test_zero_weight_uses_trust_ratio_one_and_missing_grad_is_skipped():
    pw = torch.nn.Parameter(torch.zeros(2, 2))
    frozen = torch.nn.Parameter(torch.ones(3))
    opt = LARS([pw, frozen], lr=0.5)
    pw.grad = torch.full((2, 2), 2.0)
    opt.step()
    # |w| = 0 -> ratio 1: w = -lr * grad.
    assert torch.equal(pw.detach(), torch.full((2, 2), -1.0))
    assert torch.equal(frozen.detach(), torch.ones(3))
    assert frozen not in opt.state


def test_state_dict_round_trip_keeps_momentum():
    pw = torch.nn.Parameter(torch.randn(3, 3))
    opt = LARS([pw], lr=0.1)
    pw.grad = torch.randn(3, 3)
    opt.step()
    opt2 = LARS([pw], lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    assert torch.equal(opt2.state[pw]["mu"], opt.state[pw]["mu"])
