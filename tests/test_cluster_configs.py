"""Offline checks of the cluster configs under ``cluster/`` (Ray launcher, KubeRay, MLflow server).

Nothing here talks to a cloud, a Kubernetes API or a Ray cluster: the files are parsed with
``yaml.safe_load`` and checked for the fields Ray's autoscaler / KubeRay need, pinned versions,
consistency between the two KubeRay cluster specs, and the absence of anything that looks like a
secret. When Ray's own autoscaler schema (``ray/autoscaler/ray-schema.json``) and ``jsonschema`` are
importable, the launcher config is also validated against it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER = CLUSTER / "aws-gpu.yaml"
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
RAYCLUSTER = CLUSTER / "kuberay-raycluster.yaml"
SHARED_PVC = CLUSTER / "kuberay-shared-pvc.yaml"
MLFLOW = CLUSTER / "mlflow-server.yaml"
NETPOL = CLUSTER / "kuberay-networkpolicy.yaml"
README = CLUSTER / "README.md"

RAY_VERSION = "2.60.0"
YAML_FILES = sorted(CLUSTER.glob("*.yaml")) + sorted(CLUSTER.glob("*.yml"))


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _one(path: Path) -> dict:
    docs = _docs(path)
    assert len(docs) == 1, f"{path.name}: expected one YAML document, got {len(docs)}"
    assert isinstance(docs[0], dict)
    return docs[0]


def _by_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in YAML_FILES for d in _docs(p) if isinstance(d, dict) and d.get("kind") == kind]


# --------------------------------------------------------------------------------------------------
# every file


def test_expected_files_exist():
    for p in (LAUNCHER, RAYJOB, RAYCLUSTER, SHARED_PVC, MLFLOW, NETPOL, README):
        assert p.is_file(), f"missing {p.relative_to(ROOT)}"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_yaml_parses(path):
    docs = _docs(path)
    assert docs, f"{path.name} is empty"
    for d in docs:
        assert isinstance(d, dict), f"{path.name}: a document is not a mapping"


# --------------------------------------------------------------------------------------------------
# Ray cluster launcher (ray up)


@pytest.fixture(scope="module")
def launcher() -> dict:
    return _one(LAUNCHER)


def test_launcher_top_level(launcher):
    assert isinstance(launcher["cluster_name"], str) and launcher["cluster_name"]
    assert launcher["provider"]["type"] == "aws"
    assert launcher["provider"].get("region")
    assert isinstance(launcher["max_workers"], int) and launcher["max_workers"] >= 1
    assert isinstance(launcher["idle_timeout_minutes"], (int, float)) and launcher["idle_timeout_minutes"] > 0


def test_launcher_node_types(launcher):
    types = launcher["available_node_types"]
    assert isinstance(types, dict) and len(types) >= 2
    head = launcher["head_node_type"]
    assert head in types, "head_node_type must name one of available_node_types"
    for name, nt in types.items():
        assert isinstance(nt.get("node_config"), dict) and nt["node_config"].get("InstanceType"), name
        assert isinstance(nt.get("resources"), dict), name
        for res, amount in nt["resources"].items():
            assert isinstance(amount, int) and amount >= 0, f"{name}.resources.{res} must be an int >= 0"
        if name != head:
            assert isinstance(nt.get("min_workers"), int), name
            assert isinstance(nt.get("max_workers"), int), name
            assert 0 <= nt["min_workers"] <= nt["max_workers"], name
    # the head runs the driver and MLflow: no GPUs there
    assert types[head]["resources"].get("GPU", 0) == 0
    sum_min = sum(nt.get("min_workers", 0) for nt in types.values())
    assert sum_min <= launcher["max_workers"]


def test_launcher_has_autoscaling_gpu_workers(launcher):
    head = launcher["head_node_type"]
    gpu_types = {n: nt for n, nt in launcher["available_node_types"].items()
                 if n != head and nt["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "need a worker type with GPU resources"
    for name, nt in gpu_types.items():
        assert nt["min_workers"] == 0, f"{name}: GPU workers should scale from zero"
        assert nt["max_workers"] >= 1, name
        assert nt["node_config"]["InstanceType"].split(".")[0] in {"g4dn", "g5", "g6", "g6e", "p3", "p4d", "p5"}, name


def test_launcher_setup_pins_versions_and_installs_package(launcher):
    setup = " \n".join(launcher["setup_commands"])
    assert re.search(r"""["']?ray\[default,tune\]==2\.60\.0["']?""", setup), "pin ray[default,tune]==2.60.0"
    assert "torch" in setup and "<=2.14.1" in setup, "cap torch at 2.14.1"
    mounts = launcher["file_mounts"]
    assert "." in mounts.values(), "the repository must be synced to the nodes via file_mounts"
    remote = next(r for r, local in mounts.items() if local == ".")
    assert re.search(rf"pip install[^\n]*{re.escape(remote)}", setup), "install the package from the synced repo"
    # an unanchored "data" exclude would also drop the stas_sweep/data package
    for pattern in launcher.get("rsync_exclude", []):
        assert pattern not in {"data", "data/"}, "anchor excludes to the repo root (/data)"


def test_launcher_docker_images_match_ray_version(launcher):
    docker = launcher.get("docker")
    if not docker:
        pytest.skip("no docker block")
    for key in ("image", "head_image", "worker_image"):
        if key in docker:
            assert RAY_VERSION in docker[key], f"docker.{key} should be a Ray {RAY_VERSION} image"


def test_launcher_start_commands(launcher):
    head = " \n".join(launcher["head_start_ray_commands"])
    worker = " \n".join(launcher["worker_start_ray_commands"])
    assert "ray start --head" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    assert "RAY_AUTH_MODE=" in head and "RAY_AUTH_MODE=" in worker, "set RAY_AUTH_MODE explicitly"
    # the dashboard (Jobs API = remote code execution) is reached through `ray dashboard` only
    assert "--dashboard-host=0.0.0.0" not in head
    # the bundled MLflow server stays on loopback unless someone deliberately changes it
    mlflow_cmds = [c for c in launcher["head_start_ray_commands"] if "mlflow server" in c]
    for c in mlflow_cmds:
        assert "--host 127.0.0.1" in c


def _ray_schema():
    try:
        import ray.autoscaler
    except Exception as e:  # noqa: BLE001 - any import problem means "not available here"
        pytest.skip(f"ray is not importable ({e!r}); cannot validate against Ray's autoscaler schema")
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    if not schema_path.is_file():
        pytest.skip(f"{schema_path} not found in the installed ray package")
    try:
        import jsonschema
    except ImportError:
        pytest.skip("jsonschema is not installed; cannot validate against Ray's autoscaler schema")
    return jsonschema, json.loads(schema_path.read_text())


def test_launcher_validates_against_ray_schema(launcher):
    jsonschema, schema = _ray_schema()
    jsonschema.validate(launcher, schema)


def test_launcher_passes_rays_own_config_checks(launcher):
    """Ray's prepare_config + validate_config, as `ray up` runs them before contacting AWS (private API)."""
    _ray_schema()
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as e:
        pytest.skip(f"ray.autoscaler._private.util not importable ({e!r})")
    validate_config(prepare_config(json.loads(json.dumps(launcher))))


# --------------------------------------------------------------------------------------------------
# KubeRay


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return _one(RAYJOB)


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return _one(RAYCLUSTER)


def _rwx_claims() -> set[str]:
    return {d["metadata"]["name"] for _, d in _by_kind("PersistentVolumeClaim")
            if "ReadWriteMany" in d["spec"].get("accessModes", [])}


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    assert spec["rayVersion"] == RAY_VERSION, where
    rwx = _rwx_claims()
    assert rwx, "a ReadWriteMany PVC must be defined under cluster/"

    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    assert isinstance(params, dict) and params, f"{where}: headGroupSpec.rayStartParams"
    assert all(isinstance(v, str) for v in params.values()), f"{where}: rayStartParams values must be strings"
    assert params.get("dashboard-host") == "0.0.0.0", f"{where}: dashboard-host"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: keep the head Service internal"
    head_pod = head["template"]["spec"]
    for c in head_pod["containers"]:
        assert RAY_VERSION in c["image"], f"{where}: head image should be Ray {RAY_VERSION}"
        assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}), f"{where}: head is CPU-only"
    _check_shared_volume(head_pod, rwx, f"{where} head")

    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no worker groups"
    gpu_groups = []
    for g in groups:
        assert g["groupName"]
        assert 0 <= g["minReplicas"] <= g["maxReplicas"], f"{where}: {g['groupName']} replicas"
        assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
        assert all(isinstance(v, str) for v in (g.get("rayStartParams") or {}).values())
        pod = g["template"]["spec"]
        for c in pod["containers"]:
            assert RAY_VERSION in c["image"], f"{where}: worker image should be Ray {RAY_VERSION}"
            if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}):
                assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
                gpu_groups.append(g["groupName"])
        _check_shared_volume(pod, rwx, f"{where} {g['groupName']}")
    assert gpu_groups, f"{where}: a worker group's container limits must include nvidia.com/gpu"
    if spec.get("enableInTreeAutoscaling") is not True:
        pytest.fail(f"{where}: minReplicas/maxReplicas only act with enableInTreeAutoscaling: true")


def _check_shared_volume(pod: dict, rwx: set[str], where: str) -> None:
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
    shared = {name for name, claim in claims.items() if claim in rwx}
    assert shared, f"{where}: mount the ReadWriteMany PVC (storage_path and data)"
    mounted = {m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
    assert shared & mounted, f"{where}: the shared PVC is declared but not mounted"


def test_rayjob(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert re.match(r"^stas-sweep run \S+\.ya?ml\b", spec["entrypoint"]), spec["entrypoint"]
    assert "--tracking-uri" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert spec.get("submissionMode", "K8sJobMode") in {"K8sJobMode", "HTTPMode"}
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict)
    assert runtime_env.get("working_dir"), "runtime env needs the repository as working_dir"
    pip = runtime_env.get("pip")
    packages = pip.get("packages") if isinstance(pip, dict) else pip
    assert packages and any("stas-sweep" in p for p in packages), "runtime env must install the package"
    assert not any(re.match(r"^\s*ray(\[|=|$)", p) for p in packages), "do not reinstall ray in the runtime env"
    _check_ray_cluster_spec(spec["rayClusterSpec"], "RayJob.rayClusterSpec")


def test_raycluster(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert raycluster["kind"] == "RayCluster"
    _check_ray_cluster_spec(raycluster["spec"], "RayCluster.spec")


def test_rayjob_and_raycluster_describe_the_same_cluster(rayjob, raycluster):
    assert rayjob["spec"]["rayClusterSpec"] == raycluster["spec"], (
        "kuberay-rayjob.yaml rayClusterSpec and kuberay-raycluster.yaml spec have drifted apart")


def test_mlflow_server_is_cluster_internal():
    docs = _docs(MLFLOW)
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    services = [d for d in docs if d.get("kind") == "Service"]
    assert len(deployments) == 1 and len(services) == 1
    container = deployments[0]["spec"]["template"]["spec"]["containers"][0]
    cmd = " ".join(container.get("command", []) + container.get("args", []))
    assert "mlflow server" in cmd
    assert "--host=0.0.0.0" in cmd or "--host 0.0.0.0" in cmd
    assert "--allowed-hosts" in cmd
    assert "--artifacts-destination" in cmd
    assert "--port=5000" in cmd or "--port 5000" in cmd
    svc = services[0]["spec"]
    assert svc.get("type", "ClusterIP") == "ClusterIP", "MLflow must not be exposed outside the cluster"
    assert svc["selector"] == deployments[0]["spec"]["selector"]["matchLabels"]
    assert not [d for d in docs if d.get("kind") == "Ingress"]


# --------------------------------------------------------------------------------------------------
# who may reach Ray and MLflow: token auth, NetworkPolicies


def _ray_pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def test_kuberay_clusters_use_token_auth_and_label_their_pods(rayjob, raycluster):
    for spec, where in ((raycluster["spec"], "RayCluster"), (rayjob["spec"]["rayClusterSpec"], "RayJob")):
        assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: Ray token auth must be on"
        for template in _ray_pod_templates(spec):
            assert template.get("metadata", {}).get("labels", {}).get("stas-sweep/role") == "ray", (
                f"{where}: every Ray pod needs the label the NetworkPolicy selects")
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"


def _policies() -> dict[str, dict]:
    docs = [d for d in _docs(NETPOL) if d.get("kind") == "NetworkPolicy"]
    assert all(d["apiVersion"] == "networking.k8s.io/v1" for d in docs)
    return {d["metadata"]["name"]: d["spec"] for d in docs}


def _ports(rule: dict) -> set:
    return {p["port"] for p in rule.get("ports", [])} or {"any"}


def test_networkpolicies_restrict_ray_and_mlflow(rayjob):
    policies = _policies()
    ray = next(p for p in policies.values() if p["podSelector"]["matchLabels"] == {"stas-sweep/role": "ray"})
    mlflow_sel = next(d for d in _docs(MLFLOW) if d.get("kind") == "Deployment")["spec"]["selector"]["matchLabels"]
    mlflow = next(p for p in policies.values() if p["podSelector"]["matchLabels"] == mlflow_sel)
    for policy in (ray, mlflow):
        assert "Ingress" in policy["policyTypes"]
        for rule in policy["ingress"]:
            assert rule.get("from"), "an ingress rule without `from` admits everyone"
            for peer in rule["from"]:
                assert "ipBlock" not in peer and peer.get("podSelector", {}).get("matchLabels"), peer
    # Ray: any port between Ray pods; from anything else only the dashboard / Jobs API
    for rule in ray["ingress"]:
        peers = [p["podSelector"]["matchLabels"] for p in rule["from"]]
        if peers == [{"stas-sweep/role": "ray"}] and "namespaceSelector" not in rule["from"][0]:
            continue
        assert _ports(rule) == {8265}, rule
    submitters = [p["podSelector"]["matchLabels"] for r in ray["ingress"] for p in r["from"]]
    assert {"batch.kubernetes.io/job-name": rayjob["metadata"]["name"]} in submitters
    assert {"app.kubernetes.io/name": "kuberay-operator"} in submitters
    # MLflow: port 5000 from the Ray pods only
    assert [(_ports(r), [p["podSelector"]["matchLabels"] for p in r["from"]]) for r in mlflow["ingress"]] == [
        ({5000}, [{"stas-sweep/role": "ray"}])]


def test_launcher_says_what_protects_it(launcher):
    """aws-gpu.yaml does not turn token auth on: it says so explicitly, binds the dashboard and
    MLflow to 127.0.0.1, and the README says why and what protects them."""
    starts = " ".join(launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=" in starts
    assert "--dashboard-host=127.0.0.1" in starts
    assert "--host 127.0.0.1 --port 5000" in starts
    text = README.read_text()
    assert "token auth is not turned on; the network protects it" in text
    assert "kuberay-networkpolicy.yaml" in text and "authOptions" in text


# --------------------------------------------------------------------------------------------------
# secrets


SECRET_FILES = YAML_FILES + [README]
PLACEHOLDER = re.compile(r"^<[^<>]+>$")


@pytest.mark.parametrize("path", SECRET_FILES, ids=lambda p: p.name)
def test_no_secrets(path):
    text = path.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), f"{path.name}: looks like an AWS access key id"
    assert not re.search(r"(?i)aws_secret_access_key\s*[:=]\s*\S", text), f"{path.name}: AWS secret key"
    assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text), f"{path.name}: private key"
    assert not re.search(r"\barn:aws:iam::\d{12}:", text), f"{path.name}: real AWS account id"
    for m in re.finditer(r"(?im)^[ \t#-]*[\w.-]*password[ \t]*:[ \t]*(.*)$", text):
        value = m.group(1).split(" #")[0].strip().strip("'\"")
        # an empty value is fine if it is filled from a secretKeyRef below; placeholders are fine
        assert value == "" or PLACEHOLDER.match(value), f"{path.name}: literal password {m.group(0)!r}"
    # credentials inside URIs (scheme://user:pass@host) must be placeholders
    for m in re.finditer(r"[a-z][a-z0-9+.-]*://([^/\s:@'\"]+):([^@\s/'\"]+)@", text):
        assert PLACEHOLDER.match(m.group(2)), f"{path.name}: credentials in a URI: {m.group(0)!r}"


def _walk(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, path + (str(k),))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (str(i),))
    else:
        yield path, node


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_no_secret_values_in_parsed_yaml(path):
    secretish = re.compile(r"(?i)(password|passwd|secret_?key|access_?key|token)$")
    for doc in _docs(path):
        for keys, value in _walk(doc):
            if keys and secretish.search(keys[-1]) and isinstance(value, str) and value:
                assert PLACEHOLDER.match(value), f"{path.name}: {'.'.join(keys)} has a literal value"
        # Kubernetes env vars with a secret-looking name must come from valueFrom.secretKeyRef
        for env in _env_entries(doc):
            if secretish.search(env.get("name", "")) and "value" in env:
                pytest.fail(f"{path.name}: env {env['name']} must use valueFrom.secretKeyRef")


def _env_entries(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "env" and isinstance(v, list):
                yield from (e for e in v if isinstance(e, dict))
            else:
                yield from _env_entries(v)
    elif isinstance(node, list):
        for v in node:
            yield from _env_entries(v)


# --------------------------------------------------------------------------------------------------
# README


def test_readme_covers_the_path():
    text = README.read_text()
    for needle in ("stas-sweep submit", "storage_path", "mlflow server", "RAY_AUTH_MODE",
                   "ray up cluster/aws-gpu.yaml", "ray down", "ray dashboard", "kubectl apply",
                   "--resume", "max_concurrent_trials", "CUDA_VISIBLE_DEVICES", "--artifacts-destination",
                   "MLFLOW_TRACKING_URI", "ray job"):
        assert needle in text, f"cluster/README.md should mention {needle!r}"


def test_readme_refers_only_to_existing_cluster_files():
    text = README.read_text()
    for name in set(re.findall(r"cluster/([\w.-]+\.ya?ml)", text)):
        assert (CLUSTER / name).is_file(), f"README mentions cluster/{name}, which does not exist"


# --------------------------------------------------------------------------------------------------
# the local Ray that `stas-sweep run` starts


def _listeners(pids: set[int]) -> list[str]:
    """``ip:port`` of every TCP socket the processes ``pids`` listen on (``ss -ltnp``)."""
    import shutil
    import subprocess

    if shutil.which("ss") is None:
        pytest.skip("no `ss` on this machine")
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines()
            if any(f"pid={pid}," in line for pid in pids)]


def test_local_ray_listens_on_loopback_only(ray_local):
    """init_ray's local Ray (the session's): GCS, raylet, agents, the driver's and a worker's
    servers all listen on 127.0.0.1 (Ray 2.60 on Linux otherwise listens on every interface)."""
    import os

    import ray
    import psutil  # noqa: I001 - Ray's own copy (ray/thirdparty_files), on the path once ray is imported

    @ray.remote(num_cpus=0)
    def worker_pid() -> int:
        return os.getpid()

    pids = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid(), ray.get(worker_pid.remote())}
    listening = _listeners(pids)
    assert len(listening) >= 4, listening  # gcs, raylet (2), driver, worker, agents
    assert all(a.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]") for a in listening), listening
    assert ray._private.worker._global_node.node_ip_address == "127.0.0.1"


def test_the_4_gpu_per_trial_example_fits_one_trial_per_pod():
    """cluster/kuberay-ddp-4gpu.yaml: a pod holds one trial of resources {workers: 4, cpu: 8, gpu: 1}
    (its workers and the 0.2 CPU of the trial's function), with the protections of the main cluster."""
    from stas_sweep.sweep.space import DRIVER_CPU

    doc = _one(CLUSTER / "kuberay-ddp-4gpu.yaml")
    assert doc["kind"] == "RayCluster"
    _check_ray_cluster_spec(doc["spec"], "kuberay-ddp-4gpu.yaml")
    assert doc["spec"]["authOptions"]["mode"] == "token"
    (group,) = doc["spec"]["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 4
    assert float(limits["cpu"]) >= 4 * 8 + DRIVER_CPU
    assert "resources: {workers: 4, cpu: 8, gpu: 1}" in (CLUSTER / "kuberay-ddp-4gpu.yaml").read_text()
