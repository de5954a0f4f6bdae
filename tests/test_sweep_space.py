"""Search-space files: strict validation before anything starts."""

import copy

import pytest
import yaml

from stas_sweep.cli import main
from stas_sweep.sweep.space import SpaceError, load_spec

GOOD = {
    "name": "t",
    "base": None,  # the tiny training config (fixture sweep_base)
    "stage1": {"epochs": 1},
    "space": {
        "halting.alpha": {"uniform": [3.0, 8.0]},
        "halting.beta": {"uniform": [-10.0, -4.0]},
        "halting.delta_p": {"loguniform": [1e-3, 1e-1]},
        "halting.epsilon": {"fixed": 0.01},
        "model.timesteps": {"int": [2, 3]},
        "optim.lr": {"choice": [1e-3, 5e-3]},
    },
    "eval": {"epsilons": [0.0, 0.2]},
    "objectives": {"accuracy": "max", "energy_mj": "min"},
    "reference": {"energy_mj": 1.0},
    "search": {"sampler": "tpe", "seed": 0, "num_samples": 3},
    "scheduler": {"type": "asha", "grace_period": 1, "max_epochs": 2},
    "resources": {"cpu": 1},
}


@pytest.fixture
def good(sweep_base) -> dict:
    return copy.deepcopy({**GOOD, "base": sweep_base})


def write(tmp_path, raw, name="space.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw) if isinstance(raw, dict) else raw)
    return p


def test_good_file_resolves(tmp_path, capsys, good):
    GOOD = good
    spec = load_spec(write(tmp_path, GOOD))
    assert [p.key for p in spec.params][:2] == ["halting.alpha", "halting.beta"]
    assert spec.objectives == [("accuracy", "max"), ("energy_mj", "min")]
    assert spec.reference == {"accuracy": 0.0, "energy_mj": 1.0}
    assert spec.stage1.halting is None and spec.stage1.epochs == 1
    assert spec.base.halting is not None and spec.base.init_from is None  # trials are stage 2, from the shared stage 1
    spec2 = load_spec(write(tmp_path, {**GOOD, "space": {**GOOD["space"], "optim.lr": {"fixed": 1e-3}}}, "b.yaml"))
    assert spec2.stage1_key() == spec.stage1_key()  # stage 1 does not depend on the searched stage-2 keys
    strict = load_spec(write(tmp_path, {**GOOD, "objectives": {"accuracy": "max", "energy_strict_mj": "min"},
                                        "reference": {"energy_strict_mj": 5.0}}, "strict.yaml"))
    assert strict.objectives == [("accuracy", "max"), ("energy_strict_mj", "min")]
    assert main(["run", str(tmp_path / "space.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "halting.delta_p" in out and "loguniform" in out and "dry run" in out and "up to 6" in out


MUTATIONS = [
    (lambda r: r.update(epochz=1), "unknown key 'epochz'; accepted keys here: name, base"),
    (lambda r: r["space"].update({"halting.alpha": {"uniform": [8.0, 3.0]}}), "space.halting.alpha: uniform: low must be < high"),
    (lambda r: r["space"].update({"halting.delta_p": {"loguniform": [0.0, 0.1]}}), "bounds must be > 0"),
    (lambda r: r["space"].update({"halting.alpha": {"normal": [0, 1]}}), "unknown key 'space.halting.alpha.normal'; accepted keys here: uniform, loguniform, int, choice, fixed"),
    (lambda r: r["space"].update({"halting.gamma": {"uniform": [0, 1]}}), "space.halting.gamma: value 0.0 does not make a valid training config"),
    (lambda r: r["space"].update({"halting.epsilon": {"uniform": [0.5, 1.5]}}), "space.halting.epsilon: value 1.5"),
    (lambda r: r.pop("objectives"), "missing key 'objectives'"),
    (lambda r: r.update(objectives={"accuracy": "max"}), "objectives needs at least 2 entries"),
    (lambda r: r.update(objectives={"accuracy": "max", "latency": "min"}), "unknown metric 'latency'"),
    (lambda r: r.update(objectives={"accuracy": "up", "energy_mj": "min"}), "objectives.accuracy is 'up'; accepted values: max, min"),
    (lambda r: r.update(reference={}), "reference.energy_mj is missing"),
    (lambda r: r["eval"].update(epsilons=[0.0, 1.0]), r"eval.epsilons\[1\] must be < 1.0, got 1.0"),
    (lambda r: r["eval"].update(epsilons=[-0.1]), r"eval.epsilons\[0\] must be >= 0"),
    (lambda r: r["search"].update(sampler="cmaes"), "search.sampler is 'cmaes'; accepted values: tpe, nsga2, random"),
    (lambda r: r["search"].update(num_samples=0), "search.num_samples must be >= 1"),
    (lambda r: r["search"].update(points_to_evaluate=[{"halting.zeta": 1}]), "points_to_evaluate\\[0\\]: 'halting.zeta' is not in space"),
    (lambda r: r["scheduler"].update(grace_period=5), "grace_period \\(5\\) must be <= scheduler.max_epochs \\(2\\)"),
    (lambda r: r["scheduler"].update(type="pbt"), "scheduler.type is 'pbt'; accepted values: moasha, asha, fifo"),
    (lambda r: r["scheduler"].update(type="moasha", metric="accuracy"),
     "scheduler.metric is not accepted for scheduler.type moasha: it ranks trials on every objective "
     "\\(accuracy, energy_mj\\)"),
    (lambda r: r["scheduler"].update(type="moasha", mode="max"), "scheduler.mode is not accepted for scheduler.type moasha"),
    (lambda r: r["resources"].update(gpu=-1), "resources.gpu must be >= 0"),
    (lambda r: r["resources"].update(tpu=1), "unknown key 'resources.tpu'; accepted keys here: workers, cpu, gpu"),
    (lambda r: r["resources"].update(workers=3), "resources.workers is 3 and base's batch_size 32"),
    (lambda r: r["base"].update(epochs="many"), "base: epochs must be an integer, got 'many'"),
    (lambda r: r["base"]["model"].update(name="vit-1-32"), "unknown model 'vit-1-32'"),
    (lambda r: r.update(base="missing.yaml"), "base: no such training config"),
    # what Tune or Optuna would reject later, or what would make the sweep wrong, is refused up front
    (lambda r: r["search"].update(points_to_evaluate=[{"halting.alpha": 5.0}]),
     r"points_to_evaluate\[0\] misses halting.beta, halting.delta_p, model.timesteps, optim.lr"),
    (lambda r: r["search"].update(points_to_evaluate=[{**FULL_POINT, "optim.lr": 2e-3}]),
     r"points_to_evaluate\[0\].optim.lr: 0.002 is not a value of space.optim.lr \(choice"),
    (lambda r: r["search"].update(points_to_evaluate=[{**FULL_POINT, "halting.alpha": 9.0}]),
     r"points_to_evaluate\[0\].halting.alpha: 9.0 is not a value of space.halting.alpha \(uniform \[3.0, 8.0\]\)"),
    (lambda r: r["search"].update(points_to_evaluate=[{**FULL_POINT, "model.timesteps": 2.5}]),
     r"points_to_evaluate\[0\].model.timesteps: 2.5 is not a value"),
    (lambda r: r["search"].update(points_to_evaluate=[{**FULL_POINT, "halting.epsilon": 0.2}]),
     r"points_to_evaluate\[0\].halting.epsilon: 0.2 is not a value of space.halting.epsilon \(= 0.01\)"),
    (lambda r: r["search"].update(seed=2**32), "search.seed must be <= 4294967295"),
    (lambda r: r["search"].update(num_samples=10**9), "search.num_samples must be <= 100000"),
    (lambda r: r["space"].update({"halting.beta": {"uniform": [-1e308, 1e308]}}), "space.halting.beta: uniform: the range .* overflows"),
    (lambda r: r["space"].update({"model.timesteps": {"int": [1, 2**40]}}), r"space.model.timesteps.int\[1\] must be <= 2147483647"),
    (lambda r: r["space"].update({"model.name": {"choice": ["spikingformer-2-32", "spikformer-2-32"]}}),
     "space.model.name cannot be searched: it fixes the architecture"),
    (lambda r: r["space"].update({"data.img_size": {"choice": [16, 32]}}), "space.data.img_size cannot be searched"),
    (lambda r: r["space"].update({"epochs": {"int": [1, 3]}}), "space.epochs cannot be searched: every trial runs scheduler.max_epochs"),
    (lambda r: r["space"].update({"tracking.uri": {"fixed": "sqlite:///x.db"}}), "space.tracking.uri cannot be searched"),
    (lambda r: r["stage1"].update(model={"name": "spikformer-2-32"}), "stage1.model.name cannot be overridden"),
    (lambda r: r["stage1"].update(halting={"alpha": 1.0}), "stage1.halting cannot be overridden"),
    (lambda r: r.update(name="it's"), "name: must be 1-100 letters, digits"),
    (lambda r: r.update(name=".."), r"name: must be 1-100 letters, digits, .* got '\.\.'"),
    (lambda r: r.update(name="a/b"), "name: must be 1-100 letters"),
    (lambda r: r.update(mlflow={"experiment": 7}), "mlflow.experiment must be a string or null, got 7"),
    (lambda r: r.update(mlflow={"experiment": "x' OR '1'='1"}), "mlflow.experiment: must be 1-100 letters"),
    (lambda r: r.update(mlflow={"tracking_uri": ["http://h:5000"]}), "mlflow.tracking_uri must be a string or null"),
    (lambda r: r.update(mlflow={"tracking_uri": "http://h:5000; touch /tmp/x #"}), "may not contain whitespace, quotes"),
    (lambda r: r.update(mlflow={"tracking_uri": "gopher://h"}), "unknown scheme 'gopher'"),
    (lambda r: r.update(storage_path=""), "storage_path: must be a non-empty string"),
    (lambda r: r.update(storage_path=3), "storage_path must be a string, got 3"),
    (lambda r: r["space"].update({"halting.alpha": {"uniform": [3.0, float("nan")]}}), r"space.halting.alpha.uniform\[1\] must be a finite number"),
    (lambda r: r.update(reference={"energy_mj": float("inf")}), "reference.energy_mj must be a finite number"),
    (lambda r: r["space"].update({"optim.lr": {"choice": [[1e-3]]}}), r"space.optim.lr.choice\[0\] must be"),
    (lambda r: r["space"].update({"optim.lr": {"uniform": [1e-3, 1e-2], "choice": [1e-3]}}), "give exactly one of"),
    (lambda r: r["space"].update({"optim.lr": {"uniform": None}}), "uniform: give its values"),
    (lambda r: r["eval"].update(epsilons=[]), "eval.epsilons must not be empty"),
    (lambda r: r["eval"].update(epsilons=[0.1, 0.1]), "eval.epsilons has repeated values"),
    (lambda r: r.update(retries=-1), "retries must be >= 0"),
    (lambda r: r.update(max_concurrent_trials=0), "max_concurrent_trials must be >= 1"),
    (lambda r: r["resources"].update(cpu=0), "resources.cpu must be > 0"),
    (lambda r: r["resources"].update(gpu=1.5), "more than one GPU must be a whole number"),
    (lambda r: r["resources"].update(gpu=2), "for data-parallel training give workers: 2, gpu: 1"),
    (lambda r: r["base"].update(optim={"grad_clip": -1.0}), "base: optim.grad_clip must be > 0"),
    (lambda r: r["base"].update(halting={"alpha": float("nan")}), "base: halting.alpha must be a finite number"),
    (lambda r: r["scheduler"].update(reduction_factor=1), "scheduler.reduction_factor must be >= 2"),
    (lambda r: r["scheduler"].update(type="asha", metric="loss"), "scheduler.metric is 'loss'; accepted: accuracy"),
]
# a given point that names every searched key of GOOD with values they can produce
FULL_POINT = {"halting.alpha": 5.0, "halting.beta": -6.0, "halting.delta_p": 0.01, "model.timesteps": 2, "optim.lr": 1e-3}


@pytest.mark.parametrize("mutate, message", MUTATIONS)
def test_bad_files_are_rejected_naming_file_and_key(tmp_path, capsys, mutate, message, good, forbid_ray):
    raw = good
    mutate(raw)
    path = write(tmp_path, raw)
    with pytest.raises(SpaceError, match=message):
        load_spec(path)
    for command in (["validate", str(path)], ["run", str(path)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert str(path) in err
    assert not (tmp_path / "ray_results").exists()


def test_metric_named_twice_is_rejected(tmp_path, good):
    text = yaml.safe_dump({k: v for k, v in good.items() if k != "objectives"})
    text += "objectives:\n  accuracy: max\n  energy_mj: min\n  accuracy: min\n"
    with pytest.raises(SpaceError, match="key 'accuracy' is given twice"):
        load_spec(write(tmp_path, text))
    assert main(["validate", str(tmp_path / "space.yaml")]) == 2


def test_moasha_scheduler_resolves_and_dry_run_shows_it(tmp_path, capsys, good):
    raw = {**good, "scheduler": {"type": "moasha", "grace_period": 1, "reduction_factor": 3, "max_epochs": 2}}
    spec = load_spec(write(tmp_path, raw))
    assert (spec.scheduler, spec.grace_period, spec.reduction_factor, spec.max_epochs) == ("moasha", 1, 3, 2)
    default = load_spec(write(tmp_path, {k: v for k, v in good.items() if k != "scheduler"}, "d.yaml"))
    assert default.scheduler == "moasha"
    assert main(["run", str(tmp_path / "space.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("scheduler: moasha on accuracy (max), energy_mj (min) (Pareto rank, crowding distance), grace 1, "
            "reduction 3, max 2 epochs") in out

    from stas_sweep.sweep.moasha import MOASHA
    from stas_sweep.sweep.runner import build_scheduler

    sched = build_scheduler(spec)
    assert isinstance(sched, MOASHA) and sched.objectives == spec.objectives and sched.milestones == [1]


def test_shipped_spaces_validate_and_recipes_follow_the_paper():
    """Every search-space file and training config shipped validates. The paper's recipes: SML on
    in the CIFAR and ImageNet configs, off for digits; Spikformer / Spikingformer CIFAR stage 2 at
    410 epochs (App. B); the Spike-driven Transformer at 310 + 310 (App. C); the Spikformer spaces
    centred on the paper's setting (alpha -5, beta 0, delta_p 1e-3), evaluated first."""
    import math
    from pathlib import Path

    from stas_sweep.train.config import load_config

    root = Path(__file__).parent.parent
    specs = {p.stem: load_spec(p) for p in sorted((root / "search_spaces").glob("*.yaml"))}
    configs = {p.stem: load_config(p) for p in sorted((root / "configs").glob("*.yaml"))}
    for name, cfg in configs.items():
        assert cfg.sml.enabled == (name.startswith(("cifar10_s", "cifar100_", "imagenet_"))), name
    for ds in ("cifar10", "cifar100"):
        for family in ("spikformer", "spikingformer"):
            assert configs[f"{ds}_{family}-4-384_stage2"].epochs == 410
        assert configs[f"{ds}_spikedriven-2-512_stage1"].epochs == configs[f"{ds}_spikedriven-2-512_stage2"].epochs == 310
        assert specs[f"{ds}_spikedriven"].max_epochs == 310 and specs[ds].max_epochs == 410
        spec = specs[f"{ds}_spikformer"]
        paper = {"halting.alpha": -5.0, "halting.beta": 0.0, "halting.delta_p": 1e-3}
        assert spec.points_to_evaluate[0] == paper and spec.max_epochs == 410
        for p in spec.params:
            if p.key in paper:
                lo, hi = p.args
                centre = math.sqrt(lo * hi) if p.kind == "loguniform" else (lo + hi) / 2
                assert centre == pytest.approx(paper[p.key]), p.key
