"""A-SSA halting state against hand-worked numbers (SPEC 2.3-2.4); synthetic scores, no model."""

import math

import pytest
import torch

from stas_sweep.models.halting import HaltingState, HaltingConfig


def logit(h):
    return math.log(h / (1 - h))


def test_spec_worked_example():
    """SPEC 2.3: h = 0.3 everywhere, L = 2, T = 4, epsilon = 0.01."""
    expect = {"tb": ([2, 2, 2, 1], 0.875, 2.3, [0.7, 0.4, 0.1, 1.0]), "b": ([2, 2, 2, 2], 1.0, 2.7, [0.7] * 4)}
    for accumulation, (N, ratio, ponder, r) in expect.items():
        cfg = HaltingConfig(alpha=0.0, beta=logit(0.3), epsilon=0.01, accumulation=accumulation)
        s = HaltingState(cfg, T=4, L=2, B=1, K=1, D=1, device="cpu")
        for l in range(2):
            s.step(l, torch.zeros(4, 1, 1, 1))
        assert s.N.flatten().tolist() == N
        assert float(s.token_ratio()) == pytest.approx(ratio)
        assert float(s.ponder().detach()) == pytest.approx(ponder, abs=1e-6)
        # the remainder sits on the halting block N[t] of each timestep
        p = s.p[0, :, :, 0]  # [T, L]
        assert [float(p[t, n - 1]) for t, n in enumerate(N)] == pytest.approx(r, abs=1e-6)


# h[k][t][l] offered to each cell (ignored where the token is masked), T = 2, L = 2, K = 3
H = [
    [[0.6, 0.5], [0.4, 0.3]],    # A
    [[0.1, 0.1], [0.1, 0.1]],    # B
    [[0.97, 0.5], [0.2, 0.5]],   # C
]
EPS = 0.05  # threshold 0.95


def run(accumulation, D=2, seed=0):
    """Drive HaltingState with chosen scores; channel 0 of X carries logit(h), the rest is random."""
    cfg = HaltingConfig(alpha=1.0, beta=0.0, epsilon=EPS, accumulation=accumulation)
    s = HaltingState(cfg, T=2, L=2, B=1, K=3, D=D, device="cpu")
    g = torch.Generator().manual_seed(seed)
    xs = []
    for l in range(2):
        h = torch.tensor([[[H[k][t][l] for k in range(3)]] for t in range(2)], dtype=torch.float64)  # [T, 1, K]
        x = torch.rand(2, 1, 3, D, generator=g, dtype=torch.float64)
        x[..., 0] = torch.log(h / (1 - h))
        x = (x * s.mask[..., None]).requires_grad_(True)  # halted tokens enter as 0
        xs.append(x)
        s.step(l, x)
    return s, xs


def test_tb_hand_example():
    s, _ = run("tb")
    # A: t1 C = 0.6, 1.1 -> N 2, r 0.4; t2 C = 0.6 + 0.4 = 1.0 at block 1 -> N 1, r 1
    # B: t1 C = 0.1, 0.2 -> N 2, r 0.9; t2 C = 0.2, 0.2 + 0.2 = 0.4 -> N 2, r 0.8
    # C: t1 C = 0.97 -> N 1, r 1; t2 C = 1.17 -> N 1, r 1
    assert s.N[:, 0].T.tolist() == [[2, 1], [2, 2], [1, 1]]
    expect_p = {  # token -> [[p(l1), p(l2)] at t1, at t2]
        0: [[0.6, 0.4], [1.0, 0.0]],
        1: [[0.1, 0.9], [0.1, 0.8]],
        2: [[1.0, 0.0], [1.0, 0.0]],
    }
    for k, rows in expect_p.items():
        assert s.p[0, :, :, k].flatten().tolist() == pytest.approx(sum(rows, []), abs=1e-6)
    assert float(s.ponder().detach()) == pytest.approx((2.4 + 2.0 + 2.9 + 2.8 + 2.0 + 2.0) / 6, abs=1e-6)
    assert float(s.token_ratio()) == pytest.approx(9 / 12)
    assert s.active[0].tolist() == [[3, 2], [3, 1]]  # [t, l]
    # a masked cell has h = 0: A at (l2, t2), C at (l2, t1) and (l2, t2)
    assert float(s.h[0, 1, 1, 0]) == 0 and float(s.h[0, 0, 1, 2]) == 0


def test_b_hand_example():
    s, _ = run("b")
    # A: t2 restarts: C = 0.4, 0.7 -> N 2, r 0.6.  C: t2 C = 0.2, 0.7 -> N 2, r 0.8
    assert s.N[:, 0].T.tolist() == [[2, 2], [2, 2], [1, 2]]
    assert s.p[0, 1, :, 0].tolist() == pytest.approx([0.4, 0.6], abs=1e-6)
    assert s.p[0, 1, :, 2].tolist() == pytest.approx([0.2, 0.8], abs=1e-6)
    assert float(s.ponder().detach()) == pytest.approx((2.4 + 2.6 + 2.9 + 2.9 + 2.0 + 2.8) / 6, abs=1e-6)
    assert s.p.sum(2)[0].flatten().tolist() == pytest.approx([1.0] * 6, abs=1e-6)  # per timestep


@pytest.mark.parametrize("accumulation", ["tb", "b"])
def test_mean_field_representation(accumulation):
    s, xs = run(accumulation, D=3)
    p = s.p[0]  # [T, L, K]
    rep = torch.zeros(3, dtype=torch.float64)
    for t in range(2):
        for l in range(2):
            rep += (p[t, l].double().unsqueeze(-1) * xs[l][t, 0]).sum(0)
    rep = rep / (2 * 3)  # eq. 8: 1/(T K)
    assert s.representation().mean(0)[0].tolist() == pytest.approx(rep.tolist(), abs=1e-6)


def test_ponder_gradient_flows_through_remainders():
    s, xs = run("tb")
    s.ponder().backward()
    grads = [x.grad for x in xs if x.grad is not None]  # the last block's h feeds no remainder
    g0 = sum(float(g[..., 0].abs().sum()) for g in grads)
    g1 = sum(float(g[..., 1:].abs().sum()) for g in grads)
    assert g0 > 0 and g1 == 0
    # A's remainder at t1 is r = 1 - h[l1,t1]: d ponder / d x = -1/(T K) * h (1 - h)
    assert float(xs[0].grad[0, 0, 0, 0]) == pytest.approx(-1 / 6 * 0.6 * 0.4, rel=1e-5)
    # B's block-1 score at t1 enters r at t1 and t2 (C sums over earlier timesteps): -2/(T K) h'
    assert float(xs[0].grad[0, 0, 1, 0]) == pytest.approx(-2 / 6 * 0.1 * 0.9, rel=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_random_scores_properties(seed):
    """N[k,t] never grows with t in tb; epsilon never raises the ratio; p sums as SPEC says."""
    g = torch.Generator().manual_seed(seed)
    T, L, B, K = 4, 5, 3, 7
    logits = torch.randn(L, T, B, K, generator=g) * 2 - 2
    ratios = []
    for eps in [0.0, 0.01, 0.1, 0.3, 0.6, 0.9]:
        for accumulation in ["tb", "b"]:
            s = HaltingState(HaltingConfig(1.0, 0.0, eps, accumulation), T, L, B, K, 1, "cpu")
            for l in range(L):
                s.update(l, s.score(logits[l]))
            assert ((s.N >= 1) & (s.N <= L)).all()
            if accumulation == "tb":
                assert (s.N[1:] <= s.N[:-1]).all()
                ratios.append(float(s.token_ratio()))
                assert (s.p.sum(2) <= 1 + 1e-5).all()
            else:
                assert torch.allclose(s.p.sum(2), torch.ones(B, T, K))
    assert all(b <= a + 1e-9 for a, b in zip(ratios, ratios[1:])), ratios


def test_state_is_float32_under_autocast():
    s = HaltingState(HaltingConfig(1.0, 0.0, 0.1), 2, 2, 1, 3, 4, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for l in range(2):
            s.step(l, torch.randn(2, 1, 3, 4).bfloat16())
    for t in (s.C, s.h, s.p, s.rep, s.ponder_sum, s.representation(), s.ponder()):
        assert t.dtype == torch.float32


def test_halting_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"epsilon must lie in \[0, 1\)"):
        HaltingConfig(epsilon=1.0)
    with pytest.raises(ValueError, match=r"epsilon"):
        HaltingConfig(epsilon=-0.1)
    with pytest.raises(ValueError, match="accumulation 'tt'.*tb, b"):
        HaltingConfig(accumulation="tt")


def test_zero_epsilon_threshold_is_one():
    s = HaltingState(HaltingConfig(alpha=1.0, beta=0.0, epsilon=0.0, accumulation="b"), 1, 2, 1, 1, 1, "cpu")
    s.step(0, torch.zeros(1, 1, 1, 1))  # h = 0.5 < 1: keeps running
    assert s.mask.item() == 1
    s.step(1, torch.zeros(1, 1, 1, 1))
    assert s.N.item() == 2 and s.p[0, 0, :, 0].tolist() == pytest.approx([0.5, 0.5])
