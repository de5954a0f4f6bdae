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
def test_b_mode_without_halting_equals_static_model(family):
    """With h ~ 0 every token runs every block; b's mean field is then the static mean over T."""
    torch.manual_seed(0)
    x = torch.rand(3, 3, 16, 16)
    m = create_model(f"{family}-2-32", img_size=16).eval()
    mh = create_model(f"{family}-2-32", img_size=16, halting=dict(alpha=0.0, beta=-50.0, accumulation="b")).eval()
    mh.load_state_dict(m.state_dict())
    torch.testing.assert_close(mh(x).logits, m(x).logits)


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
    T, L = m.timesteps, m.depth
    calls = {}  # (block, kind, name) -> list of tensors, one per timestep in call order

    def hook(key):
        def fn(_mod, inputs, out):
            t = inputs[0] if key[1] == "in" else out
            if t.dim() == 4:  # token tensors [1, B, K, C]; SDT's column sums are 5-D
                calls.setdefault(key, []).append(t.detach())
        return fn

    for l, block in enumerate(m.blocks):
        for name, mod in block.named_modules():
            cls = type(mod).__name__
            if cls == "LIFNode":
                mod.register_forward_hook(hook((l, "out", name)))
            elif cls == "TokenLinear":
                mod.register_forward_hook(hook((l, "in", name)))
    with torch.no_grad():
        out = m(x)
    assert float(out.token_ratio) < 1.0  # some tokens did halt
    cells = out.cells_processed  # [B, K]
    halted_seen = fired = 0
    for (l, _, _), seq in calls.items():
        assert len(seq) == T
        for t, s in enumerate(seq):
            idx = t * L + l
            if accumulation == "tb":
                running = cells > idx  # tokens run a prefix of the scan
            else:  # b: a token runs blocks 0..N^t-1 of every timestep
                running = out.halting_probs[:, t, : l + 1].sum(1) < 1 - 1e-6
                running |= out.halting_probs[:, t, l] > 0
            silent = ~running
            halted_seen += int(silent.sum())
            assert (s[0][silent] == 0).all(), (l, t)
            fired += int(s[0][running].ne(0).sum())
    assert halted_seen > 0 and fired > 0


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
    # and on to parameters: the last block's MLP output, first channel
    w = m.blocks[-1].mlp.fc2.fc.weight.grad
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
