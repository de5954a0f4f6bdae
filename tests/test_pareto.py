"""Pareto dominance, hypervolume and front plots (stas_sweep.sweep)."""

import math

import numpy as np
import pytest

from stas_sweep.sweep.pareto import (
    Objective,
    as_objectives,
    hypervolume,
    non_dominated,
    pareto_front,
)

ACC_ENERGY = [Objective("accuracy", "max"), Objective("energy_mj", "min")]
THREE = [Objective("accuracy", "max"), Objective("energy_mj", "min"), Objective("token_ratio", "min")]


# ------------------------------------------------------------------------------- helpers


def brute_non_dominated(points, objectives):
    """Straight O(n^2) definition, written independently of the implementation."""

    def val(p, o):
        v = p.get(o.name)
        return None if v is None or not math.isfinite(v) else v

    def better_eq(a, b, o):  # a no worse than b
        return a >= b if o.mode == "max" else a <= b

    def strictly(a, b, o):
        return a > b if o.mode == "max" else a < b

    valid = [all(val(p, o) is not None for o in objectives) for p in points]
    out = []
    for i, p in enumerate(points):
        if not valid[i]:
            out.append(False)
            continue
        dominated = False
        for j, q in enumerate(points):
            if j == i or not valid[j]:
                continue
            if all(better_eq(q[o.name], p[o.name], o) for o in objectives) and any(
                strictly(q[o.name], p[o.name], o) for o in objectives
            ):
                dominated = True
                break
        out.append(not dominated)
    return out


def random_points(rng, n, objectives, levels=6, dup_frac=0.2, nan_frac=0.05):
    """Points on a coarse grid (many ties), some exact duplicates, a few NaN/missing values."""
    pts = []
    for i in range(n):
        if pts and rng.random() < dup_frac:
            p = dict(pts[rng.integers(len(pts))])
        else:
            p = {o.name: float(rng.integers(levels)) / levels for o in objectives}
        p["trial_id"] = f"t{i:03d}"
        pts.append(p)
    for i in range(n):
        if rng.random() < nan_frac:
            o = objectives[rng.integers(len(objectives))]
            if rng.random() < 0.5:
                pts[i][o.name] = float("nan")
            else:
                pts[i].pop(o.name)
    return pts


def to_min(points, objectives, reference):
    F = np.array([[(-1 if o.mode == "max" else 1) * p[o.name] for o in objectives] for p in points], float)
    r = np.array([(-1 if o.mode == "max" else 1) * reference[o.name] for o in objectives], float)
    return F, r


def dominated_mask(samples, F, r):
    """Which samples (minimisation space) lie in the union of boxes [F_i, r]."""
    F = F[(F < r).all(axis=1)]
    if len(F) == 0:
        return np.zeros(len(samples), bool)
    return (F[None, :, :] <= samples[:, None, :]).all(axis=2).any(axis=1)


# ------------------------------------------------------------------------------- Objective


def test_objective_validation_names_bad_value_and_accepted_ones():
    assert Objective("accuracy", "max").sign == -1.0
    assert Objective("energy_mj", "min").sign == 1.0
    assert Objective("energy_mj", "min").label == "energy_mj (min)"
    with pytest.raises(ValueError) as e:
        Objective("accuracy", "maximize")
    assert "'maximize'" in str(e.value) and "'max'" in str(e.value) and "'min'" in str(e.value)
    with pytest.raises(ValueError, match="non-empty"):
        Objective("", "min")
    with pytest.raises(ValueError, match="unique"):
        as_objectives([Objective("a", "min"), ("a", "max")])
    with pytest.raises(ValueError, match="at least one"):
        as_objectives([])
    assert as_objectives([("a", "min")]) == [Objective("a", "min")]


# ------------------------------------------------------------------------------- dominance


@pytest.mark.parametrize("objectives", [ACC_ENERGY, THREE, [Objective("a", "min"), Objective("b", "min")],
                                        [Objective("a", "max"), Objective("b", "max"), Objective("c", "max")]],
                         ids=["2d-max-min", "3d-max-min-min", "2d-min-min", "3d-max-max-max"])
def test_non_dominated_matches_brute_force(objectives):
    rng = np.random.default_rng(1234)
    for trial in range(25):
        n = int(rng.integers(0, 60))
        pts = random_points(rng, n, objectives, levels=int(rng.integers(2, 8)))
        assert non_dominated(pts, objectives) == brute_non_dominated(pts, objectives), trial


def test_non_dominated_chunking_matches_brute_force(monkeypatch):
    import stas_sweep.sweep.pareto as pareto

    monkeypatch.setattr(pareto, "_CHUNK_ELEMENTS", 7)  # forces many tiny chunks
    rng = np.random.default_rng(7)
    pts = random_points(rng, 80, THREE)
    assert non_dominated(pts, THREE) == brute_non_dominated(pts, THREE)


def test_non_dominated_small_cases():
    pts = [
        {"accuracy": 0.9, "energy_mj": 1.0},  # front
        {"accuracy": 0.9, "energy_mj": 1.0},  # duplicate: also front
        {"accuracy": 0.8, "energy_mj": 0.5},  # front
        {"accuracy": 0.8, "energy_mj": 0.7},  # dominated by [2] (tie on accuracy)
        {"accuracy": 0.95, "energy_mj": float("nan")},  # invalid
        {"accuracy": 0.99},  # missing energy: invalid
        {"accuracy": 0.7, "energy_mj": None},  # invalid
        {"accuracy": 1.0, "energy_mj": float("inf")},  # non-finite: invalid
    ]
    assert non_dominated(pts, ACC_ENERGY) == [True, True, True, False, False, False, False, False]
    assert non_dominated([], ACC_ENERGY) == []
    assert non_dominated([{"accuracy": 0.1, "energy_mj": 9.0}], ACC_ENERGY) == [True]


def test_pareto_front_sorted_by_first_objective_and_copies():
    pts = [
        {"trial_id": "a", "accuracy": 0.9, "energy_mj": 1.0},
        {"trial_id": "b", "accuracy": 0.7, "energy_mj": 0.2},
        {"trial_id": "c", "accuracy": 0.6, "energy_mj": 0.9},
        {"trial_id": "d", "accuracy": 0.8, "energy_mj": 0.5},
    ]
    front = pareto_front(pts, ACC_ENERGY)
    assert [p["trial_id"] for p in front] == ["b", "d", "a"]
    assert all(isinstance(p, dict) for p in front)
    front[0]["trial_id"] = "changed"
    assert pts[1]["trial_id"] == "b"
    # first objective energy: sorted by energy ascending
    front = pareto_front(pts, [Objective("energy_mj", "min"), Objective("accuracy", "max")])
    assert [p["trial_id"] for p in front] == ["b", "d", "a"]


# ------------------------------------------------------------------------------- hypervolume


def test_hypervolume_2d_hand_computed():
    # minimise both, reference (4, 4): boxes [1,4]x[3,4], [2,4]x[2,4], [3,4]x[1,4]
    objs = [Objective("f1", "min"), Objective("f2", "min")]
    pts = [{"f1": 1, "f2": 3}, {"f1": 2, "f2": 2}, {"f1": 3, "f2": 1}]
    assert hypervolume(pts, objs, {"f1": 4, "f2": 4}) == pytest.approx(3 + 2 + 1)
    # max accuracy / min energy: acc 0.8 @ 1 mJ, acc 0.6 @ 0.5 mJ, reference acc 0, energy 2
    pts = [{"accuracy": 0.8, "energy_mj": 1.0}, {"accuracy": 0.6, "energy_mj": 0.5}]
    # union = [0.5,2]x[0,0.6] + [1,2]x[0.6,0.8] = 0.9 + 0.2
    assert hypervolume(pts, ACC_ENERGY, {"accuracy": 0.0, "energy_mj": 2.0}) == pytest.approx(1.1)
    # a point on the reference boundary or beyond adds nothing
    pts_more = pts + [{"accuracy": 0.99, "energy_mj": 2.0}, {"accuracy": 0.0, "energy_mj": 0.1},
                      {"accuracy": -1.0, "energy_mj": 5.0}]
    assert hypervolume(pts_more, ACC_ENERGY, {"accuracy": 0.0, "energy_mj": 2.0}) == pytest.approx(1.1)
    assert hypervolume([], ACC_ENERGY, {"accuracy": 0.0, "energy_mj": 2.0}) == 0.0


def test_hypervolume_1d_and_single_point():
    assert hypervolume([{"a": 3.0}, {"a": 1.0}], [Objective("a", "min")], {"a": 5.0}) == pytest.approx(4.0)
    p = [{"accuracy": 0.5, "energy_mj": 1.0, "token_ratio": 0.25}]
    ref = {"accuracy": 0.0, "energy_mj": 2.0, "token_ratio": 1.0}
    assert hypervolume(p, THREE, ref) == pytest.approx(0.5 * 1.0 * 0.75)


def test_hypervolume_3d_hand_computed():
    objs = [Objective(n, "min") for n in "xyz"]
    ref = {"x": 2, "y": 2, "z": 2}
    # two unit-overlap boxes: [0,2]x[1,2]x[1,2] (vol 2) and [1,2]x[0,2]x[1,2] (vol 2), overlap 1
    pts = [{"x": 0, "y": 1, "z": 1}, {"x": 1, "y": 0, "z": 1}]
    assert hypervolume(pts, objs, ref) == pytest.approx(3.0)
    # the three "axis" points of the unit cube corner plus the corner itself
    pts = [{"x": 0, "y": 1, "z": 1}, {"x": 1, "y": 0, "z": 1}, {"x": 1, "y": 1, "z": 0}]
    # inclusion-exclusion: 3*2 - 3*1 + 1 = 4
    assert hypervolume(pts, objs, ref) == pytest.approx(4.0)
    assert hypervolume(pts + [{"x": 1, "y": 1, "z": 1}], objs, ref) == pytest.approx(4.0)
    assert hypervolume(pts + [{"x": 0, "y": 0, "z": 0}], objs, ref) == pytest.approx(8.0)
    # 4-D: inclusion-exclusion for two boxes
    objs4 = [Objective(n, "min") for n in "abcd"]
    pts4 = [{"a": 0, "b": 1, "c": 0, "d": 1}, {"a": 1, "b": 0, "c": 1, "d": 0}]
    assert hypervolume(pts4, objs4, dict.fromkeys("abcd", 2)) == pytest.approx(4 + 4 - 1)


@pytest.mark.parametrize("dim", [2, 3])
def test_hypervolume_exact_on_integer_grid(dim):
    """Integer coordinates: counting the dominated unit cells gives the exact value."""
    rng = np.random.default_rng(100 + dim)
    modes = ["max", "min", "min"][:dim]
    objs = [Objective(f"o{k}", m) for k, m in enumerate(modes)]
    L = 12
    sign = np.where(np.array(modes) == "max", -1.0, 1.0)
    ref = {o.name: (0 if o.mode == "max" else L) for o in objs}  # min-space box: [-L,0] or [0,L]
    centres = np.stack(np.meshgrid(*[np.arange(L) + 0.5] * dim, indexing="ij"), -1).reshape(-1, dim)
    cells = centres * sign  # unit-cell centres in min-space
    for _ in range(10):
        n = int(rng.integers(1, 30))
        # min: values 0..L+1, max: values -1..L; some lie on or beyond the reference (they
        # must add nothing), and the coarse grid makes many ties and duplicates
        pts = [{o.name: float(rng.integers(0, L + 2) if o.mode == "min" else rng.integers(-1, L + 1))
                for o in objs} for _ in range(n)]
        F, r = to_min(pts, objs, ref)
        expected = float(dominated_mask(cells, F, r).sum())
        assert hypervolume(pts, objs, ref) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("dim", [2, 3])
def test_hypervolume_monte_carlo(dim):
    rng = np.random.default_rng(42 + dim)
    objs = THREE[:dim]
    ref = {"accuracy": 0.0, "energy_mj": 1.0, "token_ratio": 1.0}
    n_samples = 200_000
    for _ in range(3):
        n = int(rng.integers(5, 40))
        pts = [{"accuracy": rng.random(), "energy_mj": rng.random(), "token_ratio": rng.random()}
               for _ in range(n)]
        F, r = to_min(pts, objs, ref)
        lo = np.array([-1.0, 0.0, 0.0][:dim])  # bounding box of min-space: [lo, r]
        u = lo + rng.random((n_samples, dim)) * (r - lo)
        frac = 0.0
        for chunk in np.array_split(u, 20):
            frac += dominated_mask(chunk, F, r).sum()
        frac /= n_samples
        box = float(np.prod(r - lo))
        estimate = frac * box
        sigma = box * math.sqrt(max(frac * (1 - frac), 1e-12) / n_samples)
        assert hypervolume(pts, objs, ref) == pytest.approx(estimate, abs=5 * sigma + 1e-12)


def test_hypervolume_matches_optuna_internal_if_available():
    try:
        from optuna._hypervolume import compute_hypervolume
    except Exception:  # private API: only an extra cross-check
        pytest.skip("optuna._hypervolume.compute_hypervolume not available")
    rng = np.random.default_rng(5)
    ref = {"accuracy": 0.0, "energy_mj": 1.0, "token_ratio": 1.0}
    for dim in (2, 3):
        objs = THREE[:dim]
        for _ in range(5):
            pts = [{"accuracy": rng.random(), "energy_mj": rng.random(), "token_ratio": rng.random()}
                   for _ in range(int(rng.integers(1, 80)))]
            F, r = to_min(pts, objs, ref)
            assert hypervolume(pts, objs, ref) == pytest.approx(compute_hypervolume(F, r), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("dim", [2, 3])
def test_hypervolume_invariant_to_dominated_points(dim):
    rng = np.random.default_rng(9 + dim)
    objs = THREE[:dim]
    ref = {"accuracy": 0.0, "energy_mj": 1.0, "token_ratio": 1.0}
    pts = [{"accuracy": rng.random(), "energy_mj": rng.random(), "token_ratio": rng.random()} for _ in range(30)]
    base = hypervolume(pts, objs, ref)
    front = pareto_front(pts, objs)
    assert hypervolume(front, objs, ref) == pytest.approx(base, rel=1e-12)
    extra = []
    for p in front:  # worsen a front point in every objective -> dominated
        q = dict(p)
        q["accuracy"] -= 0.01 * rng.random()
        q["energy_mj"] += 0.01 * rng.random()
        q["token_ratio"] += 0.01 * rng.random()
        extra.append(q)
    extra += [dict(p) for p in front[:3]]  # exact duplicates
    extra += [{"accuracy": float("nan"), "energy_mj": 0.0, "token_ratio": 0.0}, {"accuracy": 1.0}]
    assert hypervolume(pts + extra, objs, ref) == pytest.approx(base, rel=1e-12)
    # adding a strictly better point increases it
    best = {"accuracy": 1.0, "energy_mj": 0.0, "token_ratio": 0.0}
    assert hypervolume(pts + [best], objs, ref) == pytest.approx(1.0) and base < 1.0


def test_hypervolume_reference_validation():
    pts = [{"accuracy": 0.5, "energy_mj": 1.0}]
    with pytest.raises(ValueError, match="energy_mj"):
        hypervolume(pts, ACC_ENERGY, {"accuracy": 0.0})
    with pytest.raises(ValueError, match="finite"):
        hypervolume(pts, ACC_ENERGY, {"accuracy": 0.0, "energy_mj": float("nan")})


def test_hypervolume_3d_few_hundred_points_is_fast():
    import time

    rng = np.random.default_rng(0)
    # points on the simplex: all non-dominated, the worst case for slicing
    w = rng.dirichlet([1, 1, 1], size=300)
    pts = [{"accuracy": 1 - a, "energy_mj": b, "token_ratio": c} for a, b, c in w]
    t0 = time.perf_counter()
    hv = hypervolume(pts, THREE, {"accuracy": 0.0, "energy_mj": 1.0, "token_ratio": 1.0})
    assert time.perf_counter() - t0 < 5.0
    assert 0.0 < hv < 1.0


# ------------------------------------------------------------------------------- plots


def _sweep_points(n=25, seed=11):
    rng = np.random.default_rng(seed)
    pts = []
    for i in range(n):
        eps = float(rng.choice([0.0, 0.01, 0.05]))
        acc = float(rng.uniform(0.5, 0.9))
        pts.append({"trial_id": f"trial_{i:04d}", "epsilon": eps, "alpha": float(rng.random()),
                    "beta": float(rng.random()), "delta_p": 0.001, "accuracy": acc,
                    "energy_mj": float(acc * rng.uniform(0.5, 1.5)), "token_ratio": float(rng.random())})
    pts.append({"trial_id": "trial_nan", "epsilon": 0.0, "accuracy": float("nan"), "energy_mj": 1.0})
    return pts


@pytest.mark.parametrize("objectives", [ACC_ENERGY, THREE, [Objective("energy_mj", "max"), Objective("accuracy", "max")]],
                         ids=["2d", "3d", "max-max"])
def test_plot_front_png(tmp_path, objectives):
    from stas_sweep.sweep.plots import plot_front_png

    out = plot_front_png(_sweep_points(), objectives, tmp_path / "sub" / "front.png", title="t")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_plot_front_png_handles_empty_and_non_objective_axes(tmp_path):
    from stas_sweep.sweep.plots import plot_front_png

    out = plot_front_png([], ACC_ENERGY, tmp_path / "empty.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = plot_front_png(_sweep_points(), ACC_ENERGY, tmp_path / "eps.png", x="epsilon", y="accuracy")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_front_html_is_small_and_self_contained_with_trial_ids(tmp_path):
    from stas_sweep.sweep.plots import plot_front_html

    pts = _sweep_points()
    out = plot_front_html(pts, ACC_ENERGY, tmp_path / "front.html")
    text = out.read_text(encoding="utf-8")
    assert "<html" in text[:1000].lower() and "</html>" in text[-1000:].lower()
    assert "<script" not in text and "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text  # nothing fetched: it renders offline, at once
    for p in pts[:-1]:  # the NaN point is not drawn
        assert p["trial_id"] in text
    assert "energy_mj (min)" in text and "accuracy (%, max)" in text
    assert "epsilon: " in text and "alpha: " in text
    assert "Pareto front (" in text
    assert text.count("<circle") == len(pts) - 1


def test_plot_front_html_stays_under_500_kb_for_a_large_sweep(tmp_path):
    """The artifact viewer shows it within seconds: 200 trials x 5 epsilons stay far below 500 kB."""
    from stas_sweep.sweep.plots import plot_front_html

    rng = np.random.default_rng(1)
    pts = [{"trial_id": f"{i // 5:05d}_{'abcdef'[i % 5]}", "epsilon": [0.0, 0.05, 0.1, 0.2, 0.4][i % 5],
            "accuracy": float(rng.uniform(50, 95)), "energy_mj": float(rng.uniform(0.1, 2.0)),
            "energy_strict_mj": float(rng.uniform(0.5, 6.0)), "token_ratio": float(rng.random()),
            "energy_reduction": float(rng.uniform(0, 60)), "halting.alpha": float(rng.uniform(1, 9)),
            "halting.beta": float(rng.uniform(-30, -1)), "halting.delta_p": float(rng.uniform(1e-3, 1e-1)),
            "optim.lr": float(rng.uniform(1e-4, 1e-2))} for i in range(1000)]
    size = plot_front_html(pts, ACC_ENERGY, tmp_path / "front.html").stat().st_size
    assert size < 500_000, size


def test_plot_front_png_draws_overlapping_points(tmp_path):
    """Two epsilons that halt nothing give the same (energy, accuracy): both stay visible (hollow
    and half-transparent markers) and the place is labelled with its count."""
    from stas_sweep.sweep.plots import _overlaps, plot_front_png

    pts = [{"trial_id": "a", "epsilon": e, "accuracy": 90.0, "energy_mj": 1.0} for e in (0.0, 0.1)]
    pts.append({"trial_id": "b", "epsilon": 0.0, "accuracy": 80.0, "energy_mj": 0.5})
    xy = [(p["energy_mj"], p["accuracy"]) for p in pts]
    assert _overlaps(xy, range(3)) == {0: 2, 1: 2}
    assert plot_front_png(pts, ACC_ENERGY, tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_step_vertices():
    from stas_sweep.sweep.plots import _step_xy

    assert _step_xy([0, 1, 2], [0, 1, 2], "post") == ([0, 1, 1, 2, 2], [0, 0, 1, 1, 2])
    assert _step_xy([0, 1, 2], [2, 1, 0], "pre") == ([0, 0, 1, 1, 2], [2, 1, 1, 0, 0])


def test_plot_hypervolume_png(tmp_path):
    from stas_sweep.sweep.plots import plot_hypervolume_png

    pts = _sweep_points()
    hist = [hypervolume(pts[: t + 1], ACC_ENERGY, {"accuracy": 0.0, "energy_mj": 2.0}) for t in range(len(pts))]
    out = plot_hypervolume_png(hist, tmp_path / "hv.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    out = plot_hypervolume_png(hist[:3], tmp_path / "hv_steps.png", steps=[1, 2, 4])  # trials finished
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_hypervolume_png([], tmp_path / "hv0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------ points and the front


def test_trial_points_carry_metrics_and_searched_keys():
    from stas_sweep.sweep.front import front_of, param_keys, point_keys, trial_points

    rows = [{"epsilon": 0.0, "accuracy": 90.0, "energy_mj": 1.0, "energy_strict_mj": 1.2, "token_ratio": 1.0,
             "energy_reduction": 0.0, "images": 10},
            {"epsilon": 0.2, "accuracy": 85.0, "energy_mj": 0.5, "energy_strict_mj": 0.7, "token_ratio": 0.5,
             "energy_reduction": 0.5, "images": 10}]
    pts = trial_points("t1", {"halting.alpha": 5.5, "optim.lr": 1e-3}, rows)
    assert [p["epsilon"] for p in pts] == [0.0, 0.2]
    assert set(pts[0]) == set(point_keys()) | {"halting.alpha", "optim.lr"}  # no stray row keys ("images")
    assert param_keys(pts) == ["halting.alpha", "optim.lr"]
    info = front_of(pts, ACC_ENERGY, {"accuracy": 0.0, "energy_mj": 2.0})
    assert len(info.front) == 2 and info.hypervolume == pytest.approx(90 * 1.0 + 85 * 0.5)
    assert front_of([], ACC_ENERGY, {"accuracy": 0.0, "energy_mj": 2.0}) == ([], [], 0.0)


def test_front_hover_shows_the_searched_parameters(tmp_path):
    """Points carry dotted searched keys (halting.alpha ...): the default hover must show them."""
    from stas_sweep.sweep.front import hover_keys
    from stas_sweep.sweep.plots import plot_front_html

    pts = [{"trial_id": f"t{i}", "epsilon": 0.1, "accuracy": 80.0 + i, "energy_mj": 0.5 + i,
            "energy_strict_mj": 0.6 + i, "token_ratio": 0.5, "energy_reduction": 0.2,
            "halting.alpha": 5.25 + i, "halting.beta": -7.5, "halting.delta_p": 0.00125}
           for i in range(3)]
    assert hover_keys(pts[0]) == ["trial_id", "epsilon", "halting.alpha", "halting.beta", "halting.delta_p"]
    text = plot_front_html(pts, ACC_ENERGY, tmp_path / "front.html").read_text(encoding="utf-8")
    for key in ("halting.alpha: 5.25", "halting.beta: -7.5", "halting.delta_p: 0.00125", "trial_id: t0"):
        assert key in text


def test_knee_is_nearest_the_ideal_point_after_scaling_each_objective():
    """Scaled to [0, 1] over the front, B (0.95, 0.5) is nearest (1, 1); unscaled, accuracy in %
    would swamp energy in mJ and A would be chosen. Directions come from the objectives."""
    from stas_sweep.sweep.front import knee_point

    a = {"trial_id": "a", "accuracy": 90.0, "energy_mj": 0.9}
    b = {"trial_id": "b", "accuracy": 88.0, "energy_mj": 0.5}
    c = {"trial_id": "c", "accuracy": 50.0, "energy_mj": 0.1}
    assert knee_point([a, b, c], ACC_ENERGY)["trial_id"] == "b"
    # s_acc = (1, 0.95, 0), s_energy = (0, 0.5, 1): squared distances 1, 0.2525, 1
    assert knee_point([a, b, c], [("accuracy", "max"), ("energy_mj", "min")])["trial_id"] == "b"
    # energy maximised instead: the ideal is (90, 0.9), which A is
    assert knee_point([a, b, c], [("accuracy", "max"), ("energy_mj", "max")])["trial_id"] == "a"
    # an objective all points share scales to 1 and decides nothing; ties go to the first
    assert knee_point([dict(p, token_ratio=0.5) for p in (a, b, c)], THREE)["trial_id"] == "b"
    assert knee_point([c, a], ACC_ENERGY)["trial_id"] == "c" and knee_point([a, c], ACC_ENERGY)["trial_id"] == "a"
    with pytest.raises(ValueError):
        knee_point([], ACC_ENERGY)


def test_best_point_per_objective():
    from stas_sweep.sweep.front import best_point

    front = [{"trial_id": "a", "accuracy": 90.0, "energy_mj": 0.9, "token_ratio": 0.4},
             {"trial_id": "b", "accuracy": 80.0, "energy_mj": 0.2, "token_ratio": 0.7}]
    assert best_point(front, "accuracy", ACC_ENERGY)["trial_id"] == "a"
    assert best_point(front, "energy_mj", ACC_ENERGY)["trial_id"] == "b"
    assert best_point(front, "token_ratio", ACC_ENERGY)["trial_id"] == "a"  # not searched: fewer tokens is better
    assert best_point(front, "energy_mj", [("energy_mj", "max")])["trial_id"] == "a"  # the sweep's direction wins
    with pytest.raises(ValueError, match="accepted objectives"):
        best_point(front, "speed", ACC_ENERGY)


@pytest.mark.parametrize("objectives", [ACC_ENERGY, THREE])
def test_incremental_front_equals_full_recomputation(objectives):
    """Points arrive in batches (a trial's knob rows): after each batch the kept front, its order,
    its hypervolume and the points that left it equal what front_of computes from scratch. Values
    on a small grid give ties and duplicates; NaN and missing values give invalid points; later
    batches drift better, so front points leave."""
    from stas_sweep.sweep.front import IncrementalFront, front_of

    rng = np.random.default_rng(7)
    reference = {"accuracy": 0.0, "energy_mj": 10.0, "token_ratio": 10.0}
    kept = IncrementalFront(objectives, reference)
    points, left_seen = [], 0
    for batch in range(60):
        new = []
        for _ in range(int(rng.integers(1, 5))):
            p = {"trial_id": f"t{batch}", "accuracy": float(rng.integers(0, 6) + batch // 20),
                 "energy_mj": float(rng.integers(1, 7)), "token_ratio": float(rng.integers(1, 4))}
            if rng.random() < 0.05:
                p["energy_mj"] = math.nan
            if rng.random() < 0.03:
                del p["accuracy"]
            if rng.random() < 0.1 and points:  # an exact duplicate of an earlier point
                p = dict(points[int(rng.integers(len(points)))])
            new.append(p)
        before = {id(p) for p in kept.front}
        before_idx = set(kept.on)
        change = kept.add(new)
        points += new
        full = front_of(points, objectives, reference)
        assert kept.front == full.front
        assert kept.hypervolume == pytest.approx(full.hypervolume, rel=1e-12, abs=1e-12)
        assert set(change.left) == before_idx - kept.on
        assert change.changed == (before != {id(p) for p in kept.front})
        left_seen += len(change.left)
    assert left_seen > 5  # the drift made points leave
    assert len(kept.front) < len(points)
