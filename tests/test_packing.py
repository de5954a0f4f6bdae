"""Packed halting execution (running tokens only) against the dense masked reference."""

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from stas_sweep import create_model
from stas_sweep.models.diagnostics import calibrate_batchnorm
from stas_sweep.models.packing import Packing, capacity

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


def _caps(m):
    """Record (R, cap) of every Packing a block of ``m`` is called with."""
    seen = []
    hooks = [b.register_forward_pre_hook(lambda _b, a: seen.append((a[1].R, a[1].cap))
                                         if isinstance(a[1], Packing) else None) for b in m.blocks]
    return seen, hooks


def _loss_and_grads(m, x, eps):
    m.zero_grad(set_to_none=True)
    out = m(x, epsilon=eps)
    (out.logits.square().sum() + out.ponder_loss).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    return out, grads


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("accumulation", ["tb", "b"])
def test_packed_with_padding_equals_dense_forward_and_gradients(calibrated, family, accumulation):
    """Eval-mode batch norm (the dense path's statistics differ in training by design): padded
    packed buffers (eighths and thirds of the full size) give the dense masked path's logits,
    ponder loss and parameter gradients within 1e-5."""
    m = calibrated(family, accumulation)
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    m.packed_halting = False
    dense, g_dense = _loss_and_grads(m, x, 0.5)
    assert float(dense.token_ratio) < 1.0
    seen, hooks = _caps(m)
    try:
        # eager blocks slice rows per timestep (lif_prefix); compiled ones gather them (lif_grid)
        for buckets, compiled in ((8, False), (3, False), (0, False), (8, True), (0, True)):
            m.packed_halting, m.pack_buckets, m.compiled = True, buckets, compiled
            packed, g_packed = _loss_and_grads(m, x, 0.5)
            for name in ("logits", "ponder_loss", "halting_probs", "token_ratio"):
                torch.testing.assert_close(getattr(packed, name), getattr(dense, name), rtol=0, atol=1e-5,
                                           msg=f"{name}, buckets {buckets}, compiled {compiled}")
            assert g_packed.keys() == g_dense.keys()
            for n in g_dense:
                torch.testing.assert_close(g_packed[n], g_dense[n], rtol=1e-5, atol=1e-5,
                                           msg=f"d {n}, buckets {buckets}, compiled {compiled}")
    finally:
        m.packed_halting, m.pack_buckets, m.compiled = True, None, False
        for h in hooks:
            h.remove()
    assert any(cap > R for R, cap in seen)  # padding rows took part


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_change_training(family):
    """Training mode (batch statistics over the running rows): padded buffers give the exact
    buffers' logits, gradients and batch-norm running statistics within 1e-5."""
    results = []
    for buckets, compiled in ((0, False), (8, False), (8, True)):
        torch.manual_seed(0)
        m = create_model(f"{family}-2-32", img_size=16, halting=dict(HALT[family], epsilon=0.3)).train()
        m.pack_buckets, m.compiled = buckets, compiled  # compiled: the grid LIF, as compiled blocks run
        seen, _ = _caps(m)
        out, grads = _loss_and_grads(m, torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)), None)
        stats = {n: b.clone() for n, b in m.named_buffers() if "running" in n}
        results.append((out, grads, stats, seen))
    (exact, g0, s0, seen0), *padded_runs = results
    assert float(exact.token_ratio) < 1.0 and all(c == r for r, c in seen0)
    # a bias right before a training batch norm has a gradient of 0 in exact arithmetic (the
    # norm removes it); its rounding noise (1e-5 of a cancelling sum) is left out
    scale = max(float(g.abs().max()) for g in g0.values())
    for padded, g1, s1, seen1 in padded_runs:
        assert any(c > r for r, c in seen1)
        torch.testing.assert_close(padded.logits, exact.logits, rtol=0, atol=1e-5)
        for n in (n for n in g0 if not n.endswith(".fc.bias")):
            torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-5 * scale, msg=f"d {n}")
        for n in s0:
            torch.testing.assert_close(s1[n], s0[n], rtol=1e-5, atol=1e-6, msg=n)


def test_packing_layout():
    # tb-like mask: token 0 runs t = 0..3, token 1 t = 0..1, token 2 never, token 3 t = 0
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.float32)
    x = torch.arange(1.0, 17.0).view(4, 1, 4, 1)
    pk = Packing.from_mask(mask.view(4, 1, 4), prefix=True)
    assert (pk.R, pk.cap, pk.ucap, pk.pad, pk.grid_off) == (7, 7, 3, None, None)
    assert pk.rows.tolist() == [0, 1, 3, 4, 5, 8, 12]  # t*K + k, timestep-major, longest-running first
    assert pk.pack(x).flatten().tolist() == [1, 2, 4, 5, 6, 9, 13]
    assert torch.equal(pk.unpack(pk.pack(x)), x * mask.view(4, 1, 4, 1))
    # halves of the 16 cells: 7 rows in a capacity of 8, the padding row zero and never unpacked
    half = Packing.from_mask(mask.view(4, 1, 4), buckets=2, prefix=True)
    assert (half.R, half.cap, half.ucap) == (7, 8, 4) and half.rows.tolist()[-1] == 16
    assert half.pack(x).flatten().tolist() == [1, 2, 4, 5, 6, 9, 13, 0]
    assert torch.equal(half.unpack(half.pack(x) + 1), (x + 1) * mask.view(4, 1, 4, 1))
    assert half.gather(x.view(4, 1, 4)).tolist() == [1, 2, 4, 5, 6, 9, 13, 0]
    # the grid holds each running row at (t, slot) of the tokens 0, 1, 3 (and an empty slot)
    assert (half.grid.view(4, 4)[:, :3] + 1).tolist()[0] == [1, 2, 3]
    assert half.cells.tolist()[:7] == [0, 1, 2, 4, 5, 8, 12]
    # b-like mask: token 1 stops at t = 1 and runs again at t = 2: the grid cell (1, 1) is masked
    mask_b = torch.tensor([[1, 1], [1, 0], [1, 1]], dtype=torch.float32).view(3, 1, 2)
    assert Packing.from_mask(mask_b).grid_off.flatten().tolist() == [False, False, False, True, False, False]
    sub_mask = mask.clone().index_fill_(1, torch.tensor([3]), 0).view(4, 1, 4)
    for prev in (pk, half):
        for buckets in (0, 2):
            sub = Packing.from_mask(sub_mask, buckets=buckets, prefix=True)
            assert torch.equal(sub.take(prev, prev.pack(x)), sub.pack(x))


def test_capacity_buckets():
    assert [capacity(n, 64, 8) for n in (1, 8, 9, 63, 64)] == [8, 8, 16, 64, 64]
    assert capacity(9, 64, 0) == 9 and capacity(5, 10, 3) == 8
    assert len({capacity(n, 1000, 8) for n in range(1, 1001)}) == 8


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


class HostReads(TorchFunctionMode):
    """Counts the calls that read a tensor's values back to the host (a device synchronisation on
    a GPU): ``.item()``, ``.tolist()``, ``bool``/``int``/``float``/``index`` of a tensor, ``.cpu()``,
    ``.numpy()``, ``nonzero``, boolean-mask indexing and ``repeat_interleave`` without an output
    size. The scalar conversions are counted where they land (``aten._local_scalar_dense``), the
    rest by name; ``reads`` lists what was counted."""

    NAMED = {"tolist", "cpu", "numpy", "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive"}

    def __init__(self):
        super().__init__()
        self.reads = []
        self._scalars = _ScalarReads(self.reads)

    def __enter__(self):
        self._scalars.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self._scalars.__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in self.NAMED:
            self.reads.append(name)
        elif name == "__getitem__" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                           for i in (args[1] if isinstance(args[1], tuple) else (args[1],))):
            self.reads.append("boolean-mask indexing")
        elif name == "repeat_interleave" and kwargs.get("output_size") is None and (
                len(args) > 1 and isinstance(args[1], torch.Tensor) or isinstance(kwargs.get("repeats"), torch.Tensor)):
            self.reads.append("repeat_interleave without output_size")
        return func(*args, **kwargs)


class _ScalarReads(TorchDispatchMode):
    """``.item()``, ``bool()``, ``int()``, ``float()`` of a tensor all end in ``_local_scalar_dense``."""

    def __init__(self, reads):
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append("scalar")
        return func(*args, **(kwargs or {}))


def test_host_read_counter_sees_each_kind():
    x = torch.arange(6.0)
    ones = torch.ones(6, dtype=torch.long)
    with HostReads() as c:
        x.tolist(), x[0].item(), int(x[1]), bool(x[2] > 0), float(x[3]), x.cpu(), x.nonzero(), x[x > 2]
        torch.repeat_interleave(x, ones)
        torch.repeat_interleave(x, ones, output_size=6), x.index_select(0, ones), x.sum()  # none of these
    assert c.reads == ["tolist", "scalar", "scalar", "scalar", "scalar", "cpu", "nonzero", "boolean-mask indexing",
                       "repeat_interleave without output_size"]


def test_packed_forward_reads_the_host_at_most_once_per_block():
    """One packed eval forward of spikformer-4-384 (batch 8, 16x16 images to keep it cheap on the
    CPU, token ratio near 0.5) reads the host at most once per block more than the static model."""
    torch.manual_seed(0)
    m = create_model("spikformer-4-384", img_size=16, halting=dict(alpha=-5.0, beta=2.5)).eval()
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    calibrate_batchnorm(m, x)
    with torch.no_grad():
        with HostReads() as packed:
            out = m(x)
        halting = m.halting
        m.set_halting(None)
        with HostReads() as static:
            m(x)
        m.set_halting(halting)
        m.packed_halting = False
        assert out.decision_ops == m(x).decision_ops  # the packed count of scored cells, read nowhere
    assert 0.35 < float(out.token_ratio) < 0.65
    extra = len(packed.reads) - len(static.reads)
    assert extra <= m.depth, (packed.reads, static.reads)


@pytest.mark.parametrize("accumulation", ["b", "tb"])
@pytest.mark.parametrize("packed", [True, False])
def test_halting_state_is_float32_under_bf16_autocast(accumulation, packed):
    """Under CPU bfloat16 autocast the blocks compute in bfloat16, the halting state (scores,
    cumulative sums, remainders, masks, p) in float32: in ``b`` each token's p over the blocks
    sums to 1 within 1e-6 at every timestep (in ``tb`` to at most 1, SPEC 2.3)."""
    torch.manual_seed(0)
    m = create_model("spikingformer-2-32", img_size=16, halting=dict(alpha=5.0, beta=-5.0, epsilon=0.1,
                                                                     accumulation=accumulation)).train()
    m.packed_halting = packed
    seen = []
    m.blocks[0].register_forward_hook(lambda _m, _a, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
        (out.logits.float().sum() + out.ponder_loss).backward()
    assert seen == [torch.bfloat16] and out.halting_probs.dtype == torch.float32
    assert out.ponder_loss.dtype == torch.float32 and float(out.token_ratio) < 1.0
    sums = out.halting_probs.sum(2)  # [B, T, K]: over the blocks
    if accumulation == "b":
        torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-6)
    else:
        assert (sums <= 1 + 1e-6).all() and (out.halting_probs >= 0).all()


@pytest.mark.slow(15)
def test_compiled_blocks_recompile_once_per_bucket():
    """torch.compile of the parts (Dynamo with the eager backend: the recompiles are Dynamo's,
    whatever the backend) over training steps and evaluations at several epsilons: at most one
    graph per capacity bucket met (and per train/eval mode), plus the stem's."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    m = create_model("spikingformer-2-32", img_size=16, timesteps=2, halting=dict(alpha=5.0, beta=-5.0))
    m.pack_buckets = 3  # thirds: few graphs keep the test short; eighths behave alike
    m.compile_parts(backend="eager", dynamic=False)
    buckets, sizes = set(), set()

    def record(blk, args):
        buckets.add((args[1].cap, args[1].ucap, args[1].full, blk.training))
        sizes.add((args[1].R, args[1].full))

    for b in m.blocks:
        b.register_forward_pre_hook(record)
    ratios = []
    for i, eps in enumerate((0.0, 0.1, 0.2, 0.3, 0.4, 0.1)):
        m.train(i < 5)  # five training steps, then an evaluation
        x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(i))
        out = m(x, epsilon=eps)
        if m.training:
            (out.logits.sum() + out.ponder_loss).backward()
        ratios.append(float(out.token_ratio))
    assert len(set(ratios[:5])) == 5, ratios  # the running rows differed from batch to batch
    cells = 2 * 4 * m.num_tokens
    assert {b[0] for b in buckets} <= {-(-cells // 3) * i for i in (1, 2)} | {cells}  # thirds, or all cells
    # more running-row counts than buffer shapes: the buckets merged them
    assert len({R for R, full in sizes if not full}) > len({b[:2] for b in buckets if not b[2]})
    graphs = counters["stats"]["unique_graphs"]
    assert 0 < graphs <= len(buckets) + 2, (graphs, sorted(buckets))  # + the stem in train and eval
