"""FusedLIF, lif_prefix and lif_grid against spikingjelly's LIFNode: identical spikes, gradients within 1e-6."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, neuron, surrogate

from stas_sweep.models.layers import lif
from stas_sweep.models.neuron import FusedLIF, lif_grid, lif_multi_step, lif_prefix
from stas_sweep.models.packing import Packing

SHAPES = [(4, 3, 16, 24), (4, 2, 6, 8, 8)]  # [T, B, K, C] tokens and [T, B, C, H, W] stem maps


def _reference(v_threshold=1.0, v_reset=0.0, detach_reset=True):
    return neuron.LIFNode(tau=2.0, v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset,
                          surrogate_function=surrogate.Sigmoid(alpha=4.0), step_mode="m")


def _run(node, x, grad):
    x = x.clone().requires_grad_()
    out = node(x)
    (out * grad).sum().backward()
    return out.detach(), x.grad


def _input(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 1.5 + 0.3  # a good share of every step fires


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("v_threshold", [1.0, 0.5])
def test_fused_lif_matches_lifnode_for_the_backbones_settings(shape, v_threshold):
    x, grad = _input(shape, 0), _input(shape, 1)
    ref_out, ref_grad = _run(_reference(v_threshold), x, grad)
    node = lif(v_threshold)
    out, g = _run(node, x, grad)
    assert 0.02 < float(out.mean()) < 0.5
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(g, ref_grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("v_reset,detach_reset", [(None, True), (None, False), (-0.3, False), (0.2, True)])
def test_fused_lif_other_reset_settings(v_reset, detach_reset):
    x, grad = _input(SHAPES[0], 2), _input(SHAPES[0], 3)
    ref_out, ref_grad = _run(_reference(1.0, v_reset, detach_reset), x, grad)
    out, g = _run(FusedLIF(v_reset=v_reset, detach_reset=detach_reset), x, grad)
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(g, ref_grad, rtol=0, atol=1e-6)


def test_state_carries_across_calls_and_reset_net_clears_it():
    x = _input((3, 2, 5, 7), 4)
    ref, fused = _reference(), lif()
    for _ in range(2):  # the second call starts from the first call's membranes, as spikingjelly
        assert torch.equal(ref(x), fused(x))
        assert torch.equal(ref.v, fused.v)
    functional.reset_net(fused)
    assert fused.v == 0.0
    functional.reset_net(ref)
    assert torch.equal(ref(x), fused(x))


def test_gradient_reaches_the_initial_membrane():
    x, v0 = _input((3, 4, 5), 5).requires_grad_(), _input((4, 5), 6).requires_grad_()
    s, v = lif_multi_step(x, v0)
    (s.sum() + 0.5 * v.sum()).backward()
    x2, v02 = x.detach().clone().requires_grad_(), v0.detach().clone().requires_grad_()
    s2, v2, _ = functional.lif_multi_step(x2, v02, 2.0, True, 1.0, 0.0, surrogate.Sigmoid(alpha=4.0), True)
    (s2.sum() + 0.5 * v2.sum()).backward()
    assert torch.equal(s, s2)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(v0.grad, v02.grad, rtol=0, atol=1e-6)


def test_inference_needs_no_graph():
    with torch.no_grad():
        out = lif()(_input(SHAPES[0], 7))
    assert not out.requires_grad and set(out.unique().tolist()) <= {0.0, 1.0}


def _prefix_mask(counts, K):
    """[T, 1, K]: token k runs timestep t when k < counts[t] (counts non-increasing)."""
    return (torch.arange(K).view(1, 1, K) < torch.tensor(counts).view(-1, 1, 1)).float()


@pytest.mark.parametrize("counts", [[9, 9, 9, 9], [9, 7, 4, 1], [6, 6, 2, 0], [5]])
@pytest.mark.parametrize("v_threshold", [1.0, 0.5])
@pytest.mark.parametrize("buckets", [0, 4])
def test_lif_grid_equals_the_dense_neuron_on_running_rows(counts, v_threshold, buckets):
    """The packed tb neuron (rows gathered on the device grid, padding rows included) against
    spikingjelly's LIFNode on the dense sequence: the same spikes, gradients within 1e-6."""
    C, K = 12, 10
    mask = _prefix_mask(counts, K)  # [T, 1, K]
    pk = Packing.from_mask(mask, buckets=buckets, prefix=True)
    dense = _input((len(counts), 1, K, C), sum(counts)).requires_grad_()
    grad = _input(dense.shape, 11) * mask.unsqueeze(-1)  # halted cells: no gradient reaches them
    ref = _reference(v_threshold)(dense) * mask.unsqueeze(-1)
    (ref * grad).sum().backward()
    packed = pk.pack(dense.detach()).requires_grad_()
    out = lif_grid(packed, pk.grid, pk.cells, pk.pad, pk.T, v_threshold)
    (out * pk.pack(grad)).sum().backward()
    assert torch.equal(pk.unpack(out), ref.detach())
    assert (out[pk.R:] == 0).all() and (packed.grad[pk.R:] == 0).all()
    torch.testing.assert_close(pk.unpack(packed.grad), dense.grad * mask.unsqueeze(-1), rtol=0, atol=1e-6)


def _dense_and_packed(counts, C, seed):
    T, K = len(counts), counts[0]
    dense = _input((T, K, C), seed)
    packed = torch.cat([dense[t, :n] for t, n in enumerate(counts)])
    return dense, packed


def _pack(dense, counts):
    return torch.cat([dense[t, :n] for t, n in enumerate(counts)])


@pytest.mark.parametrize("counts", [[9, 9, 9, 9], [9, 7, 4, 1], [6, 6, 2, 0], [5]])
@pytest.mark.parametrize("v_threshold", [1.0, 0.5])
@pytest.mark.parametrize("pad", [0, 3])
def test_lif_prefix_equals_the_dense_neuron_on_running_rows(counts, v_threshold, pad):
    """Rows sliced by host counts, then ``pad`` padding rows (spikes 0, no gradient)."""
    C = 12
    dense, packed = _dense_and_packed(counts, C, seed=sum(counts))
    grad = _input((packed.shape[0] + pad, C), 11)
    dense = dense.requires_grad_()
    ref = _pack(_reference(v_threshold)(dense), counts)
    (ref * grad[:packed.shape[0]]).sum().backward()
    packed = torch.cat((packed, _input((pad, C), 5))).requires_grad_()
    out = lif_prefix(packed, counts, v_threshold)
    (out * grad).sum().backward()
    R = sum(counts)
    assert torch.equal(out[:R], ref) and (out[R:] == 0).all() and (packed.grad[R:] == 0).all()
    torch.testing.assert_close(packed.grad[:R], _pack(dense.grad, counts), rtol=0, atol=1e-6)
    dense_fused = FusedLIF(v_threshold=v_threshold)(dense.detach())
    assert torch.equal(out.detach()[:R], _pack(dense_fused, counts))


def test_lif_prefix_rejects_bad_counts():
    with pytest.raises(ValueError, match="non-increasing"):
        lif_prefix(torch.zeros(7, 3), [3, 4], 1.0)
    with pytest.raises(ValueError, match="rows"):
        lif_prefix(torch.zeros(5, 3), [3, 3], 1.0)
