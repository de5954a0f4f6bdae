"""Backbones, stems and halting inside the model."""

import pytest
import torch

from stas_sweep import create_model, list_models
from stas_sweep.models.diagnostics import calibrate_batchnorm, temporal_similarity
from stas_sweep.models.stems import num_tokens

FAMILIES = ["spikformer", "spikingformer", "spikedriven"]
HALT = dict(alpha=5.0, beta=-5.0, epsilon=0.01)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "name, kwargs, paper_m",
    [
        ("spikformer-4-384", dict(num_classes=10, img_size=32), 9.32),
        ("spikingformer-4-384", dict(num_classes=10, img_size=32), 9.32),
        ("spikingformer-8-384", dict(num_classes=1000, img_size=224), 16.81),
        ("spikingformer-8-512", dict(num_classes=1000, img_size=224), 29.68),
        ("spikformer-8-768", dict(num_classes=1000, img_size=224), 66.34),
    ],
)
def test_parameter_counts_match_paper(name, kwargs, paper_m):
    count = n_params(create_model(name, **kwargs)) / 1e6
    assert abs(count - paper_m) / paper_m < 0.01, count


def test_registry_has_published_and_tiny_sizes():
    names = list_models()
    for family in FAMILIES:
        for size in ["4-384", "2-256", "2-384", "8-384", "8-512", "8-768", "1-16", "2-32"]:
            assert f"{family}-{size}" in names
    assert list_models("spikedriven-8-*") == ["spikedriven-8-384", "spikedriven-8-512", "spikedriven-8-768"]


def test_token_counts():
    assert num_tokens(32) == 64 and num_tokens(224) == 196 and num_tokens(128) == 64 and num_tokens(16) == 16


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown model 'vit-4-384'.*spikformer-4-384"):
        create_model("vit-4-384")
    with pytest.raises(ValueError, match="img_size=30.*multiple of 4"):
        create_model("spikformer-1-16", img_size=30)
    with pytest.raises(ValueError, match="img_size=200.*multiple of 16"):
        create_model("spikformer-1-16", img_size=200)
    with pytest.raises(ValueError, match=r"epsilon must lie in \[0, 1\)"):
        create_model("spikformer-1-16", halting=dict(epsilon=1.5))
    with pytest.raises(ValueError, match="accumulation 'x'.*tb, b"):
        create_model("spikformer-1-16", halting=dict(accumulation="x"))
    with pytest.raises(ValueError, match="stem 'xsps'.*sps, isps"):
        create_model("spikformer-1-16", stem="xsps")
    with pytest.raises(ValueError, match="unknown halting keys.*gamma"):
        create_model("spikformer-1-16", halting=dict(gamma=1))
    m = create_model("spikformer-1-16")
    with pytest.raises(ValueError, match="static"):
        m.set_epsilon(0.1)
    mh = create_model("spikformer-1-16", halting=HALT)
    with pytest.raises(ValueError, match="epsilon"):
        mh.set_epsilon(1.0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("stem", ["sps", "isps"])
def test_forward_shapes_and_static_ratio(family, stem):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    m = create_model(f"{family}-2-32", img_size=16, num_classes=7, stem=stem)
    out = m(x)
    assert out.logits.shape == (2, 7)
    assert float(out.token_ratio) == 1.0 and float(out.ponder_loss) == 0.0
    assert out.cells_processed.shape == (2, 16) and (out.cells_processed == 4 * 2).all()
    mh = create_model(f"{family}-2-32", img_size=16, num_classes=7, stem=stem, halting=HALT)
    mh.load_state_dict(m.state_dict())  # stage 2 starts from stage 1: same parameters
    out = mh(x)
    assert out.logits.shape == (2, 7)
    assert out.halting_scores.shape == (2, 4, 2, 16) and out.active_tokens.shape == (2, 4, 2)
    assert ((out.cells_processed >= 1) & (out.cells_processed <= 8)).all()
    assert out.ponder_loss.requires_grad


def test_dvs_event_frames_input():
    m = create_model("spikingformer-1-16", img_size=128, in_channels=2, timesteps=3, stem="sps")
    assert m.num_tokens == 64
    frames = (torch.rand(2, 3, 2, 128, 128) < 0.05).float()  # [B, T, 2, H, W], varies per step
    assert m(frames).logits.shape == (2, 10)
    with pytest.raises(ValueError, match="4 timesteps, the model 3"):
        m(torch.rand(1, 4, 2, 128, 128))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("accumulation", ["tb", "b"])
def test_no_early_halting_equals_static_model(family, accumulation):
    """With h ~ 0 every token runs every block and the mean field is the static mean over T, K."""
    torch.manual_seed(0)
    x = torch.rand(3, 3, 16, 16)
    m = create_model(f"{family}-2-32", img_size=16)
    for p in m.parameters():  # large weights: a wrong read of the blocks' outputs would show
        p.data.mul_(8.0)
    m.eval()
    mh = create_model(f"{family}-2-32", img_size=16, halting=dict(alpha=0.0, beta=-50.0, accumulation=accumulation))
    mh.load_state_dict(m.state_dict())
    mh.eval()
    with torch.no_grad():
        out, ref = mh(x), m(x)
    assert float(out.token_ratio) == 1.0
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("packed", [True, False])
def test_each_block_runs_once_per_forward(family, packed):
    m = create_model(f"{family}-2-32", img_size=16, halting=HALT)
    m.packed_halting = packed
    calls = []
    for l, block in enumerate(m.blocks):
        block.register_forward_pre_hook(lambda _m, args, l=l: calls.append((l, args[0].shape[-1])))
    m(torch.rand(2, 3, 16, 16))
    assert calls == [(0, 32), (1, 32)]  # L calls, each on all T timesteps


def _calibrated(family, seed=0, **kw):
    torch.manual_seed(seed)
    x = torch.rand(4, 3, 16, 16)
    m = create_model(f"{family}-2-32", img_size=16, **kw)
    calibrate_batchnorm(m, x)
    return m.eval(), x


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("accumulation", ["tb", "b"])
def test_halted_tokens_are_silent_in_later_layers(family, accumulation):
    m, x = _calibrated(family, halting=dict(HALT, accumulation=accumulation))
    m.packed_halting = False  # the dense reference path: halted tokens present as zeros
    calls = {}  # (block, kind, name) -> tensors [T, B, K, C], one per call

    def hook(key):
        def fn(_mod, inputs, out):
            t = inputs[0] if key[1] == "in" else out
            if t.dim() == 4:  # token tensors; SDT's column sums are 5-D
                calls.setdefault(key, []).append(t.detach())
        return fn

    for l, block in enumerate(m.blocks):
        for name, mod in block.named_modules():
            if hasattr(mod, "v_threshold"):  # a LIF neuron
                mod.register_forward_hook(hook((l, "out", name)))
            elif type(mod).__name__ == "TokenLinear":
                mod.register_forward_hook(hook((l, "in", name)))
    with torch.no_grad():
        out = m(x)
    assert float(out.token_ratio) < 1.0  # some tokens did halt
    N = out.halting_blocks.transpose(0, 1)  # [T, B, K]
    halted_seen = fired = 0
    for (l, _, _), seq in calls.items():
        assert len(seq) == 1  # one call per block
        running = N > l  # token runs block l at timestep t
        halted_seen += int((~running).sum())
        assert (seq[0][~running] == 0).all(), l
        fired += int(seq[0][running].ne(0).sum())
    assert halted_seen > 0 and fired > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_tb_halting_block_never_grows_with_time(family):
    m, x = _calibrated(family, halting=dict(alpha=5.0, beta=-6.0, epsilon=0.05))
    with torch.no_grad():
        out = m(x)
    N = out.halting_blocks  # [B, T, K]
    assert (N[:, 1:] <= N[:, :-1]).all()
    assert (N[:, 1:] < N[:, :-1]).any()  # tokens do halt earlier in later timesteps
    assert torch.equal(out.cells_processed, N.sum(1))
    assert float(out.token_ratio) == pytest.approx(float(N.mean()) / m.depth)


def test_halting_state_float32_under_autocast():
    m, x = _calibrated("spikingformer", halting=HALT)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.halting_scores.dtype == out.halting_probs.dtype == torch.float32
    assert out.ponder_loss.dtype == out.token_ratio.dtype == torch.float32


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_token_ratio_never_rises_with_epsilon(family, seed):
    m, x = _calibrated(family, seed=seed, halting=dict(alpha=5.0, beta=-8.0, epsilon=0.0))
    ratios = []
    with torch.no_grad():
        for eps in [0.0, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95]:
            ratios.append(float(m(x, epsilon=eps).token_ratio))
    assert all(b <= a + 1e-9 for a, b in zip(ratios, ratios[1:])), ratios
    assert ratios[-1] < ratios[0]
    m.set_epsilon(0.4)  # the knob after construction gives the same as the forward argument
    with torch.no_grad():
        assert float(m(x).token_ratio) == pytest.approx(ratios[4])


@pytest.mark.parametrize("family", FAMILIES)
def test_ponder_loss_gradient_reaches_halting_channel(family):
    m, x = _calibrated(family, halting=HALT)
    m.train()
    grads = []

    def keep_grad(_mod, _inputs, out):
        out.register_hook(grads.append)

    hooks = [b.register_forward_hook(keep_grad) for b in m.blocks]
    out = m(x)
    out.ponder_loss.backward()
    for h in hooks:
        h.remove()
    assert any(float(g[..., 0].abs().sum()) > 0 for g in grads)
    # and on to parameters: block 1's MLP output, first channel (the last block's h only
    # decides halting; no remainder reads it)
    w = m.blocks[0].mlp.fc2.fc.weight.grad
    assert w is not None and float(w[0].abs().sum()) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_isps_temporal_similarity(family):
    sims = {}
    for stem in ["sps", "isps"]:
        m, x = _calibrated(family, stem=stem)
        sims[stem] = temporal_similarity(m, x)
    assert sims["isps"][0] > 0.999  # identical tokens at every timestep
    assert sum(sims["isps"]) / 2 > sum(sims["sps"]) / 2
    assert sims["sps"][0] < 0.99
