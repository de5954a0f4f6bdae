"""A-SSA halting against hand-computed numbers (SPEC 2.3-2.4)."""

import math

import pytest
import torch

from stas_sweep.models.halting import Halting, HaltingConfig

T, L, K = 2, 2, 4
# h of every cell, scanned (t=1,l=1), (t=1,l=2), (t=2,l=1), (t=2,l=2), for tokens A..D
H = [
    [0.6, 0.5, 0.3, 0.3],   # A: halts at (1,2) in tb
    [0.2, 0.3, 0.4, 0.9],   # B: reaches the threshold at the last cell
    [0.1, 0.1, 0.1, 0.1],   # C: never reaches it, forced at the last cell
    [0.99, 0.5, 0.2, 0.2],  # D: halts at its first cell
]
EPS = 0.05  # threshold 0.95


def run(accumulation):
    """Feed chosen h through Halting: with alpha=1, beta=0, x[..., 0] = logit(h)."""
    cfg = HaltingConfig(alpha=1.0, beta=0.0, epsilon=EPS, accumulation=accumulation)
    state = Halting(cfg, T, L, B=1, K=K, D=2, device=torch.device("cpu"), dtype=torch.float64)
    xs = []
    for t in range(T):
        state.start_timestep(t)
        for l in range(L):
            h = torch.tensor([row[t * L + l] for row in H], dtype=torch.float64)
            x = torch.stack([torch.log(h / (1 - h)), torch.arange(K, dtype=torch.float64) + 10 * t + l], -1)
            x = (x * state.mask[0].unsqueeze(-1))[None].requires_grad_(True)  # halted tokens enter as 0
            xs.append(x)
            state.step(t, l, x)  # x: [B=1, K, D=2]
    return state, xs


def flat(p):  # [B, T, L, K] -> tokens one after another, each in scan order
    return p[0].permute(2, 0, 1).reshape(-1).tolist()


def test_tb_hand_example():
    s, _ = run("tb")
    expect_p = [
        [0.6, 0.4, 0, 0],
        [0.2, 0.3, 0.4, 0.1],
        [0.1, 0.1, 0.1, 0.7],
        [1.0, 0, 0, 0],
    ]
    assert flat(s.p) == pytest.approx(sum(expect_p, []), abs=1e-9)
    assert s.cells[0].tolist() == [2, 4, 4, 1]
    # ponder per token: (sum_t blocks at t + remainder) / T
    expect_ponder = [(2 + 0.4) / 2, (2 + 2 + 0.1) / 2, (2 + 2 + 0.7) / 2, (1 + 1.0) / 2]
    assert float(s.ponder()) == pytest.approx(sum(expect_ponder) / K, abs=1e-9)
    # halted tokens accumulate nothing: A's h after its halting cell is 0
    assert flat(s.h)[:4] == pytest.approx([0.6, 0.5, 0, 0])
    assert s.active[0].tolist() == [[4, 3], [2, 2]]
    # p sum to one over the whole grid in tb
    assert s.p.sum((1, 2))[0].tolist() == pytest.approx([1, 1, 1, 1])


def test_b_hand_example():
    s, _ = run("b")
    expect_p = [
        [0.6, 0.4, 0.3, 0.7],
        [0.2, 0.8, 0.4, 0.6],
        [0.1, 0.9, 0.1, 0.9],
        [1.0, 0.0, 0.2, 0.8],
    ]
    assert flat(s.p) == pytest.approx(sum(expect_p, []), abs=1e-9)
    assert s.cells[0].tolist() == [4, 4, 4, 3]
    expect_ponder = [(2.4 + 2.7) / 2, (2.8 + 2.6) / 2, (2.9 + 2.9) / 2, (2.0 + 2.8) / 2]
    assert float(s.ponder()) == pytest.approx(sum(expect_ponder) / K, abs=1e-9)
    # p sum to one within each timestep in b
    assert s.p.sum(2)[0].flatten().tolist() == pytest.approx([1.0] * (T * K))


@pytest.mark.parametrize("accumulation", ["tb", "b"])
def test_mean_field_representation(accumulation):
    s, xs = run(accumulation)
    p = s.p[0]  # [T, L, K]
    rep = torch.zeros(2, dtype=torch.float64)
    for t in range(T):
        for l in range(L):
            x = xs[t * L + l][0]  # [K, 2]
            rep += (p[t, l].unsqueeze(-1) * x).sum(0)
    rep = rep / K / (T if accumulation == "b" else 1)
    assert s.representation()[0].tolist() == pytest.approx(rep.tolist(), abs=1e-9)


def test_ponder_gradient_reaches_first_channel_only():
    s, xs = run("tb")
    s.ponder().backward()
    grads = [x.grad for x in xs if x.grad is not None]  # the last cell's h feeds no remainder
    g0 = sum(float(g[..., 0].abs().sum()) for g in grads)
    g1 = sum(float(g[..., 1:].abs().sum()) for g in grads)
    assert g0 > 0 and g1 == 0
    # d ponder / d h for a token that halted at (1,2): r = 1 - h11 -> derivative -1/(T K) * h'(x)
    h = 0.6
    assert float(xs[0].grad[0, 0, 0]) == pytest.approx(-1 / (T * K) * h * (1 - h), rel=1e-6)


def test_halting_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"epsilon must lie in \[0, 1\)"):
        HaltingConfig(epsilon=1.0)
    with pytest.raises(ValueError, match=r"epsilon"):
        HaltingConfig(epsilon=-0.1)
    with pytest.raises(ValueError, match="accumulation 'tt'.*tb, b"):
        HaltingConfig(accumulation="tt")


def test_zero_epsilon_threshold_is_one():
    cfg = HaltingConfig(alpha=1.0, beta=0.0, epsilon=0.0)
    s = Halting(cfg, 1, 2, 1, 1, 1, torch.device("cpu"), torch.float64)
    x = torch.full((1, 1, 1), math.log(0.5 / 0.5), dtype=torch.float64)  # h = 0.5
    s.step(0, 0, x)
    assert s.mask.item() == 1  # 0.5 < 1
    s.step(0, 1, x)
    assert s.cells.item() == 2 and s.p[0, 0, :, 0].tolist() == pytest.approx([0.5, 0.5])
