"""Packed halting execution (running tokens only) against the dense masked reference."""

import pytest
import torch

from stas_sweep import create_model
from stas_sweep.models.diagnostics import calibrate_batchnorm
from stas_sweep.models.packing import Packing

FAMILIES = ["spikformer", "spikingformer", "spikedriven"]
# Spikformer reads a non-negative stream: the paper's alpha < 0 halts its silent tokens
HALT = {"spikformer": dict(alpha=-5.0, beta=0.0), "spikingformer": dict(alpha=5.0, beta=-5.0),
        "spikedriven": dict(alpha=5.0, beta=-5.0)}


@pytest.fixture(scope="module")
def calibrated():
    cache = {}

    def get(family, accumulation):
        if (family, accumulation) not in cache:
            torch.manual_seed(0)
            m = create_model(f"{family}-2-32", img_size=16,
                             halting=dict(HALT[family], epsilon=0.01, accumulation=accumulation))
            calibrate_batchnorm(m, torch.rand(5, 3, 16, 16))
            cache[family, accumulation] = m.eval()
        return cache[family, accumulation]
    return get


def _both(m, x, eps):
    with torch.no_grad():
        m.packed_halting = True
        packed = m(x, epsilon=eps)
        m.packed_halting = False
        dense = m(x, epsilon=eps)
        m.packed_halting = True
    return packed, dense


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("accumulation", ["tb", "b"])
def test_packed_equals_dense_in_eval(calibrated, family, accumulation):
    m = calibrated(family, accumulation)
    halted = False
    for B in (1, 5):
        x = torch.rand(B, 3, 16, 16, generator=torch.Generator().manual_seed(B))
        for eps in (0.0, 0.1, 0.5):
            packed, dense = _both(m, x, eps)
            for name in ("logits", "halting_scores", "halting_probs", "cells_processed", "halting_blocks",
                         "active_tokens", "ponder_loss", "token_ratio"):
                torch.testing.assert_close(getattr(packed, name), getattr(dense, name), rtol=0, atol=1e-5,
                                           msg=f"{name} at B={B}, epsilon={eps}")
            halted |= float(dense.token_ratio) < 1.0
    assert halted  # the comparison covered halted tokens


def test_packing_layout():
    # tb-like mask: token 0 runs t = 0..3, token 1 t = 0..1, token 2 never, token 3 t = 0
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.float32)
    pk = Packing.from_mask(mask.view(4, 1, 4))
    assert pk.prefix and pk.counts == [3, 2, 1, 1]
    assert pk.tokens.tolist() == [0, 1, 3]  # longest-running first
    assert pk.rows.tolist() == [0, 1, 3, 4, 5, 8, 12]  # t*K + k, timestep-major
    x = torch.arange(16.0).view(4, 1, 4, 1)
    assert pk.pack(x).flatten().tolist() == [0, 1, 3, 4, 5, 8, 12]
    assert torch.equal(pk.unpack(pk.pack(x)), x * mask.view(4, 1, 4, 1))
    # b-like mask: token 1 stops at t = 1 and runs again at t = 2: not a prefix
    mask_b = torch.tensor([[1, 1], [1, 0], [1, 1]], dtype=torch.float32).view(3, 1, 2)
    assert not Packing.from_mask(mask_b).prefix
    sub = Packing.from_mask(mask[:, :].clone().index_fill_(1, torch.tensor([3]), 0).view(4, 1, 4))
    assert pk.pack(x)[sub.index_in(pk)].flatten().tolist() == sub.pack(x).flatten().tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_training_step_has_gradients(family):
    torch.manual_seed(0)
    m = create_model(f"{family}-2-32", img_size=16, halting=dict(HALT[family], epsilon=0.3)).train()
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,))
    out = m(x)
    assert float(out.token_ratio) < 1.0
    loss = torch.nn.functional.cross_entropy(out.logits, y) + 0.01 * out.ponder_loss
    loss.backward()
    for l, block in enumerate(m.blocks):
        grads = [p.grad for p in block.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), l
        assert sum(float(g.abs().sum()) for g in grads) > 0, l


def test_everything_halted_early_and_single_rows():
    """All tokens halting at block 1 leaves later blocks nothing to run; one running row trains."""
    m = create_model("spikingformer-2-32", img_size=16, halting=dict(alpha=0.0, beta=10.0, epsilon=0.01))
    out = m(torch.rand(2, 3, 16, 16))
    assert float(out.token_ratio) == pytest.approx(0.5) and out.logits.isfinite().all()
    layer = m.blocks[1].mlp.fc1.train()  # a block with one running row still trains
    y = layer(torch.rand(1, 32, requires_grad=True))
    assert y.shape == (1, 128) and y.isfinite().all()


@pytest.mark.parametrize("family", FAMILIES)
def test_energy_meter_counts_the_same_cells_in_both_paths(calibrated, family):
    from stas_sweep.energy import measure_energy

    m = calibrated(family, "tb")
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    m.packed_halting = False
    dense = measure_energy(m, x, epsilon=0.2)
    m.packed_halting = True
    packed = measure_energy(m, x, epsilon=0.2)
    assert packed.token_ratio == dense.token_ratio < 1.0
    assert packed.energy_mj == pytest.approx(dense.energy_mj, rel=1e-6)
    assert packed.energy_strict_mj == pytest.approx(dense.energy_strict_mj, rel=1e-6)
    assert [a.layer for a in packed.layers] == [b.layer for b in dense.layers]
    for a, b in zip(packed.layers, dense.layers):  # the same activities, halted cells silent
        # MAC-only rows (first convolution, halting score) have no activity in either path
        assert (a.activity is None) == (b.activity is None), a.layer
        if a.activity is not None:
            assert a.activity == pytest.approx(b.activity, rel=1e-6, abs=1e-12), a.layer


def _saved_bytes(model, x):
    """Bytes of the distinct storages autograd keeps for the backward of one forward."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def test_training_memory_not_above_dense_and_falls_with_ratio():
    torch.manual_seed(0)
    m = create_model("spikingformer-2-32", img_size=16, halting=dict(alpha=5.0, beta=-60.0)).train()
    x = torch.rand(4, 3, 16, 16)
    m.packed_halting = False
    dense = _saved_bytes(m, x)
    m.packed_halting = True
    full = _saved_bytes(m, x)
    assert float(m(x).token_ratio) == 1.0 and full <= dense
    m.halting.alpha, m.halting.beta = 0.0, 0.0  # h = 0.5: tokens halt at block 2 from t = 2 on
    half = _saved_bytes(m, x)
    assert float(m(x).token_ratio) < 1.0 and half < 0.9 * full
